"""Checks a build makes before any work: the recipe against the model, the output directory,
and the host memory the export is expected to need."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.manifest import MANIFEST, build_files

from .recipe import Recipe, RecipeError
from .source import COMPONENT_PARTS, ModelSource, fp32_bytes


class OutputDirError(MirasolError, OSError):
    """The output directory cannot be written."""

    exit_code = 6


def check_recipe_against_config(recipe: Recipe, cfg: MirasolConfig) -> None:
    src = recipe.path
    for key in ("frames_per_chunk", "image_size", "window_chunks"):
        wanted = getattr(recipe.chunking, key)
        if wanted and wanted != getattr(cfg, key):
            raise RecipeError(
                f"{src}: chunking.{key} = {wanted} contradicts the checkpoint's {key} = {getattr(cfg, key)} "
                "(set 0 to take the checkpoint's)"
            )
    for key in ("max_question_tokens", "max_answer_tokens"):
        if getattr(recipe.text, key) > getattr(cfg, key):
            raise RecipeError(
                f"{src}: text.{key} = {getattr(recipe.text, key)} exceeds what the model was built for "
                f"({getattr(cfg, key)})"
            )


def check_output_dir(out: Path) -> None:
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".mirasol-write-test.")
        probe.close()
    except OSError as exc:
        raise OutputDirError(f"{out}: cannot write here ({exc.strerror or exc})") from None
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: exists and is not a directory")
    foreign = foreign_files(out)
    if foreign:
        raise OutputDirError(foreign)


def foreign_files(out: Path) -> str | None:
    """Why ``out`` may not be replaced by a build, or None: it is empty, missing, or an earlier
    build (a manifest of our format) holding only the files that manifest lists. A build replaces
    its folder whole, so anything else in it would be lost: refuse instead, naming the file."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        listed = build_files(json.loads((out / MANIFEST).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        listed = None
    if listed is None:
        return (f"{out}: not empty and not an earlier build (no {MANIFEST} of mirasol-build's format); "
                "refusing to overwrite: pick an empty or new --out")
    others = sorted(p.name for p in out.iterdir() if p.name not in listed or not p.is_file())
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return (f"{out}: an earlier build, but it also holds {shown}, which the build did not write; "
                "a rebuild replaces the folder whole, so move them out or pick another --out")
    return None


def estimated_host_memory_mib(source: ModelSource, recipe: Recipe) -> int:
    """Peak RAM the build is expected to need, from what was measured here (bench/results/build.json)."""
    if not source.by_part:
        # Export traces the whole model and holds a second copy of the weights while writing.
        return 3 * fp32_bytes(source.model) >> 20
    peaks = []
    for component, part in COMPONENT_PARTS.items():
        # Measured on mirasol3b's AR step (8 GB fp32, exported fp16): 19.7 GB peak, 2.5x its fp32
        # bytes (the part, its fp16 copy, the exporter, then ONNX Runtime's fp32 weights for the
        # parity check). An fp32 export has no halving anywhere: 3x.
        low = recipe.precision.of(component) in ("fp16", "bf16")
        peaks.append(source.part_bytes(part) * (2.5 if low else 3.0))
    return int(max(peaks)) >> 20


def check_host_memory(source: ModelSource, recipe: Recipe) -> None:
    needed = estimated_host_memory_mib(source, recipe)
    if needed > recipe.build.max_host_memory_mib:
        raise RecipeError(
            f"{recipe.path}: build.max_host_memory_mib = {recipe.build.max_host_memory_mib} but building this "
            f"model with these precisions needs about {needed} MiB"
        )
