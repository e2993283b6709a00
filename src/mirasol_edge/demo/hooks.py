"""What a build takes from the demo task (mirasol-build passes it in; the toolkit and calibration
import nothing from here): its calibration clips and questions, and the answer check of
quantized engines."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mirasol_edge.calib import Quantizer
from mirasol_edge.calib.collect import CALIB_SEED, cache_dir
from mirasol_edge.calib.quantize import QuantizationError

from .evaluate import evaluate
from .synthetic import QUESTIONS, make_clip


def quantizer() -> Quantizer:
    """Calibration on the demo task: its generator's clips and its six questions."""
    return Quantizer(list(QUESTIONS.values()), synthetic_media)


def synthetic_media(clips: int, directory: Path | None = None) -> list[Path]:
    """The demo generator's calibration clips as real files (written once, then reused)."""
    directory = directory or cache_dir() / f"synthetic-{CALIB_SEED}"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(CALIB_SEED, CALIB_SEED + clips):
        existing = sorted(directory.glob(f"clip-{seed}.*"))
        if existing:
            paths.append(existing[0])
            continue
        with tempfile.TemporaryDirectory(dir=directory) as tmp:  # whole files only
            path, _ = make_clip(seed, tmp)
            os.replace(path, directory / path.name)
            paths.append(directory / path.name)
    return paths


def answer_check(staging: Path, recipe, progress: Callable[[str], None]) -> dict:
    clips = recipe.calibration.eval_clips
    progress(f"answering {clips} demo-task clips: fp32 (PyTorch) and quantized (ONNX Runtime)")
    fp32 = evaluate(staging, clips, backend="torch", device="cpu")
    quantized = evaluate(staging, clips, backend="onnxruntime", device="cpu")
    report = {"eval_clips": clips,
              "exact_match": {"fp32": fp32["exact_match"], "quantized": quantized["exact_match"]},
              "per_type": {"fp32": fp32["per_type"], "quantized": quantized["per_type"]},
              "quantized_backend": quantized["backend"]}
    if fp32["exact_match"] == 0:
        report["ratio"] = None
        report["note"] = "the fp32 model answers nothing right (random weights?): the answer check is not meaningful"
        return report
    report["ratio"] = quantized["exact_match"] / fp32["exact_match"]
    if report["ratio"] < recipe.accuracy.min_exact_match:
        raise QuantizationError(
            f"quantized engines answer {quantized['exact_match']:.1%} of the demo task's questions right against "
            f"fp32's {fp32['exact_match']:.1%} on {clips} clips (ratio {report['ratio']:.3f} < "
            f"accuracy.min_exact_match {recipe.accuracy.min_exact_match}); per type: {quantized['per_type']}", report)
    return report
