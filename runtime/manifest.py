"""``manifest.json``: what was built, and the checks the runtime makes before trusting it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "mirasol-engines/1"
MANIFEST = "manifest.json"
INITIAL_STATE = "initial_state.safetensors"


class ManifestError(ValueError):
    """An engine directory is missing, incomplete, tampered with, or built for something else."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_manifest(engine_dir: str | Path) -> dict[str, Any]:
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise ManifestError(f"{engine_dir}: no such engine directory (build one with mirasol-build)")
    path = engine_dir / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {engine_dir} is not a finished build")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def verify_file(engine_dir: Path, file: str, expected_sha256: str, what: str) -> Path:
    path = engine_dir / file
    if not path.is_file():
        raise ManifestError(f"{path}: {what} listed in the manifest is missing")
    found = sha256_file(path)
    if found != expected_sha256:
        raise ManifestError(
            f"{path}: {what} sha256 mismatch: manifest expects {expected_sha256[:16]}…, found {found[:16]}… "
            "(file changed or replaced since the build)"
        )
    return path
