"""Checkpoint + recipe -> a directory of engines with a manifest that says exactly what was built.

The build happens in a staging directory beside the output and is moved into place at the
end, so an interrupted build leaves no half engine and no manifest that lies. Components
whose build key is unchanged (see toolkit.cache) are reused instead of rebuilt.

Quantized precisions need calibration, which lives above the toolkit (``mirasol_edge.calib``):
the caller passes a ``Quantizer``, and an ``answer_check`` that judges the quantized engines'
answers; ``mirasol-build`` passes both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from importlib.metadata import version as version_of
from pathlib import Path
from typing import Any, Protocol

import torch

from mirasol_edge.runtime import machine
from mirasol_edge.runtime.components import COMPONENTS
from mirasol_edge.runtime.files import sha256_file
from mirasol_edge.runtime.manifest import (
    FORMAT,
    INITIAL_STATE,
    TIMING_CACHE,
    BackendEntry,
    Manifest,
    StateEntry,
    TargetEntry,
    component_from_dict,
    model_identity,
)

from .cache import build_key, previous_manifest, reusable, reuse
from .engines import backend_version, build_engine, onnx_data_file, profiles_for, resolved_capabilities
from .export import ExportError, ExportJob, component_spec, export_onnx, graph_io
from .parity import onnx_parity, parity_input_sets, torch_outputs
from .precision import apply_precision, slow_precision_warnings
from .preflight import OutputDirError, check_host_memory, check_output_dir, check_recipe_against_config, foreign_files
from .real_inputs import RealInputs, real_inputs
from .recipe import CALIBRATED, Recipe, RecipeError
from .source import COMPONENT_PARTS, ModelSource, load_source

Progress = Callable[[str], None]
AnswerCheck = Callable[[Path, Recipe, Progress], dict]


class Quantizer(Protocol):
    """Calibration and quantization, provided by ``mirasol_edge.calib.Quantizer``."""

    def check_pins(self, recipe: Recipe, source: ModelSource) -> None: ...

    def calibrate(self, source: ModelSource, recipe: Recipe, components: list[str], progress: Progress) -> Any: ...

    def quantize(self, name: str, fp32_path: Path, onnx_path: Path, recipe: Recipe, calibration: Any,
                 progress: Progress) -> dict:
        """Write ``onnx_path`` from the fp32 export; the report's ``precision`` is what was built."""


class ParityError(ExportError):
    """An exported graph disagrees with PyTorch beyond the recipe's accuracy thresholds."""


