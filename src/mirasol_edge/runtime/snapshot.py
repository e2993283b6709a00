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
    meta = {"format": SNAPSHOT_FORMAT, "manifest_sha256": engines.manifest_sha256,
            "engine_dir": str(engines.path.resolve()), "chunks_seen": str(chunks_seen)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_snapshot(path: str | Path, engines: EngineDir, expected: dict[str, np.ndarray]) -> tuple[dict, int]:
    """The state and its chunk count, checked against the engines and the state they expect."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_snapshot_metadata(path)
    ours = engines.manifest_sha256
    if meta["manifest_sha256"] != ours:
        raise SnapshotError(
            f"{path}: taken with other engines ({meta.get('engine_dir')}, manifest {meta['manifest_sha256'][:12]}); "
            f"these are {engines.path} (manifest {ours[:12]}): a state only fits the engines that made it"
        )
    try:
        host = load_file(str(path))
    except SafetensorError as exc:
        raise SnapshotError(f"{path}: unreadable snapshot ({exc})") from None
    for name, ref in expected.items():
        got = host.get(name)
        if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
            found = "missing" if got is None else f"{got.dtype}{list(got.shape)}"
            raise SnapshotError(f"{path}: state tensor {name!r} is {found}, expected {ref.dtype}{list(ref.shape)}")
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
    if meta.get("format") != SNAPSHOT_FORMAT or "manifest_sha256" not in meta:
        raise SnapshotError(f"{path}: not a mirasol stream snapshot (format {meta.get('format')!r})")
    return meta
