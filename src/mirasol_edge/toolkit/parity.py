"""How an exported graph agrees with PyTorch: every output compared (absolute, relative, cosine),
over the contract's example inputs and real ones, through ONNX Runtime's CPU provider."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .export import ExportError, ExportJob


@dataclass(frozen=True)
class Parity:
    max_abs_error: float
    max_rel_error: float  # max |onnx - torch| / max |torch|
    min_cosine: float
    worst_output: str

    def to_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "min_cosine": self.min_cosine, "worst_output": self.worst_output}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Parity:
    worst = ("", 0.0, 0.0, 1.0)
    max_rel, min_cos = 0.0, 1.0
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            raise ExportError(f"output {name}: shape {list(got.shape)} != PyTorch {list(ref.shape)}")
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        finite = np.isfinite(ref64)
        if not np.array_equal(finite, np.isfinite(got64)):
            raise ExportError(f"output {name}: non-finite values differ from PyTorch")
        diff = np.abs(ref64[finite] - got64[finite])
        err = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
        rel = err / scale if scale else err
        a, b = ref64[finite].ravel(), got64[finite].ravel()
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(a @ b / norms) if norms else (1.0 if np.allclose(a, b) else 0.0)
        if err >= worst[1]:
            worst = (name, err, rel, cos)
        max_rel, min_cos = max(max_rel, rel), min(min_cos, cos)
    return Parity(worst[1], max_rel, min_cos, worst[0])


def torch_outputs(spec: ExportJob, inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    tensors = spec.inputs if inputs is None else {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        outs = spec.module(*tensors.values())
    return {name: t.float().numpy() if t.is_floating_point() else t.numpy() for name, t in zip(spec.outputs, outs)}


def onnx_outputs(path: Path, *input_sets: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """ONNX Runtime's outputs for each input set, from one session (a 4 GB graph loads once)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if Path(str(path) + ".data").is_file():
        # Over 2 GB: ORT's CPU EP runs fp16 MatMuls on fp32 copies of the weights, and prepacking
        # copies those again: 5.3x the fp16 bytes at peak, 2.2x without prepacking (measured).
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = []
    for inputs in input_sets:
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        results.append(dict(zip(names, (np.asarray(o, dtype=np.float32) if np.asarray(o).dtype.kind == "f" else o
                                        for o in session.run(names, feed)))))
    return results


def parity_input_sets(spec: ExportJob, extra_inputs: list[dict[str, np.ndarray]] = ()) -> list[dict]:
    return [{k: v.numpy() for k, v in spec.inputs.items()}, *extra_inputs]


def onnx_parity(path: Path, sets: list[dict[str, np.ndarray]], references: list[dict[str, np.ndarray]]) -> Parity:
    """Worst agreement of the ONNX graph with PyTorch's outputs over the input sets."""
    results = [compare(ref, got) for ref, got in zip(references, onnx_outputs(path, *sets))]
    worst = max(results, key=lambda p: p.max_abs_error)
    return Parity(worst.max_abs_error, max(p.max_rel_error for p in results),
                  min(p.min_cosine for p in results), worst.worst_output)
