"""Which components of an earlier build can be reused: those whose build key is unchanged and
whose files still hash as the manifest says.

The key covers the weights, the config, the recipe, the component, torch's version and the
*content* of the code that writes the files (the toolkit, calibration, the component contract),
so an edited exporter rebuilds instead of reusing stale engines.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import torch

from mirasol_edge.runtime.files import sha256_file
from mirasol_edge.runtime.manifest import MANIFEST

from .recipe import Recipe
from .source import ModelSource

PACKAGE = Path(__file__).resolve().parent.parent
# The code whose content decides what a build writes.
CODE = ("toolkit", "calib", "runtime/components.py", "runtime/config.py", "runtime/trt.py", "runtime/tokenizer.py")


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    digest = hashlib.sha256()
    for entry in CODE:
        path = PACKAGE / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(PACKAGE)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def build_key(source: ModelSource, recipe: Recipe, component: str) -> str:
    text = json.dumps({"weights": source.weights_hash, "config": source.model.cfg.hash(),
                       "recipe": recipe.to_dict(), "component": component, "code": code_hash(),
                       "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def previous_manifest(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def reusable(previous: dict | None, key: str, out: Path, engines: bool) -> bool:
    if not previous or previous.get("build_key") != key:
        return False
    files = [(previous["onnx"], previous["onnx_sha256"])]
    if previous.get("onnx_data"):
        files.append((previous["onnx_data"]["file"], previous["onnx_data"]["sha256"]))
    if engines:
        if not previous.get("engine"):
            return False
        files.append((previous["engine"], previous["engine_sha256"]))
    return all((out / f).is_file() and sha256_file(out / f) == h for f, h in files)


def reuse(previous: dict, out: Path, staging: Path) -> dict:
    for file in {previous["onnx"], previous.get("engine")} - {None}:
        for f in out.glob(file + "*"):  # the graph and any external data beside it
            shutil.copy2(f, staging / f.name)
    return {**previous, "reused": True}
