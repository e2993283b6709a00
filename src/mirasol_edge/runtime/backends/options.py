"""What each backend can be told, typed and checked when the backend is created: an option a
backend does not take is an error naming the option and the backend, never silently dropped."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import BackendError


@dataclass(frozen=True)
class TrtOptions:
    cuda_graphs: bool = True  # capture each runner's work once and replay it
    runtime_cache: str | Path | None = None  # TensorRT-RTX's JIT kernels on disk (default: ~/.cache)

    def check(self, backend: str) -> None:
        _need(isinstance(self.cuda_graphs, bool), backend, "cuda_graphs", "True or False", self.cuda_graphs)
        _need(self.runtime_cache is None or isinstance(self.runtime_cache, (str, Path)), backend, "runtime_cache",
              "a file path", self.runtime_cache)


@dataclass(frozen=True)
class OrtOptions:
    threads: int = 0  # intra-op threads; 0: ONNX Runtime's default (every core)
    # Off: each of the five sessions has its own thread pool, and a pool left spinning after its run
    # takes the cores from the next session's (bench/watch.py on 2 cores: 8 watches' push 40 -> 20 ms).
    spinning: bool = False

    def check(self, backend: str) -> None:
        ok = isinstance(self.threads, int) and not isinstance(self.threads, bool) and self.threads >= 0
        _need(ok, backend, "threads", "a whole number >= 0", self.threads)
        _need(isinstance(self.spinning, bool), backend, "spinning", "True or False", self.spinning)


@dataclass(frozen=True)
class TorchOptions:
    model: Any = None  # an already loaded ``Mirasol`` (else the checkpoint the manifest names)
    precision: str = "fp32"  # or fp16 under CUDA autocast

    def check(self, backend: str) -> None:
        _need(self.precision in ("fp32", "fp16"), backend, "precision", "'fp32' or 'fp16'", self.precision)


OPTIONS = {"tensorrt": TrtOptions, "tensorrt-rtx": TrtOptions, "onnxruntime": OrtOptions, "torch": TorchOptions}


def checked_options(backend: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``backend``'s options; returns every option, defaults filled in."""
    kind = OPTIONS.get(backend)
    if kind is None:  # another package's backend: it checks its own
        return dict(given)
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BackendError(f"backend {backend!r} has no option {unknown[0]!r}; it takes {', '.join(names)}")
    options = kind(**given)
    options.check(backend)
    return {name: getattr(options, name) for name in names}


def _need(ok: bool, backend: str, option: str, wanted: str, value: Any) -> None:
    if not ok:
        raise BackendError(f"backend {backend!r}: option {option!r} must be {wanted}, not {value!r}")
