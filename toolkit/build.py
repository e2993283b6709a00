"""Checkpoint + recipe -> a directory of engines with a manifest that says exactly what was built.

The build happens in a staging directory beside the output and is moved into place at the
end, so an interrupted build leaves no half engine and no manifest that lies. Components
whose inputs (config, weights, recipe, toolkit version) hash the same as in an existing
build are reused instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mirasol_edge.runtime import machine
from mirasol_edge.runtime.engine_dir import COMPONENTS
from mirasol_edge.runtime.manifest import FORMAT, INITIAL_STATE, MANIFEST, sha256_file, write_json_atomic

from .config import MirasolConfig
from .engines import ENGINE_SUFFIX, EngineBuildError, Profile, build_onnxruntime, build_tensorrt
from .export import (ComponentSpec, ExportError, TextPrefillGraph, _kv_names, component_spec, export_onnx, onnx_parity,
                     parity_input_sets, torch_outputs)
from .model import Mirasol
from .precision import apply_precision
from .recipe import QUANTIZED, Recipe, RecipeError
from .source import COMPONENT_PARTS, ModelSource, fp32_bytes, load_source

Progress = Callable[[str], None]


class OutputDirError(OSError):
    """The output directory cannot be written."""


class ParityError(ExportError):
    """An exported graph disagrees with PyTorch beyond the recipe's accuracy thresholds."""


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


def check_pins(recipe: Recipe, source: ModelSource) -> None:
    """Every pinned layer group exists in this model (before any work)."""
    if not recipe.precision.pin:
        return
    from mirasol_edge.calib.quantize import model_groups

    groups = model_groups(source.model)  # works on the meta skeleton too
    for group in recipe.precision.pin:
        if group not in groups:
            near = sorted(g for g in groups if g.split(".")[0] == group.split(".")[0])[:6]
            raise RecipeError(f"{recipe.path}: precision.pin.{group}: no such layer group in this model "
                              f"(some that exist: {', '.join(near)})")


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
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise OutputDirError(f"{out}: not empty and not an earlier build; refusing to overwrite")


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


