"""``manifest.json``: one typed schema that the build writes and every reader reads.

``format`` is the schema's version. A manifest of another version is refused with a message
naming both; a manifest that lacks a field names the field. Measurements the build reports
(export and build times, parity, quantization reports, peak memory) travel in each
component's ``report`` table and the top-level ``quantization``; readers that check or run
engines use only the typed fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from mirasol_edge.errors import MirasolError

from .components import TensorSpec
from .files import sha256_file, write_json_atomic

FORMAT = "mirasol-engines/1"
QUANTIZED = ("int8", "fp8", "int4")  # precisions built as explicit Q/DQ or weight-only graphs (calib)
MANIFEST = "manifest.json"
INITIAL_STATE = "initial_state.safetensors"


class ManifestError(MirasolError, ValueError):
    """An engine directory is missing, incomplete, tampered with, or built for something else."""

    exit_code = 2


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str
    bytes: int | None = None


@dataclass(frozen=True)
class Component:
    onnx: str
    onnx_sha256: str
    precision: str
    inputs: dict[str, TensorSpec]  # by name, in the graph's order (a list on disk)
    outputs: dict[str, TensorSpec]
    profiles: dict[str, dict[str, list[int]]]  # input -> {"min", "opt", "max"}
    build_key: str
    engine: str | None = None
    engine_sha256: str | None = None
    onnx_data: FileRef | None = None  # external data of a graph over 2 GB
    engine_data: FileRef | None = None
    report: dict[str, Any] = field(default_factory=dict)  # parity, timings, quantization, peak memory


@dataclass(frozen=True)
class BackendEntry:
    name: str
    version: str | None
    engines_built: bool


@dataclass(frozen=True)
class TargetEntry:
    name: str
    device: str
    compute_capabilities: tuple[str, ...]
    hardware_compatibility: str
    version_compatible: bool


@dataclass(frozen=True)
class StateEntry:
    file: str
    sha256: str
    tensors: dict[str, dict[str, Any]]  # name -> {"shape", "dtype"}


@dataclass(frozen=True)
class Manifest:
    format: str
    toolkit_version: str
    created: str
    machine: dict[str, Any]
    model: dict[str, Any]  # config, config_hash, tokenizer, and the checkpoint's sha256 or the preset
    recipe: dict[str, Any]
    backend: BackendEntry
    target: TargetEntry
    batch: int
    state: StateEntry
    components: dict[str, Component]
    quantization: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        def plain(value):
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                        if getattr(value, f.name) is not None or f.name in ("engine", "engine_sha256", "version")}
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        data = plain(self)
        for entry in data["components"].values():  # the reports sit beside the typed fields on disk
            entry.update(entry.pop("report"))
            entry["inputs"], entry["outputs"] = list(entry["inputs"].values()), list(entry["outputs"].values())
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a manifest (a JSON object expected)")
        if data.get("format") != FORMAT:
            raise ManifestError(f"{where}: format {data.get('format')!r}; this mirasol-edge reads {FORMAT!r} "
                                "(rebuild the engines with this version's mirasol-build)")
        try:
            return _parse(cls, data, where)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # _Bad names the field
            raise ManifestError(f"{where}: {exc} (format {FORMAT})") from None

    def write(self, engine_dir: Path) -> None:
        write_json_atomic(Path(engine_dir) / MANIFEST, self.to_dict())


class _Bad(ValueError):
    """A field of the wrong type or out of range; the message names it."""


# What a manifest may say: dtypes the runtime maps to numpy, and bounds that no build exceeds.
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
MAX_BATCH, MAX_TEXT_TOKENS, MAX_DIM = 1024, 1 << 16, 1 << 31
MAX_MANIFEST_BYTES = 16 << 20


def _need(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise _Bad(f"{where} is {type(data).__name__}, not a JSON object")
    if key not in data:
        raise _Bad(f"no {key!r} entry in {where}")
    return data[key]


def _of(data: Any, key: str, where: str, kind: type | tuple, optional: bool = False) -> Any:
    value = data.get(key) if optional and isinstance(data, dict) else _need(data, key, where)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _Bad(f"{where}.{key} must be {names}, got {type(value).__name__} {_short(value)}")
    return value


def _int(data: Any, key: str, where: str, low: int, high: int) -> int:
    value = _of(data, key, where, int)
    if not low <= value <= high:
        raise _Bad(f"{where}.{key} must be from {low} to {high}, got {value}")
    return value


def _sha(data: Any, key: str, where: str, optional: bool = False) -> str | None:
    value = _of(data, key, where, str, optional)
    if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise _Bad(f"{where}.{key} must be a sha256 (64 hex digits), got {_short(value)}")
    return value


def _file(data: Any, key: str, where: str, optional: bool = False) -> str | None:
    """A file name inside the engine folder: relative, no '..', no drive or backslash."""
    value = _of(data, key, where, str, optional)
    if value is not None:
        parts = PurePosixPath(value).parts
        if (not value or value.startswith("/") or "\\" in value or "\x00" in value or ".." in parts
                or PureWindowsPath(value).drive or value in (".", "")):
            raise _Bad(f"{where}.{key}: {_short(value)} is not a file inside the engine folder "
                       "(absolute paths and '..' are refused)")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def file_ref(data: Any, where: str = "file") -> FileRef | None:
    if not data:
        return None
    size = _of(data, "bytes", where, int, optional=True)
    if size is not None and size < 0:
        raise _Bad(f"{where}.bytes must be at least 0, got {size}")
    return FileRef(_file(data, "file", where), _sha(data, "sha256", where), size)


def _tensors(entries: Any, where: str) -> dict[str, TensorSpec]:
    if not isinstance(entries, list):
        raise _Bad(f"{where} must be a list of tensors, got {type(entries).__name__}")
    specs: dict[str, TensorSpec] = {}
    for i, e in enumerate(entries):
        at = f"{where}[{i}]"
        dtype, shape = _of(e, "dtype", at, str), _of(e, "shape", at, list)
        if dtype not in DTYPES:
            raise _Bad(f"{at}.dtype {_short(dtype)} is not one of {', '.join(DTYPES)}")
        for d in shape:
            if not (isinstance(d, str) and d) and not (type(d) is int and 1 <= d <= MAX_DIM):
                raise _Bad(f"{at}.shape {_short(shape)}: each axis is a size from 1 to {MAX_DIM} or a name")
        name = _of(e, "name", at, str)
        if name in specs:
            raise _Bad(f"{at}: a second tensor named {_short(name)}")
        specs[name] = TensorSpec(name, dtype, tuple(shape))
    return specs


def _profiles(data: Any, where: str) -> dict:
    profiles = _of(data, "profiles", where, dict)
    for name, profile in profiles.items():
        for key in ("min", "opt", "max"):
            dims = _of(profile, key, f"{where}.profiles.{name}", list)
            if not all(type(d) is int and 1 <= d <= MAX_DIM for d in dims):
                raise _Bad(f"{where}.profiles.{name}.{key} must be sizes from 1 to {MAX_DIM}, got {_short(dims)}")
    return profiles


def component_from_dict(data: dict, where: str = "component") -> Component:
    typed = {f.name for f in dataclasses.fields(Component)} - {"report"}
    return Component(
        onnx=_file(data, "onnx", where), onnx_sha256=_sha(data, "onnx_sha256", where),
        precision=_of(data, "precision", where, str), inputs=_tensors(_need(data, "inputs", where), f"{where}.inputs"),
        outputs=_tensors(_need(data, "outputs", where), f"{where}.outputs"), profiles=_profiles(data, where),
        build_key=_of(data, "build_key", where, str), engine=_file(data, "engine", where, optional=True),
        engine_sha256=_sha(data, "engine_sha256", where, optional=True),
        onnx_data=file_ref(data.get("onnx_data"), f"{where}.onnx_data"),
        engine_data=file_ref(data.get("engine_data"), f"{where}.engine_data"),
        report={k: v for k, v in data.items() if k not in typed})


def _parse(cls, data: dict, where: str) -> Manifest:
    m = "the manifest"
    backend, target, state = (_of(data, k, m, dict) for k in ("backend", "target", "state"))
    model, recipe = _of(data, "model", m, dict), _of(data, "recipe", m, dict)
    _of(model, "config", "model", dict)
    _of(model, "tokenizer", "model", str, optional=True)
    text = _of(recipe, "text", "recipe", dict)
    for key in ("max_question_tokens", "max_answer_tokens"):
        _int(text, key, "recipe.text", 1, MAX_TEXT_TOKENS)
    capabilities = _of(target, "compute_capabilities", "target", list)
    if not all(isinstance(c, str) for c in capabilities):
        raise _Bad(f"target.compute_capabilities must be strings such as '8.7', got {_short(capabilities)}")
    components = _of(data, "components", m, dict)
    return cls(
        format=data["format"], toolkit_version=_of(data, "toolkit_version", m, str),
        created=_of(data, "created", m, str), machine=_of(data, "machine", m, dict), model=model, recipe=recipe,
        backend=BackendEntry(_of(backend, "name", "backend", str), _of(backend, "version", "backend", str, True),
                             bool(_of(backend, "engines_built", "backend", bool, True))),
        target=TargetEntry(_of(target, "name", "target", str), _of(target, "device", "target", str),
                           tuple(capabilities), _of(target, "hardware_compatibility", "target", str, True) or "none",
                           bool(_of(target, "version_compatible", "target", bool, True))),
        batch=_int(data, "batch", m, 1, MAX_BATCH),
        state=StateEntry(_file(state, "file", "state"), _sha(state, "sha256", "state"),
                         _of(state, "tensors", "state", dict, True) or {}),
        components={name: component_from_dict(entry, f"components.{name}") for name, entry in components.items()},
        quantization=_of(data, "quantization", m, dict, True),
    )


TIMING_CACHE = "timing.cache"


def model_identity(model: dict[str, Any], state_tensors: dict[str, Any]) -> str:
    """What a stream's state belongs to: the weights (a checkpoint's sha256, or a preset and its
    seed), the model's config and the state contract (names, shapes, dtypes). A snapshot restores
    into any build with the same identity, whatever its backend, precision, batch or GPU."""
    weights = model.get("sha256") or f"preset {model.get('preset')} seed {model.get('seed')}"
    contract = {n: [list(t.get("shape", [])), t.get("dtype")] for n, t in sorted(state_tensors.items())}
    text = json.dumps({"weights": weights, "config_hash": model.get("config_hash"), "state": contract}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def build_files(data: Any) -> set[str] | None:
    """The files a build says it wrote (from its ``manifest.json``, parsed), or None when ``data``
    is not a manifest of ours: only these may a rebuild replace; anything else in the folder is
    somebody else's."""
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("mirasol-engines/"):
        return None
    files = {MANIFEST, TIMING_CACHE}
    state = data.get("state")
    if isinstance(state, dict) and isinstance(state.get("file"), str):
        files.add(state["file"])
    components = data.get("components")
    for entry in components.values() if isinstance(components, dict) else ():
        if not isinstance(entry, dict):
            continue
        files.update(f for f in (entry.get("onnx"), entry.get("engine")) if isinstance(f, str))
        for ref in (entry.get("onnx_data"), entry.get("engine_data")):
            if isinstance(ref, dict) and isinstance(ref.get("file"), str):
                files.add(ref["file"])
    return files


def load_manifest(engine_dir: str | Path) -> Manifest:
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise ManifestError(f"{engine_dir}: no such engine directory (build one with mirasol-build)")
    path = engine_dir / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {engine_dir} is not a finished build")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_dict(data, str(path))


def verify_file(engine_dir: Path, file: str, expected_sha256: str, what: str) -> Path:
    """``file`` of the engine folder, checked: inside it (no link out), present, and of its sha256."""
    path = engine_dir / file
    root, real = engine_dir.resolve(), path.resolve()
    if PurePosixPath(file).is_absolute() or not real.is_relative_to(root):
        raise ManifestError(f"{path}: {what} listed in the manifest is outside the engine folder {engine_dir} "
                            "(absolute paths, '..' and links out of it are refused)")
    if not path.is_file():
        raise ManifestError(f"{path}: {what} listed in the manifest is missing")
    found = sha256_file(path)
    if found != expected_sha256:
        raise ManifestError(
            f"{path}: {what} sha256 mismatch: manifest expects {expected_sha256[:16]}…, found {found[:16]}… "
            "(file changed or replaced since the build)"
        )
    return path
