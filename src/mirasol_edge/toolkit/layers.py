"""Transformer building blocks shared by every Mirasol component.

Attention is written out (matmul, additive bias, softmax in fp32) rather than through
``scaled_dot_product_attention`` so the exported ONNX is plain ops that every backend
takes, and so KV caches can be kept outside the modules (as whisper does).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

NEG_INF = float("-inf")


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        kv_width = kv_width or width
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)
        self.out = nn.Linear(width, width)

    def split(self, x: Tensor) -> Tensor:
        """[B, N, D] -> [B, heads, N, head_dim]"""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:
        """[B, heads, N, head_dim] -> [B, N, D]"""
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.key(x)), self.split(self.value(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """Queries from ``x`` [B, Nq, D] over split keys/values; ``bias`` broadcasts to [B, H, Nq, Nk]."""
        q = self.split(self.query(x))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if bias is not None:
            scores = scores + bias
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.out(self.merge(weights @ v))

    def forward(self, x: Tensor, bias: Tensor | None = None, kv_input: Tensor | None = None) -> Tensor:
        k, v = self.keys_values(x if kv_input is None else kv_input)
        return self.attend(x, k, v, bias)


class MLP(nn.Sequential):
    def __init__(self, width: int, ratio: int) -> None:
        super().__init__(nn.Linear(width, width * ratio), nn.GELU(), nn.Linear(width * ratio, width))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, cross_width: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.cross = None
        if cross_width is not None:
            self.norm_cross = nn.LayerNorm(width)
            self.cross = Attention(width, heads, kv_width=cross_width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(
        self,
        x: Tensor,
        bias: Tensor | None = None,
        update_kv: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        cross_kv: tuple[Tensor, Tensor] | None = None,
        cross_bias: Tensor | None = None,
    ) -> Tensor:
        """``update_kv(k, v) -> (k, v)`` lets a caller merge this step's keys/values with a cache it owns."""
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        if update_kv is not None:
            k, v = update_kv(k, v)
        x = x + self.attn.attend(h, k, v, bias)
        if self.cross is not None:
            assert cross_kv is not None, "a cross-attention block needs cross_kv"
            x = x + self.cross.attend(self.norm_cross(x), *cross_kv, cross_bias)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """A stack of blocks over a fixed-length token sequence, with a final norm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)
