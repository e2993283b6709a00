"""Snapshots: a stream's state as safetensors, tagged with the manifest hash of the engines that
made it (a state only fits those engines), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mirasol_edge.errors import MirasolError

from .engine_dir import EngineDir
from .files import atomic_path

SNAPSHOT_FORMAT = "mirasol-state/1"


class SnapshotError(MirasolError, ValueError):
    """A snapshot is unreadable or belongs to other engines."""

    exit_code = 8


def write_snapshot(path: str | Path, state: dict[str, np.ndarray], chunks_seen: int, engines: EngineDir) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=_metadata(chunks_seen, engines))
    return path


def snapshot_bytes(state: dict[str, np.ndarray], chunks_seen: int, engines: EngineDir) -> bytes:
    """The same snapshot as ``write_snapshot``, as bytes (a server sends it to its client)."""
    from safetensors.numpy import save

    return save(state, metadata=_metadata(chunks_seen, engines))


def _metadata(chunks_seen: int, engines: EngineDir) -> dict[str, str]:
    return {"format": SNAPSHOT_FORMAT, "manifest_sha256": engines.manifest_sha256,
            "engine_dir": str(engines.path.resolve()), "chunks_seen": str(chunks_seen)}


def read_snapshot(path: str | Path, engines: EngineDir, expected: dict[str, np.ndarray]) -> tuple[dict, int]:
    """The state and its chunk count, checked against the engines and the state they expect."""
    path = Path(path)
    read_snapshot_metadata(path)
    return read_snapshot_bytes(path.read_bytes(), engines, expected, where=str(path))


def read_snapshot_bytes(data: bytes, engines: EngineDir, expected: dict[str, np.ndarray],
                        where: str = "snapshot") -> tuple[dict, int]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    meta = _metadata_of(data, where)
    ours = engines.manifest_sha256
    if meta["manifest_sha256"] != ours:
        raise SnapshotError(
            f"{where}: taken with other engines ({meta.get('engine_dir')}, manifest {meta['manifest_sha256'][:12]}); "
            f"these are {engines.path} (manifest {ours[:12]}): a state only fits the engines that made it"
        )
    try:
        host = load(data)
    except SafetensorError as exc:
        raise SnapshotError(f"{where}: unreadable snapshot ({exc})") from None
    for name, ref in expected.items():
        got = host.get(name)
        if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
            found = "missing" if got is None else f"{got.dtype}{list(got.shape)}"
            raise SnapshotError(f"{where}: state tensor {name!r} is {found}, expected {ref.dtype}{list(ref.shape)}")
    return host, int(meta["chunks_seen"])


def read_snapshot_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise SnapshotError(f"{path}: not a snapshot ({exc})") from None
    return _checked(meta, str(path))


def _metadata_of(data: bytes, where: str) -> dict[str, str]:
    """A safetensors header's metadata: 8 bytes of length, then JSON."""
    import json
    import struct

    try:
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError) as exc:
        raise SnapshotError(f"{where}: not a snapshot ({exc})") from None
    return _checked(meta, where)


def _checked(meta: dict, where: str) -> dict[str, str]:
    if meta.get("format") != SNAPSHOT_FORMAT or "manifest_sha256" not in meta:
        raise SnapshotError(f"{where}: not a mirasol stream snapshot (format {meta.get('format')!r})")
    return meta
