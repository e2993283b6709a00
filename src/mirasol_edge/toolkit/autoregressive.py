"""The audio-video autoregressive model: block-causal over chunks, windowed to W chunks.

A chunk's ``m`` tokens see themselves and the ``W - 1`` chunks before it. Chunk order
enters only through an ALiBi bias on the chunk distance (plus a learned position inside
the chunk), so a step's cost and numbers never depend on how long the stream has run.

Streaming keeps a ring buffer of ``W`` slots of ``m`` tokens: chunk ``p`` is written to
slot ``p % W``, and the age of slot ``s`` is ``(p - s) mod W``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasol_edge.runtime.config import MirasolConfig

from .layers import NEG_INF, Block


def alibi_slopes(heads: int) -> Tensor:
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])


class AutoregressiveModel(nn.Module):
    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        self.m, self.window = cfg.latents_per_chunk, cfg.window_chunks
        width = cfg.ar_width
        self.input = nn.Linear(cfg.combiner_width, width)
        self.intra_position = nn.Parameter(torch.randn(1, self.m, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, cfg.ar_heads, cfg.mlp_ratio) for _ in range(cfg.ar_depth))
        self.norm = nn.LayerNorm(width)
        # Predicts the next chunk's Combiner latents (the paper's latent loss).
        self.head = nn.Linear(width, cfg.combiner_width)
        self.register_buffer("slopes", alibi_slopes(cfg.ar_heads).view(1, -1, 1, 1), persistent=False)

    def _distance_bias(self, distance: Tensor, allowed: Tensor) -> Tensor:
        """distance/allowed [B, Nq, Nk] -> additive bias [B, H, Nq, Nk]."""
        bias = -self.slopes * distance.unsqueeze(1).to(self.slopes.dtype)
        return torch.where(allowed.unsqueeze(1), bias, torch.full_like(bias, NEG_INF))

    def forward(self, latents: Tensor) -> Tensor:
        """Whole clip at once: latents [B, C, m, Dc] -> outputs [B, C, m, ar_width]."""
        b, c, m, _ = latents.shape
        x = (self.input(latents) + self.intra_position.unsqueeze(1)).reshape(b, c * m, -1)
        chunk = torch.arange(c, device=latents.device).repeat_interleave(m)
        distance = (chunk[:, None] - chunk[None, :]).unsqueeze(0)
        bias = self._distance_bias(distance, (distance >= 0) & (distance < self.window))
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x).reshape(b, c, m, -1)

    def step(
        self, latents: Tensor, pos: Tensor, keys: list[Tensor], values: list[Tensor], context: Tensor
    ) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor, Tensor]:
        """One chunk against the ring buffer.

        latents [B, m, Dc]; pos [B] int64 (chunks seen so far); keys/values per layer
        [B, H, W*m, head_dim]; context [B, W*m, ar_width] (ring of past outputs).
        Returns (outputs [B, m, ar_width], keys', values', context', pos + 1).
        """
        slots = self.window
        token_slot = torch.arange(slots * self.m, device=latents.device) // self.m  # [W*m]
        slot = torch.remainder(pos, slots)  # [B]
        write = token_slot[None, :] == slot[:, None]  # [B, W*m]
        later = (token_slot[None, :] > slot[:, None]).to(pos.dtype)
        age = slot[:, None] - token_slot[None, :] + slots * later  # (slot - s) mod W, without Mod
        bias = self._distance_bias(age.unsqueeze(1), (age <= pos[:, None]).unsqueeze(1))

        x = self.input(latents) + self.intra_position
        new_keys: list[Tensor] = []
        new_values: list[Tensor] = []

        def write_slot(past: Tensor, new: Tensor) -> Tensor:
            return torch.where(write[:, None, :, None], new.repeat(1, 1, slots, 1), past)

        for i, block in enumerate(self.blocks):
            def update(k: Tensor, v: Tensor, i: int = i) -> tuple[Tensor, Tensor]:
                new_keys.append(write_slot(keys[i], k))
                new_values.append(write_slot(values[i], v))
                return new_keys[-1], new_values[-1]

            x = block(x, bias, update_kv=update)
        out = self.norm(x)
        context = torch.where(write[:, :, None], out.repeat(1, slots, 1), context)
        return out, new_keys, new_values, context, pos + 1

    @staticmethod
    def context_ages(pos: Tensor, window: int, m: int) -> tuple[Tensor, Tensor]:
        """Age in chunks of each context slot after ``pos`` chunks, and whether it holds one."""
        token_slot = torch.arange(window * m, device=pos.device) // m
        latest = torch.remainder(pos - 1, window)
        age = torch.remainder(latest[:, None] - token_slot[None, :], window)
        return age, age < pos[:, None]
