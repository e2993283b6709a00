"""A bounded, ordered, on-disk queue of watch events that survives the process restarting.

Layout: one folder, one small JSON file per event, ``ev-<sequence>.json`` with a zero-padded,
monotonically increasing sequence number, written whole or not at all (a temporary file beside it,
fsynced, then renamed over: ``runtime.files.atomic_path``; then the folder is fsynced so the rename
itself survives a power cut). Why files rather than an append-only log: events are small and rare
(one per change of a watch's answer), so a file each costs little; removing the delivered head is
one ``unlink``, with no log to compact, no read offset to persist and no torn tail to repair after a
crash, since a file is either all there under its final name or not there at all.

Order: oldest first, by sequence number. A new ``Spool`` on the same folder continues after the
highest number it finds and hands out what is left, oldest first.

Cap: ``max_events`` and ``max_bytes`` (payload bytes). When an event would go over either, the
event being offered (the newest) is dropped and counted in ``dropped``, and ``append`` returns
``None``. Why the newest: what is already in the spool was accepted and is durable; its head may be
in flight to a receiver right now, so deleting it would race the sender; and a receiver keeps an
unbroken history up to the moment the spool filled, with the gap (and its size, in the log) at the
end, rather than holes cut out of the middle of what it already partly has.

Only files of its own patterns are ever deleted or renamed: ``ev-N.json`` once delivered, and its
own leftover temporaries ``.ev-N.json.*.tmp`` (from a writer killed mid-write). A file that has the
event name but does not parse is renamed ``ev-N.json.bad`` (kept for a person, never sent). A lock
file ``.mirasol-spool.lock`` (``flock``) keeps a second spool (in this process or another) off the
same folder, and holds the highest sequence number handed out, so numbers never repeat even after the
folder emptied (not fsynced: after a power cut the files' own numbers still keep the order). Every method is thread-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.files import atomic_path

log = logging.getLogger(__name__)

EVENT_RE = re.compile(r"^ev-(\d{12,})\.json$")
BAD_RE = re.compile(r"^ev-(\d{12,})\.json\.bad$")
TEMP_RE = re.compile(r"^\.ev-\d{12,}\.json\.[A-Za-z0-9_]+\.tmp$")  # what atomic_path makes for ev-N.json
LOCK_NAME = ".mirasol-spool.lock"


class Entry(NamedTuple):
    """One spooled event: its sequence number and its JSON bytes, exactly as they will be sent."""

    seq: int
    data: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.data)


def _name(seq: int) -> str:
    return f"ev-{seq:012d}.json"


class Spool:
    """Events on disk, oldest first; see the module's docstring for the guarantees."""

    def __init__(self, folder: str | os.PathLike[str], *, max_events: int = 10_000,
                 max_bytes: int = 32 * 1024 * 1024, fsync: bool = True, option: str = "--spool"):
        if max_events < 1 or max_bytes < 1:
            raise UsageError(f"spool caps must be positive: max_events={max_events}, max_bytes={max_bytes}")
        self.folder = Path(folder)
        self.max_events, self.max_bytes, self.fsync = max_events, max_bytes, fsync
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._index: deque[tuple[int, int]] = deque()  # (seq, size), oldest first
        self._bytes = 0
        self.dropped = 0
        self._closed = False
        self._lock_fd = self._open_folder(option)
        self._next = self._scan()

    # -- opening ---------------------------------------------------------------------------------
    def _open_folder(self, option: str) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            probe = self.folder / f".ev-probe.{os.getpid()}.{threading.get_ident()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"{option} {self.folder}: the spool folder is not writable ({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise UsageError(f"{option} {self.folder}: another sink is using this spool folder") from e
        return fd

    def _scan(self) -> int:
        highest = 0
        found = []
        for path in self.folder.iterdir():
            name = path.name
            if TEMP_RE.match(name):
                log.info("spool %s: removing %s, left half-written by an earlier writer", self.folder, name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            elif m := EVENT_RE.match(name):
                found.append((int(m.group(1)), path.stat().st_size))
            elif m := BAD_RE.match(name):
                highest = max(highest, int(m.group(1)))
        found.sort()
        with contextlib.suppress(OSError, ValueError):  # the high-water mark, kept in the lock file
            highest = max(highest, int(os.pread(self._lock_fd, 32, 0).decode().strip() or 0))
        self._index.extend(found)
        self._bytes = sum(size for _, size in found)
        if found:
            log.info("spool %s: %d events left from an earlier run", self.folder, len(found))
            highest = max(highest, found[-1][0])
        return highest + 1

    # -- writing ---------------------------------------------------------------------------------
    def append(self, event: dict[str, Any]) -> int | None:
        """Store ``event`` (a JSON-able dict) after everything already here; its sequence number,
        or ``None`` when the spool is full (the event is dropped and counted)."""
        data = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"spool {self.folder} is closed")
            if len(self._index) >= self.max_events or self._bytes + len(data) > self.max_bytes:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("spool %s is full (%d events, %d bytes; caps %d events, %d bytes): dropped the "
                                "newest event, %d dropped so far", self.folder, len(self._index), self._bytes,
                                self.max_events, self.max_bytes, self.dropped)
                return None
            seq = self._next
            self._write(_name(seq), data)
            self._next += 1
            with contextlib.suppress(OSError):  # so numbers never repeat, even once the folder empties
                os.pwrite(self._lock_fd, f"{seq:<20d}\n".encode(), 0)
            self._index.append((seq, len(data)))
            self._bytes += len(data)
            self._changed.notify_all()
            return seq

    def _write(self, name: str, data: bytes) -> None:
        with atomic_path(self.folder / name) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        if self.fsync:
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- reading ---------------------------------------------------------------------------------
    def peek(self) -> Entry | None:
        """The oldest event still here (it stays until ``remove``), or ``None`` when empty."""
        with self._lock:
            while self._index:
                seq, size = self._index[0]
                path = self.folder / _name(seq)
                try:
                    data = path.read_bytes()
                    json.loads(data)
                    return Entry(seq, data)
                except FileNotFoundError:
                    log.warning("spool %s: %s vanished (removed by someone else); skipping it", self.folder, path.name)
                except ValueError:
                    log.error("spool %s: %s is not valid JSON; kept as %s.bad and skipped",
                              self.folder, path.name, path.name)
                    with contextlib.suppress(OSError):
                        os.replace(path, path.with_name(path.name + ".bad"))
                self._index.popleft()
                self._bytes -= size
            return None

    def remove(self, seq: int) -> None:
        """Forget the head ``seq`` (delivered, or refused for good) and delete its file."""
        with self._lock:
            if not self._index or self._index[0][0] != seq:
                raise ValueError(f"spool {self.folder}: {seq} is not the head")
            _, size = self._index.popleft()
            self._bytes -= size
            with contextlib.suppress(FileNotFoundError):
                (self.folder / _name(seq)).unlink()
            self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for an event (or a ``wake``); whether one is here."""
        with self._changed:
            if not self._index and not self._closed:
                self._changed.wait(timeout)  # an append, a wake or a close ends it early
            return bool(self._index)

    def wake(self) -> None:
        """Wake whoever waits in ``wait`` (to see a stop flag)."""
        with self._changed:
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self._index), "pending_bytes": self._bytes, "dropped": self.dropped}

    def close(self) -> None:
        """Release the folder (what is left stays for the next ``Spool``); further appends raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
