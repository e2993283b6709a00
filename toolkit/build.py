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
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mirasol_edge.runtime import machine
from mirasol_edge.runtime.manifest import FORMAT, INITIAL_STATE, MANIFEST, sha256_file, write_json_atomic

from .config import MirasolConfig
from .engines import ENGINE_SUFFIX, EngineBuildError, Profile, build_onnxruntime, build_tensorrt
from .export import ComponentSpec, ExportError, check_parity, component_specs, export_onnx
from .model import Mirasol
from .precision import apply_precision
from .recipe import Recipe, RecipeError
from .weights import load_model

Progress = Callable[[str], None]


class OutputDirError(OSError):
    """The output directory cannot be written."""


class ParityError(ExportError):
    """An exported graph disagrees with PyTorch beyond the recipe's accuracy thresholds."""


@dataclass(frozen=True)
class ModelSource:
    model: Mirasol
    description: dict  # {"checkpoint": path, "sha256": ...} or {"preset": name, "seed": n}
    weights_hash: str


def load_source(checkpoint: str | Path | None, preset: str | None, seed: int = 0) -> ModelSource:
    if (checkpoint is None) == (preset is None):
        raise ValueError("give exactly one of a checkpoint or a preset")
    if checkpoint is not None:
        path = Path(checkpoint)
        model = load_model(path)
        digest = sha256_file(path)
        return ModelSource(model, {"checkpoint": str(path), "sha256": digest}, digest)
    torch.manual_seed(seed)
    model = Mirasol(MirasolConfig.preset(preset)).eval()
    return ModelSource(model, {"preset": preset, "seed": seed, "weights": "random init"}, f"preset:{preset}:{seed}")


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
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise OutputDirError(f"{out}: not empty and not an earlier build; refusing to overwrite")


