"""How a ``RemoteStream`` survives losing its server's state (a server restarted, a stream moved by
the router to another server, an idle release): it keeps its last snapshot and the chunks pushed
since, and on the loss restores the snapshot wherever its requests now land, replays the chunks,
and goes on. Snapshots are portable (``runtime.manifest.model_identity``), so the server that
takes the stream over may run another build of the same model. What it cannot recover (no
server answers, a journal that overflowed, a stream another client took over) it reports."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.files import write_bytes_atomic


@dataclass(frozen=True)
class Recovery:
    snapshot_every: int = 16  # pushes between snapshots (and after the first push)
    keep_chunks: int = 32  # chunks kept since the last snapshot, at most (bounded memory)
    snapshot_path: str | Path | None = None  # keep the snapshot in this file instead of in memory
    attempts: int = 3  # tries to restore somewhere, retry_s apart
    retry_s: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.snapshot_every, int) or self.snapshot_every < 1:
            raise UsageError(f"Recovery.snapshot_every must be a whole number >= 1, not {self.snapshot_every!r}")
        if not isinstance(self.keep_chunks, int) or self.keep_chunks < self.snapshot_every:
            raise UsageError(f"Recovery.keep_chunks ({self.keep_chunks!r}) must hold the {self.snapshot_every} "
                             "chunks pushed between two snapshots")
        if not isinstance(self.attempts, int) or self.attempts < 1 or not 0 <= self.retry_s <= 60:
            raise UsageError("Recovery.attempts must be >= 1 and retry_s within 0..60 s")


class Journal:
    """The last snapshot and the chunks pushed since it, as the server was sent them."""

    def __init__(self, policy: Recovery) -> None:
        self.policy = policy
        self._snapshot: bytes | None = None
        self.chunks: deque[tuple[np.ndarray, np.ndarray | None]] = deque()
        self.overflowed = False  # a snapshot could not be taken in time: chunks were lost from the journal

    def pushed(self, video: np.ndarray, mel: np.ndarray | None) -> None:
        if len(self.chunks) >= self.policy.keep_chunks:
            self.chunks.popleft()
            self.overflowed = True
        self.chunks.append((video, mel))

    def due(self, chunks_seen: int) -> bool:
        """A snapshot is due after the first push, then every ``snapshot_every``."""
        return chunks_seen == 1 or len(self.chunks) >= self.policy.snapshot_every

    def taken(self, snapshot: bytes) -> None:
        if self.policy.snapshot_path is not None:
            write_bytes_atomic(self.policy.snapshot_path, snapshot)
        else:
            self._snapshot = snapshot
        self.chunks.clear()
        self.overflowed = False

    @property
    def snapshot(self) -> bytes | None:
        path = self.policy.snapshot_path
        if path is not None:
            return Path(path).read_bytes() if Path(path).is_file() else None
        return self._snapshot

    def why_not(self) -> str | None:
        """Why the stream cannot be rebuilt from the journal, or None when it can."""
        if self.overflowed:
            return (f"more than {self.policy.keep_chunks} chunks were pushed since the last snapshot "
                    "(snapshots failed): the ones before are gone")
        return None
