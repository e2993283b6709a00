"""Backends behind one small interface: TensorRT / TensorRT-RTX, ONNX Runtime, PyTorch (the reference)."""

from __future__ import annotations

from ..engine_dir import EngineDir
from .base import Backend, BackendError, Runner

NAMES = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime", "torch")


def open_engines(path, backend: str = "auto") -> EngineDir:
    """Open and verify the files ``backend`` will read: its engines, or the ONNX graphs."""
    if backend not in NAMES:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(NAMES)}")
    engines = EngineDir.open(path, use_onnx=False) if backend in ("auto", "tensorrt", "tensorrt-rtx") else None
    if engines is None:
        probe = EngineDir.open(path, use_onnx=True)
        # ONNX Runtime runs its own optimized engines when the build made them, else the plain ONNX.
        native = backend == "onnxruntime" and probe.backend == "onnxruntime" and probe.manifest["backend"].get(
            "engines_built")
        engines = EngineDir.open(path) if native else probe
    return engines


def create_backend(engines: EngineDir, backend: str = "auto", device: str = "auto", **options) -> Backend:
    name = engines.backend if backend == "auto" else backend
    if name in ("tensorrt", "tensorrt-rtx"):
        if name != engines.backend:
            raise BackendError(f"{engines.path}: built for {engines.backend}; {name} cannot run these engines")
        from .trt_backend import TrtBackend

        return TrtBackend(engines, device)
    if name == "onnxruntime":
        from .ort_backend import OrtBackend

        return OrtBackend(engines, device, **options)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(engines, device, **options)
    raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")


__all__ = ["Backend", "BackendError", "Runner", "create_backend", "open_engines"]
