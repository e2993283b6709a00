"""One lazy TensorRT import for both flavours (as Polygraphy does).

Full TensorRT (``tensorrt``: Jetson/JetPack, datacenter) and TensorRT-RTX (``tensorrt_rtx``)
share the Python API. The backend name in a recipe or manifest picks the module.

Versions whose Python bindings were read for the calls this project makes (here, in
``toolkit.engines`` and in ``backends.trt_backend``): TensorRT 8.6.1, 10.3.0 (JetPack 6.1/6.2),
10.9, 11.1 (NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` at those tags) and TensorRT-RTX 1.7
(installed here). Where they differ, the callers branch on ``version`` or on the attribute.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mirasol_edge.errors import MirasolError, UsageError

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
PIP_NAMES = {"tensorrt": "tensorrt (from JetPack or NVIDIA's index)", "tensorrt-rtx": "tensorrt-rtx-cu13"}


class TensorRTMissing(MirasolError, ImportError):
    """The TensorRT flavour a recipe or engine needs is not installed here."""

    exit_code = 2


def lazy_import_trt(backend: str) -> ModuleType:
    if backend not in MODULES:
        raise UsageError(f"unknown TensorRT backend {backend!r}; expected one of {', '.join(MODULES)}")
    try:
        return importlib.import_module(MODULES[backend])
    except ImportError as exc:
        raise TensorRTMissing(
            f"backend {backend!r} needs the Python module {MODULES[backend]!r}: install {PIP_NAMES[backend]} ({exc})"
        ) from None


def version(trt: ModuleType) -> tuple[int, int]:
    """``(major, minor)`` of a TensorRT module (TensorRT-RTX counts its own 1.x releases)."""
    major, minor = (str(getattr(trt, "__version__", "0")).split(".") + ["0"])[:2]
    return int(major) if major.isdigit() else 0, int(minor) if minor.isdigit() else 0


def available(backend: str) -> bool:
    try:
        lazy_import_trt(backend)
        return True
    except TensorRTMissing:
        return False


def trt_logger(trt: ModuleType, messages: list[str]):
    """A logger that keeps warnings and errors so build failures can name the node."""

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if severity <= trt.ILogger.Severity.WARNING:
                messages.append(msg)

    return Collecting()
