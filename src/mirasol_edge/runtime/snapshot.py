"""Snapshots: a stream's state as safetensors, tagged with the manifest hash of the engines that
made it (a state only fits those engines), written atomically.

A snapshot is checked whole before it replaces anything: its size (against the state the engines
carry, before it is read), its metadata (``chunks_seen`` a non-negative whole number), every
tensor's name, dtype and shape, finite values, and positions that agree with ``chunks_seen``.
A snapshot file written here names the engine directory it came from (so ``MirasolStream.restore``
can reopen it); one a server sends its client (``snapshot_bytes``) names no path of the server's.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from mirasol_edge.errors import MirasolError

from .engine_dir import EngineDir
from .files import atomic_path

SNAPSHOT_FORMAT = "mirasol-state/1"
MAX_CHUNKS = 2**62  # chunks_seen above this is no stream's (int64 positions, with room to push)
HEADER_ALLOWANCE = 1 << 20  # a snapshot's header and metadata beyond its tensors' bytes
MAX_SNAPSHOT_BYTES = 1 << 30  # where the state's size is not known (a client sending one to a server)
POSITION = "pos"  # the state tensor that counts the chunks seen


class SnapshotError(MirasolError, ValueError):
    """A snapshot is unreadable, malformed, or belongs to other engines."""

    exit_code = 8


def write_snapshot(path: str | Path, state: dict[str, np.ndarray], chunks_seen: int, engines: EngineDir,
                   watches: list[dict] | None = None) -> Path:
    from safetensors.numpy import save_file

    path = snapshot_destination(path)
    meta = {**_metadata(chunks_seen, engines, watches), "engine_dir": str(engines.path.resolve())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def snapshot_bytes(state: dict[str, np.ndarray], chunks_seen: int, engines: EngineDir,
                   watches: list[dict] | None = None) -> bytes:
    """The same snapshot as ``write_snapshot``, as bytes (a server sends it to its client), without
    the engine directory's path: that is the server's business."""
    from safetensors.numpy import save

    return save(state, metadata=_metadata(chunks_seen, engines, watches))


def _metadata(chunks_seen: int, engines: EngineDir, watches: list[dict] | None) -> dict[str, str]:
    meta = {"format": SNAPSHOT_FORMAT, "model": engines.model_identity, "manifest_sha256": engines.manifest_sha256,
            "chunks_seen": str(chunks_seen)}
    if watches is not None:  # the stream's watches and where each stands (runtime.watch)
        meta["watches"] = json.dumps(watches)
    return meta


def snapshot_watches(meta: dict[str, str], where: str) -> list[dict] | None:
    """The watches a snapshot carries (a list of ``Watch.to_dict``), or None for one that carries none."""
    text = meta.get("watches")
    if text is None:
        return None
    try:
        watches = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        watches = None
    if not isinstance(watches, list) or not all(isinstance(w, dict) for w in watches):
        raise SnapshotError(f"{where}: its watches are not a list of watches")
    return watches


def snapshot_destination(path: str | Path) -> Path:
    """``path``, checked to be somewhere a snapshot file can go (not a directory), before any work."""
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(f"{path}: is a directory; give the snapshot's file name (e.g. {path / 'stream.snapshot'})")
    return path


def snapshot_limit(expected: dict[str, np.ndarray]) -> int:
    """The most bytes a snapshot of this state can take: its tensors and a header."""
    return sum(int(a.nbytes) for a in expected.values()) + HEADER_ALLOWANCE


def snapshot_file(path: str | Path, limit: int = MAX_SNAPSHOT_BYTES) -> Path:
    """``path``, checked to be a snapshot-sized file before anything reads it."""
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(f"{path}: is a directory, not a snapshot")
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot")
    size = path.stat().st_size
    if size > limit:
        raise SnapshotError(f"{path}: {size} bytes, more than a snapshot of these engines can be ({limit})")
    return path


def read_snapshot(path: str | Path, engines: EngineDir, expected: dict[str, np.ndarray]
                  ) -> tuple[dict, int, list[dict] | None]:
    """The state, its chunk count and its watches, checked against the engines and the state they expect."""
    path = snapshot_file(path, snapshot_limit(expected))
    return read_snapshot_bytes(path.read_bytes(), engines, expected, where=str(path))


def read_snapshot_bytes(data: bytes, engines: EngineDir, expected: dict[str, np.ndarray],
                        where: str = "snapshot") -> tuple[dict, int, list[dict] | None]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    limit = snapshot_limit(expected)
    if len(data) > limit:
        raise SnapshotError(f"{where}: {len(data)} bytes, more than a snapshot of these engines can be ({limit})")
    meta = _metadata_of(data, where)
    # Any build of the same model takes it (portable: backend, precision, batch, GPU); an older
    # snapshot, which names no model, only the engines that made it.
    ours = engines.model_identity
    theirs = meta.get("model")
    if theirs != ours and not (theirs is None and meta["manifest_sha256"] == engines.manifest_sha256):
        taken = f"{Path(meta['engine_dir']).name}, " if isinstance(meta.get("engine_dir"), str) else ""
        what = f"model {theirs[:12]}" if isinstance(theirs, str) else f"manifest {meta['manifest_sha256'][:12]}"
        raise SnapshotError(
            f"{where}: taken with another model ({taken}{what}); these engines ({engines.path.name}) run model "
            f"{ours[:12]}: a state restores into builds of the model that made it (same weights, config and state)"
        )
    try:
        host = load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise SnapshotError(f"{where}: unreadable snapshot ({exc})") from None
    extra = sorted(set(host) - set(expected))
    if extra:
        raise SnapshotError(f"{where}: unexpected state tensors {extra}; these engines carry {sorted(expected)}")
    seen = int(meta["chunks_seen"])
    for name, ref in expected.items():
        got = host.get(name)
        if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
            found = "missing" if got is None else f"{got.dtype}{list(got.shape)}"
            raise SnapshotError(f"{where}: state tensor {name!r} is {found}, expected {ref.dtype}{list(ref.shape)}")
        _check_values(name, got, seen, where)
    return host, seen, snapshot_watches(meta, where)


def _check_values(name: str, value: np.ndarray, seen: int, where: str) -> None:
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        raise SnapshotError(f"{where}: state tensor {name!r} has {bad} NaN or infinite values of {value.size}")
    if name == POSITION and value.dtype.kind in "iu" and not (value == seen).all():
        raise SnapshotError(f"{where}: state tensor {name!r} is {value.ravel()[:4].tolist()}, but the snapshot "
                            f"says {seen} chunks were seen (the position counts them)")


def read_snapshot_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    path = snapshot_file(path)
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: not a snapshot ({exc})") from None
    return _checked(meta, str(path))


def snapshot_engine_dir(meta: dict[str, str], where: str) -> str:
    """The engine directory a snapshot file names, or the error that says to give one."""
    engine_dir = meta.get("engine_dir")
    if not isinstance(engine_dir, str) or not engine_dir:
        raise SnapshotError(f"{where}: names no engine directory (a server's snapshot names none); "
                            "give the engines it was taken with")
    return engine_dir


def _metadata_of(data: bytes, where: str) -> dict[str, str]:
    """A safetensors header's metadata: 8 bytes of length, then JSON."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        if size > len(data) - 8:
            raise ValueError(f"a header of {size} bytes in {len(data)}")
        header = json.loads(data[8 : 8 + size])
        meta = header.get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError) as exc:
        raise SnapshotError(f"{where}: not a snapshot ({exc})") from None
    return _checked(meta, where)


def _checked(meta, where: str) -> dict[str, str]:
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SnapshotError(f"{where}: not a mirasol stream snapshot (format {found!r})")
    if not isinstance(meta.get("manifest_sha256"), str):
        raise SnapshotError(f"{where}: names no engines (no manifest_sha256)")
    seen = meta.get("chunks_seen")
    if not isinstance(seen, str) or not re.fullmatch(r"[0-9]{1,19}", seen) or int(seen) > MAX_CHUNKS:
        shown = seen if not isinstance(seen, str) or len(seen) <= 24 else seen[:24] + "..."
        raise SnapshotError(f"{where}: chunks_seen {shown!r} is not a whole number from 0 to {MAX_CHUNKS}")
    return meta
