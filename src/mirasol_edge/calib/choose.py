"""``precision = "auto"``: build each candidate precision of a component, drop those that miss
the accuracy gate, time the rest on this machine with the held-out calibration inputs, keep the
fastest, and say why in the report."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mirasol_edge.runtime.backends.ort_backend import disabled_optimizers
from mirasol_edge.toolkit.recipe import AUTO_CANDIDATES

from .quantize import QuantizationError

TIMED_RUNS = 20


def time_graph(path: Path, precision: str, samples: list[dict[str, np.ndarray]], runs: int = TIMED_RUNS) -> float:
    """Median milliseconds of one run on ONNX Runtime's CPU, optimized as the engine will be."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled_optimizers(precision))
    names = [i.name for i in session.get_inputs()]
    feeds = [{n: s[n] for n in names} for s in samples[: max(1, min(len(samples), 4))]]
    for feed in feeds:  # warm up: first runs allocate and prepack
        session.run(None, feed)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feeds[i % len(feeds)])
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def choose_fastest(name: str, make: Callable[[str, Path], dict], held_out: list[dict], onnx_path: Path,
                   progress: Callable[[str], None]) -> dict:
    measured, reports = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"mirasol-auto-{name}-") as tmp:
        for candidate in AUTO_CANDIDATES:
            path = Path(tmp) / f"{name}.{candidate}.onnx"
            try:
                reports[candidate] = make(candidate, path)
            except QuantizationError as exc:  # misses the accuracy gate: not a candidate
                measured[candidate] = {"rejected": str(exc)[:500]}
                continue
            ms = time_graph(path, candidate, held_out)
            measured[candidate] = {"ms": round(ms, 4)}
            progress(f"{name}: {candidate} runs in {ms:.3f} ms here")
        timed = {c: m["ms"] for c, m in measured.items() if "ms" in m}
        chosen = min(timed, key=timed.get)  # fp32 always passes: there is always one
        shutil.copyfile(Path(tmp) / f"{name}.{chosen}.onnx", onnx_path)
    why = (f"fastest here of {', '.join(f'{c} {ms:.3f} ms' for c, ms in timed.items())}"
           + "".join(f"; {c} missed the accuracy gate" for c, m in measured.items() if "rejected" in m))
    progress(f"{name}: auto chose {chosen} ({why})")
    return {**reports[chosen], "precision": chosen, "auto": {"chosen": chosen, "why": why, "candidates": measured}}
