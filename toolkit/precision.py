"""Precision decided in the graph: TensorRT 11 is strongly typed, so casts in the ONNX rule.

fp16/bf16: every ``nn.Linear`` (all the matmul FLOPs and weight bytes) runs in the low
precision between explicit Cast nodes; everything else stays fp32:

- LayerNorm statistics, softmax (already computed in fp32 in ``layers.Attention``);
- residual sums (the residual stream stays fp32);
- the final projections: text logits (tied embedding matmul) and the state tensors
  (KV ring, context, TTM memory), which are written in fp32.

int8 / fp8 / int4 are explicit Q/DQ from calibration (``mirasol_edge.calib``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .recipe import QUANTIZED

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class PrecisionNotReady(NotImplementedError):
    """A quantized precision was asked for before calibration can produce it."""


class CastLinear(nn.Module):
    """A Linear whose weights and matmul are in ``dtype``; input and output stay fp32."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.to(self.dtype), self.weight, self.bias).float()


def apply_precision(module: nn.Module, precision: str, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``module`` in ``precision``; Linear layers whose names start with a prefix in
    ``keep_fp32`` stay fp32."""
    if precision == "fp32":
        return module
    if precision in QUANTIZED:
        raise PrecisionNotReady(
            f"precision {precision!r} needs calibration on real media (explicit Q/DQ); "
            "it is not available in this build yet: use fp32/fp16/bf16"
        )
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}")
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(sub, nn.Linear) and not any(full.startswith(p) for p in keep_fp32 if p):
                setattr(child, attr, CastLinear(sub, DTYPES[precision]))
    return module
