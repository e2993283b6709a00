"""Turn a component's ONNX into the backend's engine file.

- TensorRT / TensorRT-RTX: parse, optimization profiles for varying lengths, timing cache,
  strongly typed network (precision is already in the graph), serialized plan.
- ONNX Runtime: the graph with ORT's offline optimizations applied and saved.

No torch here: ``mirasol-build engine BUNDLE`` runs this on a Jetson that has only JetPack. The
TensorRT calls were read against TensorRT 10.3 (JetPack 6.1/6.2), 10.9, 11.1 and TensorRT-RTX
1.7 (see ``runtime.trt``); where a name differs, the code branches and says which versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.backends.ort_backend import disabled_optimizers
from mirasol_edge.runtime.engine_dir import verify_onnx
from mirasol_edge.runtime.files import atomic_path, sha256_file, write_bytes_atomic
from mirasol_edge.runtime.manifest import TIMING_CACHE, BackendEntry, file_ref, load_manifest
from mirasol_edge.runtime.trt import lazy_import_trt, trt_logger, version

from .recipe import Recipe, parse_recipe

ENGINE_SUFFIX = {"onnxruntime": ".ort.onnx", "tensorrt": ".plan", "tensorrt-rtx": ".plan"}


class EngineBuildError(MirasolError, RuntimeError):
    """The backend refused a graph (names the node and op) or ran out of memory."""

    exit_code = 5


@dataclass(frozen=True)
class Profile:
    """min/opt/max shape of one input that varies in length."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def build_onnxruntime(onnx_path: Path, engine_path: Path, recipe: Recipe, precision: str = "fp32") -> dict:
    """The graph with ORT's portable offline optimizations; for a quantized graph, also what fused."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # EXTENDED fusions are portable across CPUs; ALL adds layout changes tied to this machine.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if onnx_path.with_name(onnx_path.name + ".data").is_file():
        # Over 2 GB: the optimized model keeps its weights outside the protobuf too.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         f"{engine_path.name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    with atomic_path(engine_path) as tmp:
        options.optimized_model_filepath = str(tmp)
        try:
            ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=disabled_optimizers(precision))
        except Exception as exc:
            raise EngineBuildError(f"{onnx_path.name}: ONNX Runtime could not load the graph: {exc}") from None
    return {"fusion": fusion_report(engine_path)} if precision in ("int8", "fp8") else {}


INTEGER_KERNELS = ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulInteger")


def fusion_report(graph_path: Path) -> dict:
    """How many linear layers of an optimized quantized graph run on integer kernels, and the
    names of those that stayed float: a MatMul or Gemm with a constant weight, or with a weight
    dequantized from a constant on every call (a Q/DQ pair the fusion did not take)."""
    try:
        import onnx  # the build extra's; a device compiling a bundle may have only the runtime
    except ImportError:
        return {"integer_kernels": None, "float_linear_layers": None, "unchecked": "onnx is not installed"}

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants for o in n.output}
    fused = sum(n.op_type in INTEGER_KERNELS for n in graph.node)
    stayed = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in constants for i in n.input)]
    return {"integer_kernels": fused, "float_linear_layers": stayed}


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
    network = builder.create_network(network_flags(trt, backend))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"{onnx_path.name}: {backend} cannot take the graph: {_parse_errors(parser)}")

    config = builder.create_builder_config()
    b = recipe.build
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, b.workspace_mib << 20)
    config.builder_optimization_level = b.optimization_level
    if b.hardware_compatibility != "none":  # full TensorRT only (checked by the recipe)
        config.hardware_compatibility_level = compatibility_level(trt, b.hardware_compatibility)
    if b.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if backend == "tensorrt-rtx":
        # Ahead-of-time build for the recipe's GPUs: works on a machine with no GPU.
        names = ["CURRENT" if cc == "current" else "SM" + cc.replace(".", "")
                 for cc in recipe.target.compute_capabilities]
        unknown = [n for n in names if not hasattr(trt.ComputeCapability, n)]
        if unknown:
            raise EngineBuildError(f"{recipe.path}: this TensorRT-RTX ({trt.__version__}) cannot target {unknown[0]}")
        ccs = [getattr(trt.ComputeCapability, n) for n in names]
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(cc, i)
    if b.dla_core >= 0:
        # JetPack 6's TensorRT 10.3 builds for Orin's DLA; NVIDIA's 11.3 notes say 10.7 was the last with DLA
        # until 11.4 (JetPack 7.2.2+). The names (DeviceType.DLA, DLA_core, BuilderFlag.GPU_FALLBACK,
        # Builder.num_DLA_cores) are in 10.3 and 11.1 alike: ask the builder how many cores it sees.
        cores = getattr(builder, "num_DLA_cores", 0)
        if b.dla_core >= cores:
            raise EngineBuildError(f"{recipe.path}: build.dla_core = {b.dla_core}, but this {backend} "
                                   f"({trt.__version__}) sees {cores} DLA core(s) here")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = b.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    if profiles:
        profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)

    cache = None
    # TensorRT-RTX AOT builds time nothing (its 1.x deprecates set_timing_cache); full TensorRT 8.6 .. 11.1
    # have create_timing_cache(serialized_timing_cache) and set_timing_cache(cache, ignore_mismatch).
    if timing_cache is not None and backend == "tensorrt":
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
    write_bytes_atomic(engine_path, bytes(plan))
    if cache is not None:
        write_bytes_atomic(timing_cache, bytes(cache.serialize()))
    return messages


def network_flags(trt, backend: str) -> int:
    """A strongly typed network: the graph's casts and Q/DQ decide precision, never the builder.

    TensorRT 9.1 .. 10.x (JetPack 6.1/6.2's 10.3) and TensorRT-RTX 1.x opt in with STRONGLY_TYPED;
    9.x also needs EXPLICIT_BATCH (10.0 made it the only mode and ignores the flag). TensorRT 11 and
    TensorRT-RTX are always strongly typed (11.1 keeps the flag, deprecated and ignored): where the
    flag is gone, 0. TensorRT 8.x (JetPack 6.0's 8.6) has no strong typing: it would choose each
    layer's precision itself, so the fp16 / int8 / int4 graphs would not build as exported; refused."""
    major = version(trt)[0]
    flags = trt.NetworkDefinitionCreationFlag
    strongly_typed = getattr(flags, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        if backend == "tensorrt-rtx" or major >= 11:
            return 0
        raise EngineBuildError(f"{backend} {trt.__version__} has no strongly typed networks, which these graphs need "
                               "(their precision is in the graph): install TensorRT 10 or later (JetPack 6.1+)")
    explicit = backend == "tensorrt" and major < 10 and hasattr(flags, "EXPLICIT_BATCH")
    return (1 << int(strongly_typed)) | ((1 << int(flags.EXPLICIT_BATCH)) if explicit else 0)


def compatibility_level(trt, level: str):
    """The builder's HardwareCompatibilityLevel. AMPERE_PLUS: TensorRT 8.6 on; SAME_COMPUTE_CAPABILITY:
    10.9 on (not in JetPack 6's 10.3)."""
    name = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}[level]
    found = getattr(trt.HardwareCompatibilityLevel, name, None)
    if found is None:
        raise EngineBuildError(f"build.hardware_compatibility = {level!r}: this TensorRT ({trt.__version__}) has "
                               f"no HardwareCompatibilityLevel.{name} (AMPERE_PLUS: 8.6+, SAME_COMPUTE_CAPABILITY: 10.9+)")
    return found


def profiles_for(dynamic: dict, inputs: dict) -> dict[str, Profile]:
    """min/opt/max per varying input, from the contract's bounds (``component_spec``'s ``dynamic``),
    the same the graph's dynamic axes were exported with."""
    profiles = {}
    for name, axes in dynamic.items():
        shape = list(inputs[name].shape)
        lo, opt, hi = list(shape), list(shape), list(shape)
        for axis, (_, low, high) in axes.items():
            lo[axis], hi[axis], opt[axis] = low, high, max(low, min(high, (low + high) // 2))
        profiles[name] = Profile(tuple(lo), tuple(opt), tuple(hi))
    return profiles


def onnx_data_file(graph: Path) -> Path | None:
    """The external-data file beside a graph over 2 GB (``NAME.onnx.data``, ``NAME.ort.data``)."""
    data = graph.with_name(graph.name + ".data")
    return data if data.is_file() else None


def resolved_capabilities(capabilities) -> tuple[str, ...]:
    """The recipe's compute capabilities with ``current`` replaced by this machine's GPU's."""
    if "current" not in capabilities:
        return tuple(capabilities)
    from mirasol_edge.runtime.cuda import CudaError, compute_capability

    try:
        here = compute_capability()
    except CudaError as exc:
        raise EngineBuildError(f"compute capability 'current' means the GPU the build runs on; none here ({exc})") from None
    return tuple(dict.fromkeys(here if cc == "current" else cc for cc in capabilities))


def backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    return lazy_import_trt(backend).__version__


def build_engine(onnx_path: Path, name: str, recipe: Recipe, profiles: dict[str, Profile],
                 precision: str | None = None) -> dict:
    """Engine file beside the ONNX; returns its manifest fields. ``precision``: the graph's, where
    the recipe's is "auto"."""
    backend, precision = recipe.target.backend, precision or recipe.precision.of(name)
    engine_path = onnx_path.with_name(f"{name}{ENGINE_SUFFIX[backend]}")
    start = time.perf_counter()
    fields: dict = {}
    if backend == "onnxruntime":
        fields.update(build_onnxruntime(onnx_path, engine_path, recipe, precision))
    else:
        cache = onnx_path.with_name(TIMING_CACHE) if recipe.build.timing_cache else None
        fields["builder_warnings"] = build_tensorrt(onnx_path, engine_path, recipe, profiles, cache)[-20:]
    data = onnx_data_file(engine_path)
    if data is not None:
        fields["engine_data"] = {"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}
    return {**fields, "engine": engine_path.name, "engine_sha256": sha256_file(engine_path),
            "engine_bytes": engine_path.stat().st_size, "build_seconds": round(time.perf_counter() - start, 3)}


def build_engines_from_bundle(bundle: str | Path, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Compile the engines of a bundle written by ``stage="export"``, on the target itself (Jetson)."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    recipe_data = dict(manifest.recipe)
    recipe = parse_recipe({k: v for k, v in recipe_data.items() if k != "path"}, recipe_data.get("path", str(bundle)))
    backend = recipe.target.backend
    components = {}
    for name, entry in manifest.components.items():
        onnx_path = verify_onnx(bundle, name, entry)
        profiles = {n: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for n, p in entry.profiles.items()}
        progress(f"{name}: building {backend} engine")
        fields = build_engine(onnx_path, name, recipe, profiles, entry.precision)
        components[name] = replace(entry, engine=fields.pop("engine"), engine_sha256=fields.pop("engine_sha256"),
                                   engine_data=file_ref(fields.pop("engine_data", None)),
                                   report={**entry.report, **fields})
    built = replace(manifest, components=components, machine=machine.describe(),
                    backend=BackendEntry(backend, backend_version(backend), True),
                    target=replace(manifest.target,
                                   compute_capabilities=resolved_capabilities(manifest.target.compute_capabilities)))
    built.write(bundle)
    return built.to_dict()
