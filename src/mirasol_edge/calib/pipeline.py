"""What the build calls for its quantized components (``toolkit.build.Quantizer``): check the
recipe's pins, collect calibration data from real media, quantize an exported fp32 graph."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from mirasol_edge.toolkit.export import graph_io
from mirasol_edge.toolkit.recipe import PIN_PARTS, Recipe, RecipeError
from mirasol_edge.toolkit.source import ModelSource

from .choose import choose_fastest
from .collect import CalibrationSet, SyntheticMedia, collect
from .quantize import QuantizationError, model_groups, quantize_component, tile_to_batch

Progress = Callable[[str], None]


# Questions asked of each calibration clip to record the text components' real inputs.
GENERIC_QUESTIONS = ("what is happening?", "what colour is it?", "how many are there?", "which way does it move?")


class Quantizer:
    def __init__(self, questions: list[str] | tuple[str, ...] = GENERIC_QUESTIONS,
                 synthetic: SyntheticMedia | None = None) -> None:
        """``questions`` for the text components' calibration; ``synthetic(n)`` makes n clips for
        ``calibration.media = "synthetic"`` (mirasol-build passes the demo task's)."""
        self.questions, self.synthetic = list(questions), synthetic

    def check_pins(self, recipe: Recipe, source: ModelSource) -> None:
        """Every pinned layer group exists in this model (before any work)."""
        if not recipe.precision.pin:
            return
        groups = model_groups(source.model)  # works on the meta skeleton too
        for group in recipe.precision.pin:
            if group not in groups:
                near = sorted(g for g in groups if g.split(".")[0] == group.split(".")[0])[:6]
                raise RecipeError(f"{recipe.path}: precision.pin.{group}: no such layer group in this model "
                                  f"(some that exist: {', '.join(near)})")

    def calibrate(self, source: ModelSource, recipe: Recipe, components: list[str],
                  progress: Progress) -> CalibrationSet:
        """Real inputs for ``components``, from the recipe's calibration media."""
        if source.by_part:
            name = components[0]
            raise QuantizationError(
                f"{recipe.path}: precision.{name} = {recipe.precision.of(name)!r}: calibrating a model built "
                "part by part (over 2 GB, like mirasol3b) is not supported yet; use fp16 for it")
        c = recipe.calibration
        return collect(source.model, c.media, c.clips, c.max_samples, c.min_samples, c.held_out,
                       source.weights_hash, self.questions, self.synthetic, progress)

    def quantize(self, name: str, fp32_path: Path, onnx_path: Path, recipe: Recipe, calibration: CalibrationSet,
                 progress: Progress) -> dict:
        """``onnx_path`` from the fp32 export, in the recipe's precision; for "auto", the fastest
        candidate measured here that passes the accuracy gate. The report's ``precision`` says which."""
        inputs = {i["name"]: i["shape"] for i in graph_io(fp32_path)["inputs"]}
        fit = tile_to_batch(calibration.fit[name], inputs)
        held_out = tile_to_batch(calibration.held_out[name], inputs)
        pins = {g: p for g, p in recipe.precision.pin.items() if name in PIN_PARTS.get(g.split(".")[0], ())}

        def make(precision: str, out: Path) -> dict:
            if precision == "fp32":
                shutil.copyfile(fp32_path, out)
                return {"precision": "fp32"}
            return quantize_component(
                name, fp32_path, out, precision, fit, held_out, pins, recipe.accuracy.min_quantized_cosine,
                recipe.calibration.method, progress, "onnxruntime" if recipe.target.backend == "onnxruntime" else "tensorrt",
            ).to_dict()

        try:
            if recipe.precision.of(name) != "auto":
                return make(recipe.precision.of(name), onnx_path)
            return choose_fastest(name, make, held_out, onnx_path, progress)
        finally:
            for f in fp32_path.parent.glob(fp32_path.name + "*"):
                f.unlink()  # the fp32 graph was the quantizer's input, not part of the build
