"""AWQ's activation-aware scaling for int4 weight-only layers (Lin et al., 2023), on an ONNX graph.

No maintained library does this for an arbitrary ONNX graph on a CPU machine: ModelOpt's
ONNX AWQ wants onnxruntime-gpu and cupy, ORT's nvidia_awq wants a Hugging Face LLM. The
method is small: input channels that carry large activations lose the most to rounding, so
scale those weight rows up by ``s`` and the activations down by ``1/s`` (an exact identity in
fp32), with ``s = mean|x| ** alpha``, choosing per layer the ``alpha`` that minimizes the
int4 layer's output error on calibration activations. The 1/s becomes a Mul before the MatMul.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .collect import Sample

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_ROWS = 4096  # activation rows per layer used for the search


def fake_int4(weight: np.ndarray, block: int) -> np.ndarray:
    """Symmetric int4 round trip, one scale per ``block`` input channels per output column."""
    rows, cols = weight.shape
    pad = (-rows) % block
    w = np.pad(weight, ((0, pad), (0, 0))).reshape(-1, block, cols)
    scale = np.abs(w).max(axis=1, keepdims=True) / 7.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(w / scale), -8, 7) * scale
    return q.reshape(-1, cols)[:rows]


def _activations(src: Path, fit: list[Sample], names: list[str]) -> dict[str, np.ndarray]:
    """Each named tensor's values over the calibration samples, flattened to [rows, channels]."""
    import onnxruntime as ort

    model = onnx.load(str(src))
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in existing)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = set(i.name for i in session.get_inputs())
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for sample in fit:
        outs = session.run(names, {k: v for k, v in sample.items() if k in wanted})
        for n, value in zip(names, outs):
            rows[n].append(value.reshape(-1, value.shape[-1]))
    result = {}
    for n, parts in rows.items():
        stacked = np.concatenate(parts)
        step = max(1, len(stacked) // MAX_ROWS)
        result[n] = stacked[::step].astype(np.float64)
    return result


def best_scale(x: np.ndarray, weight: np.ndarray, block: int) -> tuple[float, np.ndarray]:
    """(alpha, per-input-channel scale) minimizing || x W - (x / s) Q(s W) ||."""
    reference = x @ weight
    magnitude = np.abs(x).mean(axis=0) + 1e-8
    best = (np.inf, 0.0, np.ones(weight.shape[0]))
    for alpha in ALPHAS:
        s = magnitude**alpha
        s = s / np.sqrt(s.max() * s.min())
        error = float(np.mean(((x / s) @ fake_int4(weight * s[:, None], block) - reference) ** 2))
        if error < best[0]:
            best = (error, alpha, s)
    return best[1], best[2]


def apply_awq(model: onnx.ModelProto, src: Path, fit: list[Sample], nodes: set[str], block: int) -> dict[str, float]:
    """Rescale the weights of ``nodes`` (MatMul names) in ``model`` in place; returns alpha per node."""
    initializers = {i.name: i for i in model.graph.initializer}
    targets = [n for n in model.graph.node if n.name in nodes]
    acts = _activations(src, fit, sorted({n.input[0] for n in targets}))
    chosen, new_nodes = {}, []
    for node in list(model.graph.node):
        if node.name in nodes:
            weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
            alpha, s = best_scale(acts[node.input[0]], weight, block)
            chosen[node.name] = alpha
            if alpha > 0:
                initializers[node.input[1]].CopyFrom(
                    numpy_helper.from_array((weight * s[:, None]).astype(np.float32), node.input[1]))
                inverse = f"{node.name}.awq_inverse_scale"
                model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
                scaled = f"{node.input[0]}.awq.{node.name}"
                new_nodes.append(helper.make_node("Mul", [node.input[0], inverse], [scaled], name=f"{node.name}.awq"))
                node.input[0] = scaled
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return chosen
