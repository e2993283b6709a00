"""One lazy TensorRT import for both flavours (as Polygraphy does).

Full TensorRT (``tensorrt``: Jetson/JetPack, datacenter) and TensorRT-RTX (``tensorrt_rtx``)
share the Python API. The backend name in a recipe or manifest picks the module.
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
