"""Backends behind one small interface: TensorRT / TensorRT-RTX, ONNX Runtime, PyTorch (the reference)."""

from __future__ import annotations

from ..engine_dir import EngineDir
from .base import ENGINE_BACKENDS, NAMES, TENSORRT, Backend, BackendError, Runner
from .options import checked_options


def open_engines(path, backend: str = "auto") -> EngineDir:
    """Open and verify the files ``backend`` will read: its engines, or the ONNX graphs."""
    if backend not in NAMES:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(NAMES)}")
    engines = EngineDir.open(path, use_onnx=False) if backend in ("auto", *TENSORRT) else None
    if engines is None:
        probe = EngineDir.open(path, use_onnx=True)
        # ONNX Runtime runs its own optimized engines when the build made them, else the plain ONNX.
        native = backend == "onnxruntime" and probe.backend == "onnxruntime" and probe.manifest.backend.engines_built
        engines = EngineDir.open(path) if native else probe
    return engines


def split_backend(spec: str, default: str) -> tuple[str, str]:
    """``DIR@backend`` runs DIR on that backend (``engines/cpu@torch``); plain ``DIR`` on ``default``."""
    path, _, backend = spec.rpartition("@")
    if path and backend in NAMES:
        return path, backend
    return spec, default


# The toolkit's PyTorch reference, where no entry point names it (a checkout on PYTHONPATH has no
# dist-info): the same object pyproject.toml's entry point gives.
REFERENCE = "mirasol_edge.toolkit.reference:TorchBackend"


def _plugins() -> dict:
    """Backends other packages provide (the toolkit's PyTorch reference: ``torch``), found by
    entry point so the runtime imports none of them."""
    from importlib.metadata import EntryPoint, entry_points

    found = {ep.name: ep for ep in entry_points(group="mirasol_edge.backends")}
    found.setdefault("torch", EntryPoint("torch", REFERENCE, "mirasol_edge.backends"))
    return found


def create_backend(engines: EngineDir, backend: str = "auto", device: str = "auto", **options) -> Backend:
    """The backend ``backend`` for ``engines``; ``options`` are checked against what it takes
    (``backends.options``) before anything loads."""
    name = engines.backend if backend == "auto" else backend
    if name in TENSORRT:
        if name != engines.backend:
            raise BackendError(f"{engines.path}: built for {engines.backend}; {name} cannot run these engines")
        options = checked_options(name, options)
        from .trt_backend import TrtBackend

        return TrtBackend(engines, device, **options)
    if name == "onnxruntime":
        options = checked_options(name, options)
        from .ort_backend import OrtBackend

        return OrtBackend(engines, device, **options)
    plugin = _plugins().get(name)
    if plugin is None:
        raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")
    options = checked_options(name, options)
    try:  # the reference's module loads without torch; torch is imported when it is created
        return plugin.load()(engines, device, **options)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} cannot load here ({exc}); for 'torch' install "
                           "mirasol-edge[build]") from None


__all__ = ["ENGINE_BACKENDS", "NAMES", "TENSORRT", "Backend", "BackendError", "Runner",
           "create_backend", "open_engines", "split_backend"]
