"""Where the time goes in fp32, int8 and int4 graphs on ONNX Runtime's CPU provider: its own
profiler, per op type, for the edge chunk encoder, AR step and text decoding step, with each
graph's roofline floor.

Builds `edge` with the cpu recipe in fp32, int8 (Q/DQ, fused into MatMulIntegerToFloat) and
int4 (MatMulNBits), runs each component's engine on the contract's inputs with
``enable_profiling``, alternated per round, and sums the profiler's node events by op type.

    .venv/bin/python bench/profile_quantized.py [--runs 20] [--out bench/results/profile-edge.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mirasol_edge.cli.build import quantization_hooks
from mirasol_edge.measure.floor import floor_seconds, graph_cost, measure_ceilings
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.backends.ort_backend import disabled_optimizers
from mirasol_edge.runtime.components import contracts
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe

COMPONENTS = ("chunk_encoder", "ar_step", "text_decode")
INT8 = [f"precision.{c}=int8" for c in ("chunk_encoder", "ar_step", "text_prefill", "text_decode")]
# As bench/quantize.py: random weights are hard on int4, so its cosine gate is relaxed for edge.
INT4 = ["precision.chunk_encoder=int8", *(f"precision.{c}=int4" for c in ("ar_step", "text_prefill", "text_decode")),
        "accuracy.min_quantized_cosine=0.95"]


def profile(path: Path, precision: str, feeds: dict, runs: int, workdir: Path) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / f"{path.stem}-{precision}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled_optimizers(precision))
    for _ in range(3):  # warm-up, profiled too: dropped below by run index
        session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    wall_ms = (time.perf_counter() - start) * 1e3 / runs
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(nodes) // (runs + 3)
    for event in nodes[3 * per_run :]:
        by_op[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    total = sum(by_op.values())
    top = dict(sorted(((k, round(v, 3)) for k, v in by_op.items()), key=lambda kv: -kv[1]))
    return {"wall_ms": round(wall_ms, 3), "kernels_ms": round(total, 3), "by_op_ms": top,
            "nodes_per_run": per_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile-edge.json")
    args = parser.parse_args()
    report = {"machine": machine.describe(), "preset": "edge", "components": {}}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        tmp = Path(tmp)
        dirs = {}
        for precision, overrides in (("fp32", []), ("int8", INT8), ("int4", INT4)):
            dirs[precision] = tmp / precision
            build(load_recipe("cpu", overrides), dirs[precision], preset="edge", **quantization_hooks())
        ceilings = measure_ceilings("cpu")
        for name in COMPONENTS:
            opened = {p: EngineDir.open(d) for p, d in dirs.items()}
            engines = {p: (o.engine_file(name), o.components[name].precision) for p, o in opened.items()}
            if name == "chunk_encoder":
                engines.pop("int4")  # the int4 build's encoder is its int8 one
            cfg = MirasolConfig.from_dict(EngineDir.open(dirs["fp32"]).config)
            feeds = contracts(cfg)[name].dummy_inputs()
            cost = graph_cost(opened["fp32"].onnx_file(name))
            floor_s, bound = floor_seconds(cost, ceilings)
            rounds = {p: [] for p in engines}
            for _ in range(args.rounds):  # A B A B
                for precision, (engine, chosen) in engines.items():
                    rounds[precision].append(profile(engine, chosen, feeds, args.runs, tmp))
            best = {p: min(r, key=lambda x: x["wall_ms"]) for p, r in rounds.items()}
            report["components"][name] = {
                "floor_ms": round(floor_s * 1e3, 3), "floor_bound": bound,
                "gflop": round(cost.flops / 1e9, 3), "weight_mib": round(cost.weight_bytes / 2**20, 1),
                "profiles": best, **{f"{p}_speedup": round(best["fp32"]["wall_ms"] / best[p]["wall_ms"], 3)
                                     for p in best if p != "fp32"}}
            print(name, json.dumps(report["components"][name], indent=1), flush=True)
    report["ceilings"] = vars(ceilings) if hasattr(ceilings, "__dict__") else str(ceilings)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("->", args.out)


if __name__ == "__main__":
    main()
