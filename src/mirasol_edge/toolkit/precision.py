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

from mirasol_edge.runtime.components import COMPONENTS

from .recipe import QUANTIZED

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class CastLinear(nn.Module):
    """A Linear whose weights and matmul are in ``dtype``; input and output stay fp32."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.to(self.dtype), self.weight, self.bias).float()


def apply_precision(module: nn.Module, precision: str, keep_fp32: tuple[str, ...] = (),
                    inplace: bool = False) -> nn.Module:
    """``module`` in ``precision`` (a copy unless ``inplace``: a 2B-parameter AR model has no
    room for two copies); Linear layers whose names start with a prefix in ``keep_fp32`` stay fp32."""
    if precision in ("fp32", "auto") or precision in QUANTIZED:
        return module  # quantized graphs are made from the fp32 export (mirasol_edge.calib)
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}")
    if not inplace:
        module = copy.deepcopy(module)
    # Names, not module references: each fp32 Linear is freed as soon as it is replaced.
    names = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)
             and not any(name.startswith(p) for p in keep_fp32 if p)]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = module.get_submodule(parent)
        setattr(owner, attr, CastLinear(getattr(owner, attr), DTYPES[precision]))
    return module


# Time over fp32's on ONNX Runtime's CPU EP, measured at edge size on 2 cores (bench/quantize.py).
ORT_CPU_COST = {("int8", "chunk_encoder"): 0.85, ("int8", "ar_step"): 1.75, ("int8", "text_prefill"): 1.25,
                ("int8", "text_decode"): 1.97, ("int4", "ar_step"): 0.59, ("int4", "text_prefill"): 0.79,
                ("int4", "text_decode"): 0.51}


def slow_precision_warnings(recipe) -> list[str]:
    """A precision the backend runs slower than fp32 is accepted, and said so with the measured cost."""
    if recipe.target.backend != "onnxruntime":
        return []
    out = []
    for component in COMPONENTS:
        precision = recipe.precision.of(component)
        cost = ORT_CPU_COST.get((precision, component))
        if cost and cost > 1:
            faster = [f"{p} {c:.2f}x" for (p, comp), c in ORT_CPU_COST.items() if comp == component and c < 1]
            out.append(f"{recipe.path}: precision.{component} = {precision!r} runs {cost:.2f}x fp32's time on ONNX "
                       f"Runtime's CPU (edge, bench/results/quantize.json)"
                       + (f"; {', '.join(faster)} measured faster" if faster else "; fp32 is faster"))
    return out
