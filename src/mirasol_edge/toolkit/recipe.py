"""Build recipes: one TOML per target, validated into frozen dataclasses.

Every error names the file and the key (``recipes/orin-nano.toml: precision.ar_step``).
A precision the target cannot run is refused here, before any work starts.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6's Python 3.10
    import tomli as tomllib

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime.backends.base import ENGINE_BACKENDS
from mirasol_edge.runtime.components import COMPONENTS  # one list for the build and the runtime
from mirasol_edge.runtime.manifest import QUANTIZED

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int4", "auto")
# "auto": the build measures fp32, int8 and int4 here and keeps the fastest that passes the gates.
AUTO_CANDIDATES = ("fp32", "int8", "int4")
CALIBRATED = (*QUANTIZED, "auto")  # need calibration data
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
# What TensorRT-RTX's ComputeCapability enum offers for ahead-of-time builds (tensorrt_rtx 1.7).
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # package data: ships in the wheel
DEFAULTS = RECIPES_DIR / "defaults.toml"


class RecipeError(MirasolError, ValueError):
    """A recipe file is missing, malformed, or asks for something its target can't do."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    device: str  # "cpu" or "cuda"
    compute_capabilities: tuple[str, ...]  # e.g. ("8.7",); empty for the CPU
    has_fp8: bool
    dla_cores: int  # DLA engines on the SoC (AGX Orin, Orin NX: 2); 0 elsewhere


@dataclass(frozen=True)
class Precision:
    chunk_encoder: str
    ar_step: str
    text_prefill: str
    text_decode: str
    # Module-name prefixes whose Linear layers stay fp32 under fp16/bf16 (e.g. "text.blocks.0").
    keep_fp32: tuple[str, ...]
    # Quantized components: layer group -> "fp32" (never quantized) or the component's quantized
    # precision (never kept in fp32 by the sensitivity pass). Groups: "ar.blocks.3", "text.logits".
    pin: dict[str, str]

    def of(self, component: str) -> str:
        # Scoring watches is the prefill's computation on more rows: it takes the prefill's precision.
        return getattr(self, "text_prefill" if component == "text_score" else component)


@dataclass(frozen=True)
class Chunking:
    # 0 means "as the checkpoint's config says"; a number must agree with it.
    frames_per_chunk: int
    image_size: int
    window_chunks: int


@dataclass(frozen=True)
class Text:
    max_question_tokens: int
    max_answer_tokens: int


@dataclass(frozen=True)
class Calibration:
    media: str  # "synthetic" (the demo generator's clips) or a directory of clips
    clips: int  # clips to stream; the last held_out fraction is kept for the reports
    held_out: float
    max_samples: int  # per component, spread evenly over the clips
    min_samples: int  # fewer fit samples than this is an error
    method: str  # int8 activation ranges: MinMax, Percentile or Entropy (fp8 uses Distribution)
    eval_clips: int  # demo-task clips answered through the runtime, fp32 against quantized


@dataclass(frozen=True)
class Build:
    batch: int  # streams served together
    workspace_mib: int
    max_host_memory_mib: int  # refuse exports expected to exceed this
    optimization_level: int  # TensorRT builder_optimization_level, 0..5
    hardware_compatibility: str
    version_compatible: bool
    dla_core: int  # -1: no DLA
    timing_cache: bool


@dataclass(frozen=True)
class Accuracy:
    max_rel_error: float  # ONNX vs PyTorch: max |diff| / max |reference|, per component
    min_cosine: float
    min_exact_match: float  # demo-task exact match, quantized / fp32 (through the runtime)
    min_quantized_cosine: float  # per quantized component, against fp32 on held-out calibration data


@dataclass(frozen=True)
class Recipe:
    target: Target
    precision: Precision
    chunking: Chunking
    text: Text
    build: Build
    accuracy: Accuracy
    calibration: Calibration
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path")
        return data


SECTION_TYPES = {"target": Target, "precision": Precision, "chunking": Chunking, "text": Text,
                 "build": Build, "accuracy": Accuracy, "calibration": Calibration}
CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")
# Which component quantizes a pinned group: the group's first name.
PIN_PARTS = {"chunk_encoder": ("chunk_encoder",), "ar": ("ar_step",), "text": ("text_prefill", "text_decode", "text_score")}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = get_origin(kind)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {value!r}")
        key_kind, value_kind = get_args(kind)
        return {_coerce(k, key_kind, where): _coerce(v, value_kind, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        inner = get_args(kind)[0]
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise RecipeError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a table")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        raise RecipeError(f"{where}.{missing[0]}: missing key")
    return cls(**{n: _coerce(data[n], hints[n], f"{where}.{n}") for n in names})


def parse_recipe(data: dict[str, Any], source: str) -> Recipe:
    unknown = sorted(set(data) - set(SECTION_TYPES))
    if unknown:
        raise RecipeError(f"{source}: unknown section [{unknown[0]}] (known: {', '.join(SECTION_TYPES)})")
    sections = {}
    for name, cls in SECTION_TYPES.items():
        if name not in data:
            raise RecipeError(f"{source}: missing section [{name}]")
        sections[name] = _section(cls, data[name], f"{source}: {name}")
    recipe = Recipe(**sections, path=source)
    check_recipe(recipe)
    return recipe


def _cc(value: str) -> tuple[int, int]:
    if value == "current":
        return (99, 0)  # the build machine's GPU: whatever it is, it runs what it builds
    major, minor = value.split(".")
    return int(major), int(minor)


def precision_refusal(recipe: Recipe, precision: str) -> str | None:
    """Why this target can't run ``precision``, or None if it can."""
    t = recipe.target
    ccs = [_cc(c) for c in t.compute_capabilities]
    if precision == "fp8" and (t.device == "cpu" or not t.has_fp8):
        return f"target {t.name!r} has no FP8 (FP8 needs Hopper, Ada, Blackwell or Thor tensor cores)"
    if precision == "fp8" and any(cc < (8, 9) for cc in ccs):
        old = ", ".join(c for c in t.compute_capabilities if _cc(c) < (8, 9))
        return f"compute capability {old} has no FP8 (needs 8.9 or newer); drop it from target.compute_capabilities"
    if precision == "bf16" and (t.device == "cpu" or any(cc < (8, 0) for cc in ccs)):
        return f"target {t.name!r} has no BF16 (needs compute capability 8.0 or newer)"
    if precision == "fp16" and t.device == "cpu":
        return "ONNX Runtime on the CPU has no fast FP16 kernels; use fp32 or int8"
    if precision == "auto" and (t.backend != "onnxruntime" or t.device != "cpu"):
        return "'auto' times the candidates on the machine that builds: ONNX Runtime CPU builds only"
    return None


def check_recipe(recipe: Recipe) -> None:
    src = recipe.path
    t, b = recipe.target, recipe.build

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise RecipeError(f"{src}: {key}: {why}")

    need(t.backend in ENGINE_BACKENDS, "target.backend", f"must be one of {ENGINE_BACKENDS}, got {t.backend!r}")
    need(t.device in ("cpu", "cuda"), "target.device", f"must be 'cpu' or 'cuda', got {t.device!r}")
    need(t.backend == "onnxruntime" or t.device == "cuda", "target.device",
         f"backend {t.backend!r} needs device 'cuda'")
    # TensorRT-RTX takes CURRENT only alone, at index 0 of its list of targets.
    need("current" not in t.compute_capabilities or list(t.compute_capabilities) == ["current"],
         "target.compute_capabilities", f"'current' (the GPU the build runs on) must stand alone, not beside "
         f"others: {list(t.compute_capabilities)}")
    for i, cc in enumerate(t.compute_capabilities):
        if cc == "current" and t.backend == "tensorrt-rtx":
            continue  # resolved to the build machine's GPU when the engines are built
        try:
            _cc(cc)
        except ValueError:
            need(False, f"target.compute_capabilities[{i}]", f"expected 'major.minor', got {cc!r}")
    for component in COMPONENTS:
        p = recipe.precision.of(component)
        need(p in PRECISIONS, f"precision.{component}", f"must be one of {PRECISIONS}, got {p!r}")
        refusal = precision_refusal(recipe, p)
        need(refusal is None, f"precision.{component}", f"{p!r} refused: {refusal}")
    need(b.batch >= 1, "build.batch", "must be at least 1")
    need(b.workspace_mib > 0, "build.workspace_mib", "must be positive")
    need(b.max_host_memory_mib > 0, "build.max_host_memory_mib", "must be positive")
    need(0 <= b.optimization_level <= 5, "build.optimization_level", f"must be 0..5, got {b.optimization_level}")
    need(b.hardware_compatibility in HARDWARE_COMPATIBILITY, "build.hardware_compatibility",
         f"must be one of {HARDWARE_COMPATIBILITY}, got {b.hardware_compatibility!r}")
    need(b.dla_core < t.dla_cores, "build.dla_core",
         f"target {t.name!r} has {t.dla_cores} DLA cores, so dla_core must be -1"
         + (f" or 0..{t.dla_cores - 1}" if t.dla_cores else ""))
    need(b.dla_core < 0 or t.backend == "tensorrt", "build.dla_core", "DLA needs the full TensorRT backend")
    need(not (b.version_compatible and t.backend == "tensorrt-rtx"), "build.version_compatible",
         "TensorRT-RTX engines are tied to the release that built them; only full TensorRT has version "
         "compatibility (set false, and rebuild after upgrading TensorRT-RTX)")
    if t.backend == "tensorrt-rtx":
        for i, cc in enumerate(t.compute_capabilities):
            need(cc in RTX_COMPUTE_CAPABILITIES or cc == "current", f"target.compute_capabilities[{i}]",
                 f"TensorRT-RTX builds for {', '.join(RTX_COMPUTE_CAPABILITIES)} or 'current' (the GPU it is "
                 f"built on), not {cc!r} (Hopper 9.0 and Jetson 8.7 take full TensorRT: the h100 or orin recipes)")
    need(b.hardware_compatibility == "none" or t.backend == "tensorrt", "build.hardware_compatibility",
         "only full TensorRT has hardware compatibility levels (TensorRT-RTX targets compute_capabilities)")
    need(b.hardware_compatibility != "ampere_plus" or all(_cc(c) >= (8, 0) for c in t.compute_capabilities),
         "build.hardware_compatibility", "'ampere_plus' contradicts a compute capability below 8.0")
    need(b.hardware_compatibility == "none" or not t.name.startswith(("agx-orin", "orin", "thor")),
         "build.hardware_compatibility", "Jetson engines are built on the device; compatibility levels are for dGPUs")
    need(recipe.text.max_question_tokens >= 1, "text.max_question_tokens", "must be at least 1")
    need(recipe.text.max_answer_tokens >= 1, "text.max_answer_tokens", "must be at least 1")
    for key in ("frames_per_chunk", "image_size", "window_chunks"):
        need(getattr(recipe.chunking, key) >= 0, f"chunking.{key}", "must be 0 (from the model) or positive")
    for group, pinned in recipe.precision.pin.items():
        where = f"precision.pin.{group}"
        need(pinned in PRECISIONS and pinned != "auto", where,
             f"{pinned!r} is not a precision (one of {', '.join(p for p in PRECISIONS if p != 'auto')})")
        part = group.split(".")[0]
        need(part in PIN_PARTS, where, f"a layer group starts with {', '.join(PIN_PARTS)} (e.g. ar.blocks.0)")
        owners = {recipe.precision.of(c) for c in PIN_PARTS[part]}
        need(pinned == "fp32" or pinned in owners, where,
             f"{pinned!r}: the group is quantized to {' / '.join(sorted(owners))} by its component, "
             "so it can be pinned to that or to 'fp32'")
    c = recipe.calibration
    need(c.clips >= 2, "calibration.clips", "needs at least 2 clips (one to fit, one held out)")
    need(0 < c.held_out < 1, "calibration.held_out", "must be a fraction in (0, 1)")
    need(c.min_samples >= 1, "calibration.min_samples", "must be at least 1")
    need(c.max_samples >= c.min_samples, "calibration.max_samples", "must be at least calibration.min_samples")
    need(c.method in CALIBRATION_METHODS, "calibration.method",
         f"must be one of {', '.join(CALIBRATION_METHODS)}, got {c.method!r}")
    need(c.eval_clips >= 1, "calibration.eval_clips", "must be at least 1")
    need(0 < recipe.accuracy.min_quantized_cosine <= 1, "accuracy.min_quantized_cosine", "must be in (0, 1]")
    need(0 <= recipe.accuracy.min_exact_match <= 1, "accuracy.min_exact_match", "must be in [0, 1]")
    need(0 < recipe.accuracy.min_cosine <= 1, "accuracy.min_cosine", "must be in (0, 1]")
    need(recipe.accuracy.max_rel_error > 0, "accuracy.max_rel_error", "must be positive")


def resolve_path(name_or_path: str | Path) -> Path:
    """``cpu`` -> recipes/cpu.toml; a path is taken as it is."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.toml"
    return path


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml") if p != DEFAULTS)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None


def with_defaults(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The recipe's values over ``defaults.toml``'s: a target's file states only what differs."""
    merged = {section: dict(values) for section, values in _read_toml(DEFAULTS).items()}
    for section, values in data.items():
        if section in merged and not isinstance(values, dict):
            raise RecipeError(f"{source}: [{section}] must be a table")
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    return merged


def load_recipe(name_or_path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe over the defaults; ``overrides`` are ``section.key=value`` with TOML values
    (``build.batch=4``)."""
    path = resolve_path(name_or_path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe (bundled: {', '.join(bundled_recipes())})")
    data = with_defaults(_read_toml(path), str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot:
            raise RecipeError(f"override {item!r}: expected section.key=value")
        if section not in data or not isinstance(data[section], dict) or field not in data[section]:
            raise RecipeError(f"override {item!r}: a recipe has no key {key.strip()}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word is a string: precision.ar_step=fp16
        data[section][field] = value
    return parse_recipe(data, str(path))
