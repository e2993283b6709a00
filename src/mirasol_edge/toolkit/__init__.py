"""Build side of mirasol-edge: the Mirasol model, its weights, export and engine builds.

The model, its weights and the export need torch; the engine step (``toolkit.engines``,
``toolkit.recipe``: ``mirasol-build engine BUNDLE`` on a Jetson) does not. So the names below
are imported on first use (PEP 562), and importing a torch-free submodule never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mirasol_edge.runtime.config import PRESETS, MirasolConfig

if TYPE_CHECKING:
    from .model import Mirasol, ShapeError
    from .weights import CheckpointError

_LAZY = {"Mirasol": ".model", "ShapeError": ".model", "CheckpointError": ".weights"}

__all__ = ["PRESETS", "CheckpointError", "Mirasol", "MirasolConfig", "ShapeError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later look-ups don't come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
