"""``manifest.json``: one typed schema that the build writes and every reader reads.

``format`` is the schema's version. A manifest of another version is refused with a message
naming both; a manifest that lacks a field names the field. Measurements the build reports
(export and build times, parity, quantization reports, peak memory) travel in each
component's ``report`` table and the top-level ``quantization``; readers that check or run
engines use only the typed fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirasol_edge.errors import MirasolError

from .files import sha256_file, write_json_atomic

FORMAT = "mirasol-engines/1"
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
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # a str is a named dynamic axis


@dataclass(frozen=True)
class Component:
    onnx: str
    onnx_sha256: str
    precision: str
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
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
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: {exc} (format {FORMAT})") from None

    def write(self, engine_dir: Path) -> None:
        write_json_atomic(Path(engine_dir) / MANIFEST, self.to_dict())


def _need(data: dict, key: str, where: str) -> Any:
    if key not in data:
        raise KeyError(f"no {key!r} entry in {where}")
    return data[key]


def file_ref(data: Any) -> FileRef | None:
    return None if not data else FileRef(data["file"], data["sha256"], data.get("bytes"))


def _tensors(entries: list[dict]) -> tuple[TensorEntry, ...]:
    return tuple(TensorEntry(e["name"], e["dtype"], tuple(e["shape"])) for e in entries)


def component_from_dict(data: dict, where: str = "component") -> Component:
    typed = {f.name for f in dataclasses.fields(Component)} - {"report"}
    return Component(
        onnx=_need(data, "onnx", where), onnx_sha256=_need(data, "onnx_sha256", where),
        precision=_need(data, "precision", where), inputs=_tensors(_need(data, "inputs", where)),
        outputs=_tensors(_need(data, "outputs", where)), profiles=_need(data, "profiles", where),
        build_key=_need(data, "build_key", where), engine=data.get("engine"), engine_sha256=data.get("engine_sha256"),
        onnx_data=file_ref(data.get("onnx_data")), engine_data=file_ref(data.get("engine_data")),
        report={k: v for k, v in data.items() if k not in typed})


def _parse(cls, data: dict, where: str) -> Manifest:
    backend, target, state = (_need(data, k, "the manifest") for k in ("backend", "target", "state"))
    components = _need(data, "components", "the manifest")
    return cls(
        format=data["format"], toolkit_version=_need(data, "toolkit_version", "the manifest"),
        created=_need(data, "created", "the manifest"), machine=_need(data, "machine", "the manifest"),
        model=_need(data, "model", "the manifest"), recipe=_need(data, "recipe", "the manifest"),
        backend=BackendEntry(_need(backend, "name", "backend"), backend.get("version"),
                             bool(backend.get("engines_built"))),
        target=TargetEntry(_need(target, "name", "target"), _need(target, "device", "target"),
                           tuple(_need(target, "compute_capabilities", "target")),
                           target.get("hardware_compatibility", "none"), bool(target.get("version_compatible"))),
        batch=int(_need(data, "batch", "the manifest")),
        state=StateEntry(_need(state, "file", "state"), _need(state, "sha256", "state"), state.get("tensors", {})),
        components={name: component_from_dict(entry, f"components.{name}") for name, entry in components.items()},
        quantization=data.get("quantization"),
    )


TIMING_CACHE = "timing.cache"


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
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_dict(data, str(path))


def verify_file(engine_dir: Path, file: str, expected_sha256: str, what: str) -> Path:
    path = engine_dir / file
    if not path.is_file():
        raise ManifestError(f"{path}: {what} listed in the manifest is missing")
    found = sha256_file(path)
    if found != expected_sha256:
        raise ManifestError(
            f"{path}: {what} sha256 mismatch: manifest expects {expected_sha256[:16]}…, found {found[:16]}… "
            "(file changed or replaced since the build)"
        )
    return path
