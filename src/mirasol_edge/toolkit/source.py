"""Where a build's weights come from: a checkpoint or a preset's random init, whole or part by part.

A small model is loaded whole, as training and the runtime load it. A model too big to hold
twice (``mirasol3b``: 3B parameters, 12 GB in fp32) starts as a skeleton on PyTorch's meta
device, and each build step materializes only the part it exports (the AR model alone is
2B parameters), then lets it go. Component -> part::

    chunk_encoder -> model.chunk_encoder      ar_step -> model.ar
    text_prefill  -> model.text               text_decode -> model.text
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.files import sha256_file

from .autoregressive import AutoregressiveModel
from .model import ChunkEncoder, Mirasol
from .summary import meta_model, on_meta
from .text import TextDecoder
from .weights import check_checkpoint_tensors, read_config

PARTS = {"chunk_encoder": ChunkEncoder, "ar": AutoregressiveModel, "text": TextDecoder}
COMPONENT_PARTS = {"chunk_encoder": "chunk_encoder", "ar_step": "ar", "text_prefill": "text", "text_decode": "text",
                   "text_score": "text"}
# Above this many fp32 bytes a model is built part by part.
WHOLE_MODEL_BYTES = 2 << 30


def fp32_bytes(module: nn.Module) -> int:
    return sum(p.numel() * 4 for p in module.parameters())


@dataclass
class ModelSource:
    """``model`` is the Mirasol; in part-by-part mode its parts not yet asked for sit on meta."""

    model: Mirasol
    description: dict  # {"checkpoint": path, "sha256": ...} or {"preset": name, "seed": n}
    weights_hash: str
    by_part: bool = False
    checkpoint: Path | None = None
    seed: int = 0
    _real: set[str] = field(default_factory=set)

    @property
    def cfg(self) -> MirasolConfig:
        return self.model.cfg

    @property
    def checkpoint_path(self) -> str | None:
        """The trained weights' file; None for a preset's random init."""
        return self.description.get("checkpoint")

    def part_bytes(self, part: str) -> int:
        return fp32_bytes(getattr(self.model, part))

    def materialize(self, component: str) -> Mirasol:
        """The model with ``component``'s part real (fp32, CPU); in part-by-part mode every other
        part goes back to meta first, so only one part is ever in memory."""
        part = COMPONENT_PARTS[component]
        if not self.by_part or part in self._real:
            return self.model
        for other in list(self._real):
            self.release(other)
        setattr(self.model, part, self._load_part(part))
        self._real.add(part)
        return self.model

    def release(self, part: str) -> None:
        """Give a part's memory back (part-by-part mode only; a whole model stays whole)."""
        if self.by_part and part in self._real:
            setattr(self.model, part, on_meta(PARTS[part], self.cfg))
            self._real.discard(part)

    def release_all(self) -> None:
        for part in list(self._real):
            self.release(part)

    def whole(self) -> Mirasol:
        """Every part real (the PyTorch reference backend needs them all)."""
        if self.by_part:
            for part in PARTS:
                if part not in self._real:
                    setattr(self.model, part, self._load_part(part))
                    self._real.add(part)
        return self.model

    def _load_part(self, part: str) -> nn.Module:
        if self.checkpoint is None:
            # Each part has its own seed, so any part can be rebuilt alone with the same weights.
            torch.manual_seed(self.seed * 1000 + list(PARTS).index(part) + 1)
            return PARTS[part](self.cfg).eval()
        module = PARTS[part](self.cfg).eval()
        prefix = f"{part}."
        with safe_open(str(self.checkpoint), framework="pt") as f:
            tensors = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        module.load_state_dict(tensors)  # names and shapes were checked in load_source
        return module


def load_source(checkpoint: str | Path | None, preset: str | None, seed: int = 0) -> ModelSource:
    if (checkpoint is None) == (preset is None):
        raise UsageError("give exactly one of a checkpoint or a preset")
    cfg = read_config(Path(checkpoint)) if checkpoint is not None else MirasolConfig.preset(preset)
    skeleton = meta_model(cfg)
    by_part = fp32_bytes(skeleton) > WHOLE_MODEL_BYTES
    if checkpoint is not None:
        path = Path(checkpoint)
        digest = sha256_file(path)
        description = {"checkpoint": str(path), "sha256": digest}
        if not by_part:
            return ModelSource(Mirasol.load(path), description, digest)
        check_checkpoint_tensors(path, skeleton)
        return ModelSource(skeleton, description | {"loaded": "part by part"}, digest, True, path)
    description = {"preset": preset, "seed": seed, "weights": "random init"}
    if not by_part:
        torch.manual_seed(seed)
        return ModelSource(Mirasol(cfg).eval(), description, f"preset:{preset}:{seed}")
    return ModelSource(skeleton, description | {"weights": "random init, seeded per part"},
                       f"preset:{preset}:{seed}:per-part", True, seed=seed)
