"""The build's answer check for quantized engines (``toolkit.build``'s ``answer_check`` hook):
the demo task's exact match through the runtime, the fp32 reference (PyTorch) against the
quantized graphs on ONNX Runtime (the engines themselves on a CPU build)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mirasol_edge.calib.quantize import QuantizationError

from .evaluate import evaluate


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
