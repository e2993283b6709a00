"""The text decoder: a causal language model cross-attending to the audio-video context.

The context is the last ``W`` chunks of autoregressive outputs; each context token
gets an embedding of its age in chunks, so the decoder knows "first" from "last".
One learned null token is always present, so a question asked before any chunk
still has something to attend to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirasol_edge.runtime.config import MirasolConfig

from .layers import NEG_INF, Block

KV = tuple[Tensor, Tensor]


class TextDecoder(nn.Module):
    def __init__(self, cfg: MirasolConfig) -> None:
        super().__init__()
        width = cfg.text_width
        self.window = cfg.window_chunks
        self.embed = nn.Embedding(cfg.vocab_size, width)
        # Tied with the output projection: N(0, 1) rows would start with logits ~100 and a
        # saturated softmax that learns the answer prior and ignores the context.
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(cfg.max_text_tokens, width) * 0.02)
        self.context_proj = nn.Linear(cfg.ar_width, width)
        self.age = nn.Parameter(torch.randn(cfg.window_chunks, width) * 0.02)
        self.null = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(width, cfg.text_heads, cfg.mlp_ratio, cross_width=width) for _ in range(cfg.text_depth)
        )
        self.norm = nn.LayerNorm(width)

    def memory(self, context: Tensor, age: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """context [B, N, ar_width], age [B, N] int64, valid [B, N] bool
        -> memory [B, 1+N, text_width] and its cross-attention bias [B, 1, 1, 1+N]."""
        b = context.shape[0]
        age_embedding = nn.functional.embedding(age.clamp(0, self.window - 1), self.age)
        memory = torch.cat([self.null.expand(b, -1, -1), self.context_proj(context) + age_embedding], dim=1)
        valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        zeros = torch.zeros(valid.shape, dtype=memory.dtype, device=memory.device)
        bias = torch.where(valid, zeros, torch.full_like(zeros, NEG_INF))
        return memory, bias[:, None, None, :]

    def cross_kv(self, memory: Tensor) -> list[KV]:
        """Per-layer cross-attention keys/values, computed once per question."""
        return [block.cross.keys_values(memory) for block in self.blocks]

    def forward(
        self, tokens: Tensor, cross: list[KV], cross_bias: Tensor, past: list[KV] | None = None
    ) -> tuple[Tensor, list[KV]]:
        """tokens [B, L] after ``past`` (per layer [B, H, P, head_dim]) -> logits [B, L, V], presents."""
        hidden, presents = self.hidden(tokens, cross, cross_bias, past)
        return self.head(hidden), presents

    def head(self, hidden: Tensor) -> Tensor:
        return self.norm(hidden) @ self.embed.weight.T

    def hidden(
        self, tokens: Tensor, cross: list[KV], cross_bias: Tensor, past: list[KV] | None = None,
        positions: Tensor | None = None, visible: Tensor | None = None,
    ) -> tuple[Tensor, list[KV]]:
        """The last block's output [B, L, width]. By default token j sits at ``past_len + j`` and sees
        every token up to itself; a packed row (text_score) gives both its own ``positions`` [B, L]
        and ``visible`` [B, L, L] (which tokens each token sees)."""
        length = tokens.shape[1]
        past_len = 0 if past is None else past[0][0].shape[2]
        key_index = torch.arange(past_len + length, device=tokens.device)
        if positions is None:  # a packed row gives both
            positions = torch.arange(length, device=tokens.device) + past_len
            visible = key_index[None, :] <= positions[:, None]
        x = self.embed(tokens) + nn.functional.embedding(positions, self.position)
        zeros = torch.zeros(visible.shape, dtype=x.dtype, device=x.device)
        bias = torch.where(visible, zeros, torch.full_like(zeros, NEG_INF))
        if bias.dim() == 3:
            bias = bias[:, None]  # per row: [B, 1, L, L], broadcast over the heads

        presents: list[KV] = []
        for i, block in enumerate(self.blocks):
            def update(k: Tensor, v: Tensor, i: int = i) -> KV:
                if past is not None:
                    k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
                presents.append((k, v))
                return k, v

            x = block(x, bias, update_kv=update, cross_kv=cross[i], cross_bias=cross_bias)
        return x, presents