def check_host_memory(source: ModelSource, recipe: Recipe) -> None:
    # Export traces the model and holds a second copy of the weights while writing.
    needed = 3 * sum(p.numel() * 4 for p in source.model.parameters()) >> 20
    if needed > recipe.build.max_host_memory_mib:
        raise RecipeError(
            f"{recipe.path}: build.max_host_memory_mib = {recipe.build.max_host_memory_mib} but exporting this "
            f"model needs about {needed} MiB"
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


def real_stream_values(model: Mirasol, batch: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """Every component's inputs at the last chunk of a real encoded clip (the synthetic task's
    generator, PyAV encoders and decoder), after streaming the chunks before it: real frames,
    real mel, the state they produce, and the text caches a real question leaves. Computed
    once per build, before any component's precision changes."""
    from mirasol_edge.demo.dataset import decode_clip
    from mirasol_edge.runtime.decode.chunks import ChunkSpec

    from .export import TextPrefillGraph, _kv_names

    cfg = model.cfg
    clip = decode_clip(seed, ChunkSpec.from_config(cfg))
    state = model.init_state(batch)

    def batched(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))[None].expand(batch, *array.shape).contiguous()

    with torch.no_grad():
        for frames, mel in zip(clip.frames[:-1], clip.mel[:-1]):
            _, state = model.encode_chunk(batched(frames), batched(mel), state)
        video, mel = model._video_float(batched(clip.frames[-1])), batched(clip.mel[-1])
        latents, _ = model.chunk_encoder(video, mel if cfg.use_audio else None, state.get("memory"))
        values = {"video": video, "mel": mel, "latents": latents, "past.pos": state["pos"], "pos": state["pos"][:1],
                  "past.memory": state.get("memory"), "past.context": state["context"],
                  "context": state["context"][:1], "chunks": len(clip.frames) - 1}
        values.update({f"past.{i}.{p}": state[f"kv.{i}.{p}"] for i in range(cfg.ar_depth) for p in ("key", "value")})
        tokens = torch.tensor([_question_ids(model)])
        outs = TextPrefillGraph(model)(tokens, state["context"][:1], state["pos"][:1])
        depth = cfg.text_depth
        values["text_decode"] = {**dict(zip(_kv_names("past", depth), outs[1 : 1 + 2 * depth])),
                                 **dict(zip(_kv_names("cross", depth), outs[1 + 2 * depth : 1 + 4 * depth])),
                                 "cross_bias": outs[-1]}
    return values


def _streamed_inputs(spec: ComponentSpec, values: dict) -> dict[str, np.ndarray]:
    """The spec's inputs taken from ``real_stream_values`` (the example where there is none)."""
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
    model, cfg = source.model, source.model.cfg
    check_recipe_against_config(recipe, cfg)
    check_host_memory(source, recipe)
    backend = recipe.target.backend
    engines = stage == "all"
    version = backend_version(backend) if engines else None

    previous = _previous_components(out)
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.staging."))
    try:
        if (out / "timing.cache").exists():
            shutil.copy2(out / "timing.cache", staging / "timing.cache")
        components = {}
        real = None
        for spec in component_specs(model, recipe.build.batch):
            if real is None and not _reusable(previous.get(spec.name), build_key(source, recipe, spec.name), out,
                                              engines):
                progress("streaming a real clip for the parity checks")
                real = real_stream_values(model, recipe.build.batch)
            components[spec.name] = _build_component(
                spec, source, recipe, staging, out, previous.get(spec.name), engines, progress, real
            )
        manifest = {
            "format": FORMAT,
            "toolkit_version": _toolkit_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine.describe(),
            "model": {"config": cfg.to_dict(), "config_hash": cfg.hash(), **source.description,
                      "tokenizer": type(model.tokenizer).__name__},
            "recipe": {"path": recipe.path, **recipe.to_dict()},
            "backend": {"name": backend, "version": version, "engines_built": engines},
            "target": {"name": recipe.target.name, "device": recipe.target.device,
                       "compute_capabilities": list(recipe.target.compute_capabilities),
                       "hardware_compatibility": recipe.build.hardware_compatibility,
                       "version_compatible": recipe.build.version_compatible},
            "batch": recipe.build.batch,
            "state": _write_initial_state(model, staging),
            "components": components,
        }
        write_json_atomic(staging / MANIFEST, manifest)
        _swap_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _write_initial_state(model: Mirasol, staging: Path) -> dict:
    """The state a stream starts from (one stream; the runtime repeats it per batch slot).

    The runtime needs it without torch: the TTM memory starts from learned values.
    """
    from safetensors.numpy import save_file

    state = {name: t.numpy() for name, t in model.init_state(1).items()}
    path = staging / INITIAL_STATE
    save_file(state, str(path))
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


def _reusable(previous: dict | None, key: str, out: Path, engines: bool) -> bool:
    if not previous or previous.get("build_key") != key:
        return False
    files = [(previous["onnx"], previous["onnx_sha256"])]
    if engines:
        if not previous.get("engine"):
            return False
        files.append((previous["engine"], previous["engine_sha256"]))
    return all((out / f).is_file() and sha256_file(out / f) == h for f, h in files)


def _build_component(spec: ComponentSpec, source: ModelSource, recipe: Recipe, staging: Path, out: Path,
                     previous: dict | None, engines: bool, progress: Progress, real: dict) -> dict:
    name = spec.name
    key = build_key(source, recipe, name)
    if _reusable(previous, key, out, engines):
        progress(f"{name}: unchanged, reused")
        for file in {previous["onnx"], previous.get("engine")} - {None}:
            for f in out.glob(file + "*"):  # the graph and any external data beside it
                shutil.copy2(f, staging / f.name)
        return {**previous, "reused": True}

    precision = recipe.precision.of(name)
    spec.module = apply_precision(spec.module, precision, recipe.precision.keep_fp32)
    onnx_path = staging / f"{name}.onnx"
    progress(f"{name}: exporting ONNX ({precision})")
    start = time.perf_counter()
    export_onnx(spec, onnx_path)
    export_seconds = time.perf_counter() - start

    progress(f"{name}: checking ONNX against PyTorch")
    parity = check_parity(spec, onnx_path, [_streamed_inputs(spec, real)])
    acc = recipe.accuracy
    if parity.max_rel_error > acc.max_rel_error or parity.min_cosine < acc.min_cosine:
        raise ParityError(
            f"{name}: ONNX disagrees with PyTorch on {parity.worst_output!r}: relative error "
            f"{parity.max_rel_error:.2e} (recipe max {acc.max_rel_error:.0e}), cosine {parity.min_cosine:.6f} "
            f"(recipe min {acc.min_cosine})"
        )
    entry = {"onnx": onnx_path.name, "onnx_sha256": sha256_file(onnx_path), "precision": precision,
             **_io(onnx_path), "profiles": {}, "parity": parity.to_dict(),
             "parity_inputs": f"random; and a real encoded clip (synthetic task seed 7) decoded and streamed "
                              f"{real['chunks']} chunks deep",
             "export_seconds": round(export_seconds, 3), "build_key": key, "engine": None, "engine_sha256": None}
    profiles = _profiles(spec, recipe)
    entry["profiles"] = {n: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for n, p in profiles.items()}

    if engines:
        progress(f"{name}: building {recipe.target.backend} engine")
        entry.update(build_engine(onnx_path, name, recipe, profiles))
    entry["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
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
    from mirasol_edge.runtime.manifest import load_manifest, verify_file

    from .recipe import parse_recipe

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    recipe_data = dict(manifest["recipe"])
    recipe = parse_recipe({k: v for k, v in recipe_data.items() if k != "path"}, recipe_data.get("path", str(bundle)))
    backend = recipe.target.backend
    for name, entry in manifest["components"].items():
        onnx_path = verify_file(bundle, entry["onnx"], entry["onnx_sha256"], f"{name} ONNX")
        profiles = {n: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for n, p in entry["profiles"].items()}
        progress(f"{name}: building {backend} engine")
        entry.update(build_engine(onnx_path, name, recipe, profiles))
    manifest["backend"].update(version=backend_version(backend), engines_built=True)
    manifest["machine"] = machine.describe()
    write_json_atomic(bundle / MANIFEST, manifest)
    return manifest


__all__ = ["EngineBuildError", "ExportError", "OutputDirError", "ParityError", "build", "load_source"]
