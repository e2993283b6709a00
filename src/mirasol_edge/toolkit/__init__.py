"""Build side of mirasol-edge: the Mirasol model, its weights, export and engine builds (needs torch)."""

from mirasol_edge.runtime.config import PRESETS, MirasolConfig

from .model import Mirasol, ShapeError
from .weights import CheckpointError

__all__ = ["PRESETS", "CheckpointError", "Mirasol", "MirasolConfig", "ShapeError"]