def build(
    recipe: Recipe,
    out: str | Path,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    stage: str = "all",
    progress: Progress = lambda msg: None,
    quantizer: Quantizer | None = None,
    answer_check: AnswerCheck | None = None,
) -> dict:
    """Build every component; ``stage="export"`` writes a bundle (ONNX + manifest, no engines).

    ``quantizer`` is needed when the recipe quantizes a component (``mirasol_edge.calib.Quantizer``);
    ``answer_check(staging, recipe, progress)`` then judges the quantized engines' answers."""
    out = Path(out)
    check_output_dir(out)
    source = load_source(checkpoint, preset)
    cfg = source.cfg
    check_recipe_against_config(recipe, cfg)
    check_host_memory(source, recipe)
    for warning in slow_precision_warnings(recipe):
        progress(f"warning: {warning}")
    quantized = [n for n in COMPONENTS if recipe.precision.of(n) in CALIBRATED]
    if quantized and quantizer is None:
        raise RecipeError(f"{recipe.path}: precision.{quantized[0]} = {recipe.precision.of(quantized[0])!r} needs "
                          "calibration: pass quantizer=mirasol_edge.calib.Quantizer() (mirasol-build does)")
    if quantizer is not None:
        quantizer.check_pins(recipe, source)
    backend = recipe.target.backend
    engines = stage == "all"
    backend_v = backend_version(backend) if engines else None

    before = previous_manifest(out)
    previous = before.get("components", {})
    keys = {name: build_key(source, recipe, name) for name in COMPONENTS}
    rebuild = [n for n in COMPONENTS if not reusable(previous.get(n), keys[n], out, engines)]
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.staging."))
    try:
        if (out / TIMING_CACHE).exists():
            shutil.copy2(out / TIMING_CACHE, staging / TIMING_CACHE)
        components = {}
        to_quantize = [n for n in rebuild if n in quantized]
        calibration = quantizer.calibrate(source, recipe, to_quantize, progress) if to_quantize else None
        if rebuild:
            progress("streaming a real clip through the PyTorch reference for the parity checks")
            real = real_inputs(source, recipe)
        for name in COMPONENTS:
            model = source.materialize(name)
            if name == "chunk_encoder":  # the TTM memory starts from the encoder's learned values
                batch_state = model.init_state(recipe.build.batch)
                initial_state = model.init_state(1)
            if name not in rebuild:
                progress(f"{name}: unchanged, reused")
                components[name] = reuse(previous[name], out, staging)
                continue
            spec = component_spec(model, name, recipe.build.batch, batch_state, recipe.text.max_question_tokens,
                                  recipe.text.max_answer_tokens)
            components[name] = _build_component(spec, source, recipe, staging, keys[name], engines, progress, real,
                                                quantizer, calibration)
        t = recipe.target
        state = _write_initial_state(initial_state, staging)
        model = {"config": cfg.to_dict(), "config_hash": cfg.hash(), **source.description,
                 "tokenizer": type(source.model.tokenizer).__name__}
        model["identity"] = model_identity(model, state.tensors)  # what snapshots of its streams belong to
        manifest = Manifest(
            format=FORMAT, toolkit_version=version_of("mirasol-edge"),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine.describe(),
            model=model,
            recipe={"path": recipe.path, **recipe.to_dict()},
            backend=BackendEntry(backend, backend_v, engines),
            target=TargetEntry(t.name, t.device, resolved_capabilities(t.compute_capabilities) if engines
                               else tuple(t.compute_capabilities),
                               recipe.build.hardware_compatibility, recipe.build.version_compatible),
            batch=recipe.build.batch, state=state,
            components={name: component_from_dict(entry, name) for name, entry in components.items()})
        manifest.write(staging)  # the answer check opens the staged engines
        if quantized:
            manifest = replace(manifest, quantization=_quantization_report(
                staging, recipe, source, calibration, before.get("quantization"), bool(rebuild), answer_check,
                progress))
            manifest.write(staging)
        _swap_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest.to_dict()


def _quantization_report(staging: Path, recipe: Recipe, source: ModelSource, calibration, previous: dict | None,
                         rebuilt: bool, answer_check: AnswerCheck | None, progress: Progress) -> dict:
    """The answers of the quantized engines; an unchanged build keeps its earlier report."""
    if not rebuilt and previous:
        return previous
    described = calibration.describe() if calibration is not None else (previous or {}).get("calibration")
    if not source.checkpoint_path:
        # A preset's random weights answer nothing: asking them would only cost minutes (edge: 10).
        return {"calibration": described, "note": "random weights (a preset): the answer check needs a trained checkpoint"}
    if answer_check is None:
        return {"calibration": described, "note": "no answer check was asked for (mirasol-build runs the demo task's)"}
    return {"calibration": described, **answer_check(staging, recipe, progress)}


def _write_initial_state(initial_state: dict[str, torch.Tensor], staging: Path) -> StateEntry:
    """The state a stream starts from (one stream; the runtime repeats it per batch slot).

    The runtime needs it without torch: the TTM memory starts from learned values.
    """
    from safetensors.numpy import save_file

    state = {name: t.numpy() for name, t in initial_state.items()}
    path = staging / INITIAL_STATE
    save_file(state, str(path))
    os.chmod(path, 0o644)  # safetensors writes it private; the runtime may run as another user
    return StateEntry(INITIAL_STATE, sha256_file(path),
                      {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in state.items()})


