"""int8 and int4 against fp32 on ONNX Runtime CPU: latency (mirasol-bench, the builds alternated
in one run), answers (mirasol-eval on held-out clips) and engine sizes, for the bundled tiny
model and the edge preset (random weights: its latency and sizes mean something, its answers
don't). int8: Q/DQ everywhere, run as MatMulIntegerToFloat; int4: MatMulNBits weights (int8
activations) for the AR step and the text decoder, the memory-bound parts at batch 1.

    .venv/bin/python bench/quantize.py [--cases tiny edge] [--out bench/results/quantize.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mirasol_edge.assets import BUNDLED_CHECKPOINT, SAMPLE_CLIP
from mirasol_edge.cli.build import quantization_hooks
from mirasol_edge.demo.evaluate import evaluate
from mirasol_edge.measure.cli import bench
from mirasol_edge.runtime import machine
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe

INT8 = [f"precision.{c}=int8" for c in ("chunk_encoder", "ar_step", "text_prefill", "text_decode")]
INT4 = ["precision.chunk_encoder=int8", *(f"precision.{c}=int4" for c in ("ar_step", "text_prefill", "text_decode"))]
VARIANTS = (("fp32", []), ("int8", INT8), ("int4", INT4))
CASES = {
    "tiny": {"source": {"checkpoint": str(BUNDLED_CHECKPOINT)}, "clip": str(SAMPLE_CLIP),
             "chunks": 300, "eval_clips": 120},
    # Random weights answer nothing right, so the answer check is skipped; 3 chunks per calibration clip.
    # Random weights are hard on int4: the AR step's cosine gate is relaxed for it (latency is the point).
    "edge": {"source": {"preset": "edge"}, "clip": None, "chunks": 40, "eval_clips": 0,
             "int4_overrides": ["accuracy.min_quantized_cosine=0.95"]},
}


def run_case(name: str, case: dict, workdir: Path) -> dict:
    result = {"builds": {}}
    dirs = {}
    for precision, overrides in VARIANTS:
        overrides = overrides + (case.get("int4_overrides", []) if precision == "int4" else [])
        out = workdir / f"{name}-{precision}"
        start = time.perf_counter()
        manifest = build(load_recipe("cpu", overrides), out, **case["source"], **quantization_hooks())
        result["builds"][precision] = {
            "overrides": overrides,
            "seconds": round(time.perf_counter() - start, 1),
            "engine_mib": {c: round(e["engine_bytes"] / 2**20, 2) for c, e in manifest["components"].items()},
            "quantization": {c: {k: e["quantization"][k] for k in ("kept_fp32", "quantized_layers", "error")}
                             for c, e in manifest["components"].items() if "quantization" in e},
            "answer_report": manifest.get("quantization", {}).get("exact_match"),
            "fusion": {c: e["fusion"] for c, e in manifest["components"].items() if "fusion" in e},
        }
        dirs[precision] = out
        print(f"{name} {precision}: built in {result['builds'][precision]['seconds']} s", flush=True)
    report = bench([str(dirs[p]) for p, _ in VARIANTS], source=case["clip"], chunks=case["chunks"],
                   warmup=5, block=10, asks=5, backend="onnxruntime")
    result["latency"] = {}
    for run, (precision, _) in zip(report["runs"], VARIANTS):
        result["latency"][precision] = {
            "stages_p50_ms": {s: v["p50"] if v else None for s, v in run["stages_ms"].items()},
            "push_p50_ms": run["end_to_end"]["push_ms"]["p50"],
            "ratio_vs_fp32": run["ratio_vs_first"], "memory": run["memory"]}
    if case["eval_clips"]:
        result["exact_match"] = {p: evaluate(dirs[p], case["eval_clips"], backend="onnxruntime")["exact_match"]
                                 for p, _ in VARIANTS}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quantize.json")
    args = parser.parse_args()
    report = {"machine": machine.describe(), "cases": {}}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as workdir:
        for name in args.cases:
            report["cases"][name] = run_case(name, CASES[name], Path(workdir))
            print(json.dumps(report["cases"][name], indent=1), flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
