"""Turn a component's ONNX into the backend's engine file.

- TensorRT / TensorRT-RTX: parse, optimization profiles for varying lengths, timing cache,
  strongly typed network (precision is already in the graph), serialized plan.
- ONNX Runtime: the graph with ORT's offline optimizations applied and saved.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mirasol_edge.runtime.trt import lazy_import_trt, trt_logger

from .recipe import Recipe

ENGINE_SUFFIX = {"onnxruntime": ".ort.onnx", "tensorrt": ".plan", "tensorrt-rtx": ".plan"}


class EngineBuildError(RuntimeError):
    """The backend refused a graph (names the node and op) or ran out of memory."""


@dataclass(frozen=True)
class Profile:
    """min/opt/max shape of one input that varies in length."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_onnxruntime(onnx_path: Path, engine_path: Path, recipe: Recipe) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # EXTENDED fusions are portable across CPUs; ALL adds layout changes tied to this machine.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    options.optimized_model_filepath = str(tmp)
    if onnx_path.with_name(onnx_path.name + ".data").is_file():
        # Over 2 GB: the optimized model keeps its weights outside the protobuf too.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         f"{engine_path.name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        os.replace(tmp, engine_path)
    except Exception as exc:
        raise EngineBuildError(f"{onnx_path.name}: ONNX Runtime could not load the graph: {exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _parse_errors(parser) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else err.node()
        op = err.node_operator() if hasattr(err, "node_operator") else "?"
        lines.append(f"node {node!r} (op {op}): {err.desc()}")
    return "; ".join(lines)


def build_tensorrt(
    onnx_path: Path, engine_path: Path, recipe: Recipe, profiles: dict[str, Profile], timing_cache: Path | None
) -> list[str]:
    """Build and write the plan; returns the builder's warnings."""
    backend = recipe.target.backend
    trt = lazy_import_trt(backend)
    messages: list[str] = []
    logger = trt_logger(trt, messages)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"{onnx_path.name}: {backend} cannot take the graph: {_parse_errors(parser)}")

    config = builder.create_builder_config()
    b = recipe.build
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, b.workspace_mib << 20)
    config.builder_optimization_level = b.optimization_level
    if b.hardware_compatibility != "none":  # full TensorRT only (checked by the recipe)
        level = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level[b.hardware_compatibility])
    if b.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if backend == "tensorrt-rtx":
        # Ahead-of-time build for the recipe's GPUs: works on a machine with no GPU.
        ccs = [getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")) for cc in recipe.target.compute_capabilities]
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(cc, i)
    if b.dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = b.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    if profiles:
        profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)

    cache = None
    if timing_cache is not None and backend == "tensorrt":  # TensorRT-RTX AOT builds time nothing
        blob = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "; ".join(messages[-5:]) or "no message from the builder"
        if any("memory" in m.lower() for m in messages):
            raise EngineBuildError(
                f"{onnx_path.name}: out of memory building with workspace {b.workspace_mib} MiB: {detail}"
            )
        raise EngineBuildError(f"{onnx_path.name}: {backend} build failed: {detail}")
    _atomic_write(engine_path, bytes(plan))
    if cache is not None:
        _atomic_write(timing_cache, bytes(cache.serialize()))
    return messages
