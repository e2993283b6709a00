"""The physical floor of a stage: its FLOPs and weight bytes, and the machine's own ceilings.

FLOPs are counted from the exported graph (every MatMul/Gemm, with shapes inferred for
the lengths given), so they are what the engine runs, derived from the config by the
export. Weight bytes are the graph's initializers. The floor of a stage is
``max(flops / peak FLOP/s, weight bytes / copy bandwidth)``: a stage near its compute
floor is compute-bound, near its bytes floor memory-bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GraphCost:
    flops: int
    weight_bytes: int


def graph_cost(onnx_path: Path, dims: dict[str, int] | None = None) -> GraphCost:
    """FLOPs of MatMul/Gemm nodes and initializer bytes; ``dims`` sets named dynamic axes."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path), load_external_data=False)
    for value in model.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param and dims and d.dim_param in dims:
                d.dim_value = dims[d.dim_param]
    inferred = shape_inference.infer_shapes(model).graph
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    weight_bytes = 0
    for init in inferred.initializer:
        shapes[init.name] = list(init.dims)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        weight_bytes += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    flops = 0
    for node in inferred.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out and all(out) and a[-1]:
                k = a[-1] if node.op_type == "MatMul" or not _attr(node, "transA") else a[-2]
                flops += 2 * int(np.prod(out, dtype=np.int64)) * k
    return GraphCost(flops, weight_bytes)


def _attr(node, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


@dataclass(frozen=True)
class Ceilings:
    flops_per_s: float  # a large float32 matrix product
    bytes_per_s: float  # a large copy (read + write)
    how: str


def measure_ceilings(device: str = "cpu", size: int = 2048, copy_mib: int = 256, repeats: int = 5,
                     dtype: str = "fp16") -> Ceilings:
    """Matmul and copy peaks as measured here; on a GPU in ``dtype`` (fp16 or fp32: a floor for
    fp32 work taken from the fp16 tensor-core peak would be far too low)."""
    if device.startswith("cuda"):
        return _gpu_ceilings(size * 2, copy_mib * 4, repeats, dtype)
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.copy()
    a @ b  # warm up the BLAS threads
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    src = np.ones(copy_mib << 18, np.float32)
    dst = np.empty_like(src)
    copy = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return Ceilings(2 * size**3 / best, 2 * src.nbytes / copy, f"numpy float32 {size}^3 matmul; {copy_mib} MiB copy")


def _gpu_ceilings(size: int, copy_mib: int, repeats: int, dtype: str) -> Ceilings:
    import torch

    kind = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    a = torch.randn(size, size, device="cuda", dtype=kind)
    src = torch.ones(copy_mib << 18, device="cuda", dtype=torch.float32)  # bandwidth: bytes are bytes
    dst = torch.empty_like(src)

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    best = min(timed(lambda: a @ a) for _ in range(repeats))
    copy = min(timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return Ceilings(2 * size**3 / best, 2 * src.numel() * 4 / copy, f"torch {dtype} {size}^3 matmul; {copy_mib} MiB copy")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_seconds(cost: GraphCost, ceilings: Ceilings) -> tuple[float, str]:
    compute, memory = cost.flops / ceilings.flops_per_s, cost.weight_bytes / ceilings.bytes_per_s
    return (compute, "compute") if compute >= memory else (memory, "memory")