def _build_component(spec: ExportJob, source: ModelSource, recipe: Recipe, staging: Path, key: str,
                     engines: bool, progress: Progress, real: RealInputs, quantizer: Quantizer | None,
                     calibration) -> dict:
    name = spec.name
    own_peak = machine.reset_peak_rss()
    precision = recipe.precision.of(name)
    # Built part by part, the part is this component's alone: convert it in place (no copy).
    spec.module = apply_precision(spec.module, precision, recipe.precision.keep_fp32, inplace=source.by_part)
    quantized = precision in CALIBRATED
    onnx_path = staging / f"{name}.onnx"
    export_path = staging / f"{name}.fp32.onnx" if quantized else onnx_path
    progress(f"{name}: exporting ONNX ({'fp32, to quantize' if quantized else precision})")
    start = time.perf_counter()
    export_onnx(spec, export_path)
    export_seconds = time.perf_counter() - start

    progress(f"{name}: checking ONNX against PyTorch")
    sets = parity_input_sets(spec, [real.per_component[name]] if name in real.per_component else [])
    references = [torch_outputs(spec, s) for s in sets]
    spec.module = None
    source.release(COMPONENT_PARTS[name])  # part by part: the weights go before ONNX Runtime loads the graph
    parity = onnx_parity(export_path, sets, references)
    acc = recipe.accuracy
    if parity.max_rel_error > acc.max_rel_error or parity.min_cosine < acc.min_cosine:
        raise ParityError(
            f"{name}: ONNX disagrees with PyTorch on {parity.worst_output!r}: relative error "
            f"{parity.max_rel_error:.2e} (recipe max {acc.max_rel_error:.0e}), cosine {parity.min_cosine:.6f} "
            f"(recipe min {acc.min_cosine})"
        )
    if quantized:
        quantization = quantizer.quantize(name, export_path, onnx_path, recipe, calibration, progress)
        precision = quantization["precision"]  # what "auto" chose; the asked-for precision otherwise
    entry = {"onnx": onnx_path.name, "onnx_sha256": sha256_file(onnx_path), "precision": precision,
             **graph_io(onnx_path), "profiles": {}, "parity": parity.to_dict(),
             "parity_inputs": real.describe(name),
             "export_seconds": round(export_seconds, 3), "build_key": key, "engine": None, "engine_sha256": None}
    if quantized:
        entry.update(parity_of="the fp32 graph the quantized one was made from", quantization=quantization)
    data = onnx_data_file(onnx_path)
    if data is not None:
        entry["onnx_data"] = {"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}
    profiles = profiles_for(spec.dynamic, spec.inputs)
    entry["profiles"] = {n: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for n, p in profiles.items()}

    if engines:
        progress(f"{name}: building {recipe.target.backend} engine")
        entry.update(build_engine(onnx_path, name, recipe, profiles, precision))
        stayed = entry.get("fusion", {}).get("float_linear_layers")
        if stayed:  # the graph is quantized but ONNX Runtime runs these layers in float
            progress(f"{name}: {len(stayed)} linear layers did not fuse into integer kernels: {', '.join(stayed[:4])}"
                     + (" ..." if len(stayed) > 4 else ""))
    # This component's own peak where the kernel lets us reset the mark; the process's so far otherwise.
    entry["peak_rss_mib"] = round(machine.peak_rss_mib() or 0)
    entry["peak_rss_scope"] = "component" if own_peak else "process"
    return entry


def _swap_into_place(staging: Path, out: Path) -> None:
    os.chmod(staging, 0o755)  # mkdtemp made it private
    if not out.exists():
        os.replace(staging, out)
        return
    foreign = foreign_files(out)  # checked again: a file may have been put there during the build
    if foreign:
        raise OutputDirError(foreign)
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    os.replace(out, old)
    os.replace(staging, out)
    for f in old.iterdir():  # only what the earlier build listed (foreign_files said so)
        f.unlink()
    old.rmdir()


__all__ = ["AnswerCheck", "ExportError", "ParityError", "Quantizer", "build"]
