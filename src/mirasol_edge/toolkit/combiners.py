"""Combiners: fuse a chunk's video and audio tokens into ``m`` compact latents.

Both take ``(tokens [B, N, Dc], memory [B, M, Dc] | None)`` and return
``(latents [B, m, Dc], memory')``. Only the TTM Combiner has a memory; the
Transformer Combiner passes ``None`` through.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasol_edge.runtime.config import MirasolConfig

from .layers import Encoder


class TransformerCombiner(nn.Module):
    """Transformer over the chunk's tokens followed by ``m`` learned queries; keep the last ``m`` outputs."""

    has_memory = False

    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        self.m = cfg.latents_per_chunk
        self.queries = nn.Parameter(torch.randn(1, self.m, cfg.combiner_width) * 0.02)
        self.encoder = Encoder(cfg.combiner_width, cfg.combiner_depth, cfg.combiner_heads, cfg.mlp_ratio)

    def forward(self, tokens: Tensor, memory: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = torch.cat([tokens, self.queries.expand(tokens.shape[0], -1, -1)], dim=1)
        return self.encoder(x)[:, -self.m :], None


class TokenSummarizer(nn.Module):
    """TokenLearner-style summary: ``k`` softmax-weighted averages over the input tokens."""

    def __init__(self, width: int, k: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.score = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, k))

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.score(self.norm(x)).float(), dim=1).to(x.dtype)  # [B, N, k]
        return weights.transpose(1, 2) @ x  # [B, k, D]


class TTMCombiner(nn.Module):
    """Token Turing Machine (Ryoo et al. 2023): read from a fixed-size memory, process, write back.

    read:    m tokens summarised from [memory, inputs]
    process: transformer over the m read tokens -> the chunk's latents
    write:   M tokens summarised from [memory, latents, inputs] -> the next memory
    """

    has_memory = True

    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        width = cfg.combiner_width
        self.initial_memory = nn.Parameter(torch.randn(1, cfg.ttm_memory_size, width) * 0.02)
        # Tell memory tokens from chunk tokens, so read and write can weigh them apart.
        self.memory_tag = nn.Parameter(torch.zeros(1, 1, width))
        self.read = TokenSummarizer(width, cfg.latents_per_chunk)
        self.process = Encoder(width, cfg.combiner_depth, cfg.combiner_heads, cfg.mlp_ratio)
        self.write = TokenSummarizer(width, cfg.ttm_memory_size)

    def forward(self, tokens: Tensor, memory: Tensor | None) -> tuple[Tensor, Tensor]:
        assert memory is not None, "the TTM Combiner needs its memory"
        tagged = memory + self.memory_tag
        latents = self.process(self.read(torch.cat([tagged, tokens], dim=1)))
        new_memory = self.write(torch.cat([tagged, latents, tokens], dim=1))
        return latents, new_memory


def build_combiner(cfg: MirasolConfig) -> nn.Module:
    return TTMCombiner(cfg) if cfg.combiner == "ttm" else TransformerCombiner(cfg)
