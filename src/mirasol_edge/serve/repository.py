"""``mirasol-build triton``: a Triton model repository from a built engine directory.

    REPO/chunk_encoder, ar_step, text_prefill, text_decode, text_score   the engines, one Triton model each
    REPO/mirasol                                             the streams: a Python-backend (BLS) model
                                                             with the sequence batcher; it keeps each
                                                             stream's state and calls the engines

The configs are written through Triton's own protobuf (``model_config_pb2``), so a field that
Triton does not know cannot be written. ``twin=True`` writes the same repository with the
engines served by Python-backend models that run the same ONNX through ONNX Runtime: the
CPU twin, which the bundled ``tritonserver`` (nvidia-pytriton) can serve where NVIDIA's
container and its ONNX Runtime / TensorRT backends are not at hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.runtime.components import COMPONENTS
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.files import write_json_atomic
from mirasol_edge.runtime.manifest import MANIFEST

from . import protocol as p
from .access import ACCESS_FILE, Client, access_json, read_access_file

MARKER = "mirasol-repository.json"  # what we wrote, so a rebuild may replace it
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


class RepositoryError(MirasolError, ValueError):
    exit_code = 2


# Each option's bounds, by its command-line name: one home for mirasol-build triton and ServeOptions.
LIMITS = {"max_streams": (1, 4096), "max_batch": (1, 1024), "idle_seconds": (0.1, 86400.0),
          "queue_delay_us": (0, 1_000_000)}


@dataclass(frozen=True)
class ServeOptions:
    max_streams: int = 64  # streams the stream model holds at once; a START beyond is refused (ServerFull)
    max_batch: int = 16  # requests from different streams run in one execute
    idle_seconds: float = 60.0  # a stream with no request for this long is released
    queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    kind: str = "auto"  # where the engines run: gpu, cpu, or auto (gpu for TensorRT engines)

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            check_limit(name, getattr(self, name), low, high, whole=name != "idle_seconds")

    @property
    def candidate_sequences(self) -> int:
        """The batcher's sequence slots: room beyond ``max_streams`` for STARTs the stream model
        refuses (a refused client ends its sequence at once; one that doesn't holds a slot until
        the idle timeout), so a full server answers ServerFull instead of leaving a START waiting."""
        return 2 * self.max_streams + 16


def check_limit(name: str, value, low: float, high: float, whole: bool = True) -> None:
    """``value`` within [low, high] (a whole number where ``whole``), or a UsageError naming the option."""
    option = "--" + name.replace("_", "-")
    if whole and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{option} must be a whole number from {low:g} to {high:g}, got {value!r}")
    if not whole and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{option} must be a number from {low:g} to {high:g}, got {value!r}")
    if not low <= value <= high:  # NaN fails this too
        raise UsageError(f"{option} must be from {low:g} to {high:g}, got {value:g}"
                         if isinstance(value, float) else f"{option} must be from {low} to {high}, got {value}")


def write_repository(engine_dir: str | Path, out: str | Path, options: ServeOptions = ServeOptions(),
                     twin: bool = False, access: str | Path | None = None) -> Path:
    """Write REPO from ENGINES; the whole folder appears at once (written beside, then renamed).
    ``access``: an ACCESS.toml (``serve.access``); without one the server is single-tenant."""
    try:
        from tritonclient.grpc import model_config_pb2 as mc
    except ImportError:
        raise RepositoryError("writing a Triton repository needs tritonclient: pip install 'mirasol-edge[serve]'") from None
    clients = read_access_file(access) if access is not None else None  # checked before any work
    engines = EngineDir.open(engine_dir)
    backend = engines.backend
    if not twin and backend not in PLATFORMS:
        raise RepositoryError(f"{engine_dir}: engines built for {backend}; Triton's backends run TensorRT engines "
                              "(recipes h100, l4, thor, agx-orin, orin-nx, orin-nano) or ONNX (recipes cpu, cpu-fast), "
                              "not TensorRT-RTX ones; or write the CPU twin (--twin)")
    if options.kind not in ("auto", "gpu", "cpu"):
        raise UsageError(f"kind must be auto, gpu or cpu, not {options.kind!r}")
    kind = "cpu" if twin else options.kind if options.kind != "auto" else ("gpu" if backend == "tensorrt" else "cpu")
    out = Path(out)
    previous = _our_files(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name in COMPONENTS:
            _write_engine_model(mc, tmp / name, engines, name, twin, kind)
        _write_stream_model(mc, tmp / p.STREAM_MODEL, engines, options, kind, clients)
        written = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        write_json_atomic(tmp / MARKER, {"engines": str(Path(engine_dir).resolve()), "twin": twin,
                                         "manifest_sha256": engines.manifest_sha256, "kind": kind,
                                         "files": written})
        os.chmod(tmp, 0o755)
        if previous is None:  # a new folder appears whole
            if out.exists():
                out.rmdir()  # empty (_our_files said so)
            os.replace(tmp, out)
        else:
            _replace_our_models(tmp, out, previous)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _our_files(out: Path) -> set[str] | None:
    """The files an earlier write left in ``out`` (None: ``out`` is missing or empty).

    Only those are replaced: the operator's other models and notes in the repository are kept;
    a file of theirs inside one of our model folders, or a folder we did not write, is refused."""
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        files = json.loads((out / MARKER).read_text()).get("files")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        files = None
    if not isinstance(files, list):
        raise RepositoryError(f"{out}: exists and is not a model repository this tool wrote (no {MARKER} listing "
                              "its files); remove it or pick another")
    ours = set(files)
    for model in (*COMPONENTS, p.STREAM_MODEL):
        for f in sorted((out / model).rglob("*")) if (out / model).is_dir() else ():
            if _compiled_model_py(f.relative_to(out), ours):
                ours.add(str(f.relative_to(out)))  # Python compiled the model.py we wrote when Triton loaded it
            elif f.is_file() and str(f.relative_to(out)) not in ours:
                raise RepositoryError(f"{f}: not written by mirasol-build, inside the model folder it would replace; "
                                      "move it out first")
    return ours


def _compiled_model_py(rel: Path, ours: set[str]) -> bool:
    """``rel`` is ``MODEL/1/__pycache__/model.*.pyc`` beside a ``model.py`` this tool wrote."""
    return (rel.parent.name == "__pycache__" and rel.name.startswith("model.") and rel.suffix == ".pyc"
            and str(rel.parent.parent / "model.py") in ours)


def _replace_our_models(new: Path, out: Path, previous: set[str]) -> None:
    """Each of our model folders swapped in whole; everything else in ``out`` left as it is."""
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
    try:
        for model in sorted(d.name for d in new.iterdir() if d.is_dir()):
            if (out / model).exists():
                os.replace(out / model, old / model)
            os.replace(new / model, out / model)
        os.replace(new / MARKER, out / MARKER)
    finally:
        for rel in previous:  # only what the earlier write listed, then the folders it left empty
            (old / rel).unlink(missing_ok=True)
        for d in sorted((d for d in old.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            d.rmdir()
        old.rmdir()


def triton_type(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in TRITON_TYPES:
        raise RepositoryError(f"tensor type {name} has no Triton type here")
    return TRITON_TYPES[name]


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]  # a named axis is dynamic


def _tensor(mc, message, name: str, dtype: str, dims, optional: bool = False):
    entry = message.add(name=name, data_type=getattr(mc, dtype), dims=list(dims))
    if optional:
        entry.optional = True
    return entry


def _instances(mc, config, kind: str, count: int = 1) -> None:
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU,
                              count=count)


def _write_engine_model(mc, folder: Path, engines: EngineDir, name: str, twin: bool, kind: str) -> None:
    info = engines.components[name]
    source = engines.engine_file(name) or engines.onnx_file(name)  # ORT's optimized graph where the build made one
    config = mc.ModelConfig(name=name, max_batch_size=0, default_model_filename=source.name)
    if twin:  # the Python backend's file is model.py; the graph it runs is a parameter
        config.backend = "python"
        config.default_model_filename = "model.py"
        config.parameters["graph"].string_value = source.name
        config.parameters["precision"].string_value = info.precision
    else:
        config.platform = PLATFORMS[engines.backend]
        if engines.backend == "onnxruntime" and info.engine is not None:
            config.optimization.graph.level = -1  # optimized offline by the build, with its fusion choices
    for t in info.inputs.values():
        _tensor(mc, config.input, t.name, triton_type(t.dtype), _dims(t.shape))
    for t in info.outputs.values():
        _tensor(mc, config.output, t.name, triton_type(t.dtype), _dims(t.shape))
    _instances(mc, config, kind)
    version = folder / "1"
    version.mkdir(parents=True)
    for extra in (source, source.with_name(source.name + ".data")):  # a graph over 2 GB keeps its weights beside it
        if extra.is_file():
            shutil.copy2(extra, version / extra.name)
    if twin:
        (version / "model.py").write_text("from mirasol_edge.serve.twin_model import TritonPythonModel  # noqa: F401\n")
    _write_config(mc, folder, config)


def _write_stream_model(mc, folder: Path, engines: EngineDir, options: ServeOptions, kind: str,
                        access: list[Client] | None) -> None:
    config = mc.ModelConfig(name=p.STREAM_MODEL, backend="python", max_batch_size=options.max_batch)
    seq = config.sequence_batching
    seq.max_sequence_idle_microseconds = int(options.idle_seconds * 1e6)
    seq.oldest.max_candidate_sequences = options.candidate_sequences
    seq.oldest.max_queue_delay_microseconds = options.queue_delay_us
    for control, kind_name in ((p.START, "CONTROL_SEQUENCE_START"), (p.END, "CONTROL_SEQUENCE_END")):
        entry = seq.control_input.add(name=control)
        entry.control.add(kind=getattr(mc.ModelSequenceBatching.Control, kind_name), int32_false_true=[0, 1])
    encoder = engines.components["chunk_encoder"].inputs
    _tensor(mc, config.input, p.OP, "TYPE_STRING", [1])
    video = encoder["video"]
    _tensor(mc, config.input, p.VIDEO, triton_type(video.dtype), _dims(video.shape[1:]), optional=True)
    if "mel" in encoder:
        mel = encoder["mel"]
        _tensor(mc, config.input, p.MEL, triton_type(mel.dtype), _dims(mel.shape[1:]), optional=True)
    _tensor(mc, config.input, p.QUESTION, "TYPE_STRING", [1], optional=True)
    _tensor(mc, config.input, p.MAX_TOKENS, "TYPE_INT32", [1], optional=True)
    _tensor(mc, config.input, p.SNAPSHOT_IN, "TYPE_STRING", [1], optional=True)
    for name in (p.STREAM_ID, p.TOKEN, p.STREAM_KEY):
        _tensor(mc, config.input, name, "TYPE_STRING", [1], optional=True)
    _tensor(mc, config.input, p.TAKEOVER, "TYPE_BOOL", [1], optional=True)
    _tensor(mc, config.input, p.WATCH, "TYPE_STRING", [1], optional=True)
    outputs = engines.components["ar_step"].outputs["outputs"]
    _tensor(mc, config.output, p.OUTPUTS, triton_type(outputs.dtype), _dims(outputs.shape[1:]))
    _tensor(mc, config.output, p.CHUNK_INDEX, "TYPE_INT64", [1])
    _tensor(mc, config.output, p.TIMINGS, "TYPE_FP64", [4])
    _tensor(mc, config.output, p.ANSWER, "TYPE_STRING", [1])
    _tensor(mc, config.output, p.SNAPSHOT_OUT, "TYPE_STRING", [1])
    _tensor(mc, config.output, p.STREAM_KEY_OUT, "TYPE_STRING", [1])
    _tensor(mc, config.output, p.EVENTS, "TYPE_STRING", [1])
    _tensor(mc, config.output, p.WATCHES, "TYPE_STRING", [1])
    config.parameters[p.MODEL_CONFIG].string_value = json.dumps(engines.config)
    config.parameters["idle_seconds"].string_value = str(options.idle_seconds)
    config.parameters["max_streams"].string_value = str(options.max_streams)
    config.parameters["state_memory"].string_value = kind  # where the state tensors live between requests
    # One instance holds every stream: the oldest strategy keeps a sequence on one instance.
    _instances(mc, config, "cpu")
    version = folder / "1"
    (version / "engines").mkdir(parents=True)
    # The manifest byte for byte (snapshots name its sha256) and the initial state; the engine
    # files live in the engine models' folders.
    shutil.copy2(engines.path / MANIFEST, version / "engines" / MANIFEST)
    shutil.copy2(engines.path / engines.manifest.state.file, version / "engines" / engines.manifest.state.file)
    if access is not None:  # salted hashes only: the tokens never reach the repository
        write_json_atomic(version / ACCESS_FILE, access_json(access))
    (version / "model.py").write_text("from mirasol_edge.serve.stream_model import TritonPythonModel  # noqa: F401\n")
    _write_config(mc, folder, config)


def _write_config(mc, folder: Path, config) -> None:
    from google.protobuf import text_format

    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))


def read_config(path: str | Path):
    """A ``config.pbtxt`` parsed by Triton's protobuf; an unknown field is an error naming the file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: {exc}") from None