def _profiles(spec: ComponentSpec, recipe: Recipe) -> dict[str, Profile]:
    """min/opt/max per varying input, from the recipe's text lengths."""
    profiles = {}
    prompt_max = recipe.text.max_question_tokens + 2
    past_max = prompt_max + recipe.text.max_answer_tokens - 1
    for name, axes in spec.dynamic.items():
        shape = list(spec.inputs[name].shape)
        lo, opt, hi = list(shape), list(shape), list(shape)
        for axis, (dim, low, _) in axes.items():
            high = prompt_max if dim == "prompt_len" else past_max
            lo[axis], hi[axis], opt[axis] = low, high, max(low, min(high, (low + high) // 2))
        profiles[name] = Profile(tuple(lo), tuple(opt), tuple(hi))
    return profiles


def _io(onnx_path: Path) -> dict:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


REAL_CLIP_SEED = 7  # the synthetic task's clip whose real inputs every parity check uses


def real_stream_stage(name: str, model: Mirasol, batch: int, values: dict) -> None:
    """Add ``name``'s real inputs to ``values``: its inputs at the last chunk of a real encoded
    clip (the synthetic task's generator, PyAV encoders and decoder), after streaming the chunks
    before it. Stages run in component order, each needing only its own part of the model, and
    before that part's precision changes: real frames and mel, the Combiner latents and TTM
    memory they produce, the AR state those leave, and the text caches a real question leaves."""
    cfg = model.cfg

    def batched(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))[None].expand(batch, *array.shape).contiguous()

    with torch.no_grad():
        if name == "chunk_encoder":
            from mirasol_edge.demo.dataset import decode_clip
            from mirasol_edge.runtime.decode.chunks import ChunkSpec

            clip = decode_clip(REAL_CLIP_SEED, ChunkSpec.from_config(cfg))
            memory, latents = values["initial_state"].get("memory"), []
            for frames, mel in zip(clip.frames, clip.mel):
                video, mel = model._video_float(batched(frames)), batched(mel)
                values.update({"video": video, "mel": mel, "past.memory": memory})
                out, memory = model.chunk_encoder(video, mel if cfg.use_audio else None, memory)
                latents.append(out)
            values.update(all_latents=latents, latents=latents[-1], chunks=len(latents) - 1)
        elif name == "ar_step":
            state = values["initial_state"]
            for latents in values["all_latents"][:-1]:
                _, state = model.ar_step(latents, None, state)
            values.update({"past.pos": state["pos"], "pos": state["pos"][:1], "past.context": state["context"],
                           "context": state["context"][:1]})
            values.update({f"past.{k.removeprefix('kv.')}": v for k, v in state.items() if k.startswith("kv.")})
        elif name == "text_prefill":
            tokens = torch.tensor([_question_ids(model)])
            outs = TextPrefillGraph(model)(tokens, values["context"], values["pos"])
            depth = cfg.text_depth
            values["text_decode"] = {**dict(zip(_kv_names("past", depth), outs[1 : 1 + 2 * depth])),
                                     **dict(zip(_kv_names("cross", depth), outs[1 + 2 * depth : 1 + 4 * depth])),
                                     "cross_bias": outs[-1]}


def _streamed_inputs(spec: ComponentSpec, values: dict) -> dict[str, np.ndarray]:
    """The spec's inputs taken from ``real_stream_stage``'s values (the example where there is none)."""
    # The AR step's past.{i}.key is the AR cache; text_decode's is the question's own cache.
    own = values["text_decode"] if spec.name == "text_decode" else values
    return {name: (own[name] if own.get(name) is not None else example).numpy()
            for name, example in spec.inputs.items()}


def _question_ids(model: Mirasol) -> list[int]:
    from .tokenizer import prompt_ids

    return prompt_ids(model.tokenizer, "what colour is the square?", model.cfg.max_question_tokens)


def build_key(source: ModelSource, recipe: Recipe, component: str) -> str:
    from importlib.metadata import version

    text = json.dumps({"weights": source.weights_hash, "config": source.model.cfg.hash(),
                       "recipe": recipe.to_dict(), "component": component,
                       "toolkit": version("mirasol-edge"), "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    from mirasol_edge.runtime.trt import lazy_import_trt

    return lazy_import_trt(backend).__version__


def build(
    recipe: Recipe,
    out: str | Path,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    stage: str = "all",
    progress: Progress = lambda msg: None,
) -> dict:
    """Build every component; ``stage="export"`` writes a bundle (ONNX + manifest, no engines)."""
    out = Path(out)
    check_output_dir(out)
    source = load_source(checkpoint, preset)
    cfg = source.cfg
    check_recipe_against_config(recipe, cfg)
    check_host_memory(source, recipe)
    check_pins(recipe, source)
    backend = recipe.target.backend
    engines = stage == "all"
    version = backend_version(backend) if engines else None

    previous = _previous_components(out)
    keys = {name: build_key(source, recipe, name) for name in COMPONENTS}
    rebuild = [n for n in COMPONENTS if not _reusable(previous.get(n), keys[n], out, engines)]
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.staging."))
    try:
        if (out / "timing.cache").exists():
            shutil.copy2(out / "timing.cache", staging / "timing.cache")
        components, real = {}, {}
        calibration = _calibration(source, recipe, [n for n in rebuild if recipe.precision.of(n) in QUANTIZED],
                                   progress)
        for index, name in enumerate(COMPONENTS):
            model = source.materialize(name)
            if name == "chunk_encoder":  # the TTM memory starts from the encoder's learned values
                real["initial_state"] = model.init_state(recipe.build.batch)
                initial_state = model.init_state(1)
            # Parity checks need real inputs up to the last component that is rebuilt.
            if rebuild and index <= COMPONENTS.index(rebuild[-1]):
                progress(f"{name}: streaming a real clip for the parity checks")
                real_stream_stage(name, model, recipe.build.batch, real)
            if name not in rebuild:
                progress(f"{name}: unchanged, reused")
                components[name] = _reuse(previous[name], out, staging)
                continue
            spec = component_spec(model, name, recipe.build.batch, real["initial_state"])
            components[name] = _build_component(spec, source, recipe, staging, keys[name], engines, progress, real,
                                                calibration)
        manifest = {
            "format": FORMAT,
            "toolkit_version": _toolkit_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine.describe(),
            "model": {"config": cfg.to_dict(), "config_hash": cfg.hash(), **source.description,
                      "tokenizer": type(source.model.tokenizer).__name__},
            "recipe": {"path": recipe.path, **recipe.to_dict()},
            "backend": {"name": backend, "version": version, "engines_built": engines},
            "target": {"name": recipe.target.name, "device": recipe.target.device,
                       "compute_capabilities": list(recipe.target.compute_capabilities),
                       "hardware_compatibility": recipe.build.hardware_compatibility,
                       "version_compatible": recipe.build.version_compatible},
            "batch": recipe.build.batch,
            "state": _write_initial_state(initial_state, staging),
            "components": components,
        }
        write_json_atomic(staging / MANIFEST, manifest)
        if any(c["precision"] in QUANTIZED for c in components.values()):
            # Answers through the real runtime, fp32 against the quantized graphs, before anything lands.
            # A preset's random weights answer nothing: asking them would only cost minutes (edge: 10).
            manifest["quantization"] = (
                _answer_report(staging, recipe, calibration, progress) if source.checkpoint_path
                else {"calibration": calibration.describe() if calibration else None,
                      "note": "random weights (a preset): the answer check needs a trained checkpoint"})
            write_json_atomic(staging / MANIFEST, manifest)
        _swap_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _write_initial_state(initial_state: dict[str, torch.Tensor], staging: Path) -> dict:
    """The state a stream starts from (one stream; the runtime repeats it per batch slot).

    The runtime needs it without torch: the TTM memory starts from learned values.
    """
    from safetensors.numpy import save_file

    state = {name: t.numpy() for name, t in initial_state.items()}
    path = staging / INITIAL_STATE
    save_file(state, str(path))
    os.chmod(path, 0o644)  # safetensors writes it private; the runtime may run as another user
    return {"file": INITIAL_STATE, "sha256": sha256_file(path),
            "tensors": {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in state.items()}}


def _toolkit_version() -> str:
    from importlib.metadata import version

    return version("mirasol-edge")


def _previous_components(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST).read_text()).get("components", {})
    except (OSError, json.JSONDecodeError):
        return {}


def onnx_data_file(graph: Path) -> Path | None:
    """The external-data file beside a graph over 2 GB (``NAME.onnx.data``, ``NAME.ort.data``)."""
    data = graph.with_name(graph.name + ".data")
    return data if data.is_file() else None


def _reusable(previous: dict | None, key: str, out: Path, engines: bool) -> bool:
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


def _reuse(previous: dict, out: Path, staging: Path) -> dict:
    for file in {previous["onnx"], previous.get("engine")} - {None}:
        for f in out.glob(file + "*"):  # the graph and any external data beside it
            shutil.copy2(f, staging / f.name)
    return {**previous, "reused": True}


def _calibration(source: ModelSource, recipe: Recipe, quantized: list[str], progress: Progress):
    """Real inputs for the quantized components, from the recipe's calibration media."""
    if not quantized:
        return None
    from mirasol_edge.calib.collect import collect
    from mirasol_edge.calib.quantize import QuantizationError

    if source.by_part:
        raise QuantizationError(
            f"{recipe.path}: precision.{quantized[0]} = {recipe.precision.of(quantized[0])!r}: calibrating a model "
            "built part by part (over 2 GB, like mirasol3b) is not supported yet; use fp16 for it")
    c = recipe.calibration
    return collect(source.model, c.media, c.clips, c.max_samples, c.min_samples, c.held_out, source.weights_hash,
                   progress)


def _pins_for(component: str, pins: dict[str, str]) -> dict[str, str]:
    from .recipe import PIN_PARTS

    return {g: p for g, p in pins.items() if component in PIN_PARTS.get(g.split(".")[0], ())}


def _quantize(name: str, fp32_path: Path, onnx_path: Path, recipe: Recipe, calibration, progress: Progress) -> dict:
    from mirasol_edge.calib.quantize import quantize_component, tile_to_batch

    inputs = {i["name"]: i["shape"] for i in _io(fp32_path)["inputs"]}
    report = quantize_component(
        name, fp32_path, onnx_path, recipe.precision.of(name), tile_to_batch(calibration.fit[name], inputs),
        tile_to_batch(calibration.held_out[name], inputs), _pins_for(name, recipe.precision.pin),
        recipe.accuracy.min_quantized_cosine, recipe.calibration.method, progress)
    for f in fp32_path.parent.glob(fp32_path.name + "*"):
        f.unlink()  # the fp32 graph was the quantizer's input, not part of the build
    return report.to_dict()


def _answer_report(staging: Path, recipe: Recipe, calibration, progress: Progress) -> dict:
    """Demo-task exact match through the runtime: the fp32 reference (PyTorch) against the
    quantized graphs on ONNX Runtime (the engines themselves on a CPU build)."""
    from mirasol_edge.calib.quantize import QuantizationError
    from mirasol_edge.demo.evaluate import evaluate

    clips = recipe.calibration.eval_clips
    progress(f"answering {clips} demo-task clips: fp32 (PyTorch) and quantized (ONNX Runtime)")
    fp32 = evaluate(staging, clips, backend="torch", device="cpu")
    quantized = evaluate(staging, clips, backend="onnxruntime", device="cpu")
    report = {"calibration": calibration.describe(), "eval_clips": clips,
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


def _build_component(spec: ComponentSpec, source: ModelSource, recipe: Recipe, staging: Path, key: str,
                     engines: bool, progress: Progress, real: dict, calibration=None) -> dict:
    name = spec.name
    own_peak = machine.reset_peak_rss()
    precision = recipe.precision.of(name)
    # Built part by part, the part is this component's alone: convert it in place (no copy).
    spec.module = apply_precision(spec.module, precision, recipe.precision.keep_fp32, inplace=source.by_part)
    quantized = precision in QUANTIZED
    onnx_path = staging / f"{name}.onnx"
    export_path = staging / f"{name}.fp32.onnx" if quantized else onnx_path
    progress(f"{name}: exporting ONNX ({'fp32, to quantize' if quantized else precision})")
    start = time.perf_counter()
    export_onnx(spec, export_path)
    export_seconds = time.perf_counter() - start

    progress(f"{name}: checking ONNX against PyTorch")
    sets = parity_input_sets(spec, [_streamed_inputs(spec, real)])
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
        quantization = _quantize(name, export_path, onnx_path, recipe, calibration, progress)
    entry = {"onnx": onnx_path.name, "onnx_sha256": sha256_file(onnx_path), "precision": precision,
             **_io(onnx_path), "profiles": {}, "parity": parity.to_dict(),
             "parity_inputs": f"random; and a real encoded clip (synthetic task seed {REAL_CLIP_SEED}) decoded and "
                              f"streamed {real['chunks']} chunks deep",
             "export_seconds": round(export_seconds, 3), "build_key": key, "engine": None, "engine_sha256": None}
    if quantized:
        entry.update(parity_of="the fp32 graph the quantized one was made from", quantization=quantization)
    data = onnx_data_file(onnx_path)
    if data is not None:
        entry["onnx_data"] = {"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}
    profiles = _profiles(spec, recipe)
    entry["profiles"] = {n: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for n, p in profiles.items()}

    if engines:
        progress(f"{name}: building {recipe.target.backend} engine")
        entry.update(build_engine(onnx_path, name, recipe, profiles))
    # This component's own peak where the kernel lets us reset the mark; the process's so far otherwise.
    entry["peak_rss_mib"] = round(machine.peak_rss_mib() or 0)
    entry["peak_rss_scope"] = "component" if own_peak else "process"
    return entry


def build_engine(onnx_path: Path, name: str, recipe: Recipe, profiles: dict[str, Profile]) -> dict:
    """Engine file beside the ONNX; returns its manifest fields."""
    backend = recipe.target.backend
    engine_path = onnx_path.with_name(f"{name}{ENGINE_SUFFIX[backend]}")
    start = time.perf_counter()
    fields: dict = {}
    if backend == "onnxruntime":
        build_onnxruntime(onnx_path, engine_path, recipe)
    else:
        cache = onnx_path.with_name("timing.cache") if recipe.build.timing_cache else None
        fields["builder_warnings"] = build_tensorrt(onnx_path, engine_path, recipe, profiles, cache)[-20:]
    data = onnx_data_file(engine_path)
    if data is not None:
        fields["engine_data"] = {"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}
    return {**fields, "engine": engine_path.name, "engine_sha256": sha256_file(engine_path),
            "engine_bytes": engine_path.stat().st_size, "build_seconds": round(time.perf_counter() - start, 3)}


def _swap_into_place(staging: Path, out: Path) -> None:
    os.chmod(staging, 0o755)  # mkdtemp made it private
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)


def build_engines_from_bundle(bundle: str | Path, progress: Progress = lambda msg: None) -> dict:
    """Compile the engines of a bundle written by ``stage="export"``, on the target itself (Jetson)."""
    from mirasol_edge.runtime.engine_dir import verify_onnx
    from mirasol_edge.runtime.manifest import load_manifest

    from .recipe import parse_recipe

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    recipe_data = dict(manifest["recipe"])
    recipe = parse_recipe({k: v for k, v in recipe_data.items() if k != "path"}, recipe_data.get("path", str(bundle)))
    backend = recipe.target.backend
    for name, entry in manifest["components"].items():
        onnx_path = verify_onnx(bundle, name, entry)
        profiles = {n: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for n, p in entry["profiles"].items()}
        progress(f"{name}: building {backend} engine")
        entry.update(build_engine(onnx_path, name, recipe, profiles))
    manifest["backend"].update(version=backend_version(backend), engines_built=True)
    manifest["machine"] = machine.describe()
    write_json_atomic(bundle / MANIFEST, manifest)
    return manifest


__all__ = ["EngineBuildError", "ExportError", "OutputDirError", "ParityError", "build", "load_source"]
