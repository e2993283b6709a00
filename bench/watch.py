"""What watching costs: a push with K closed-set watches (two answers each) against the push
alone, side by side in one run, for K = 1, 4, 8, 16, at the tiny and edge presets, on the cpu
and cpu-fast recipes (ONNX Runtime on this CPU).

One stream per K over the same engines; the streams take the same chunks in turn, in blocks, so
a noisy machine slows every K alike. Cost = (push p50 with K watches - push p50 alone) / push p50
alone; ``watch_ms`` is the scoring's own time inside the push (one text_score call for all K).
Goals (issue 24, edge on ORT CPU): one watch <= 0.3x a push, eight <= 1.0x.

    .venv/bin/python bench/watch.py [--presets tiny edge] [--recipes cpu cpu-fast] [--pushes 60]
    .venv/bin/python bench/watch.py --built edge/cpu-fast=DIR   # engines mirasol-build already made
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mirasol_edge.assets import BUNDLED_CHECKPOINT, SAMPLE_CLIP
from mirasol_edge.cli.build import quantization_hooks
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.engines import MirasolEngines
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe

KS = (0, 1, 4, 8, 16)
QUESTIONS = ["is there a beep?", "is the screen flashing?", "is the square red?", "is the square green?",
             "is the square blue?", "is the square yellow?", "is anyone at the door?", "is the conveyor stopped?"]
GOALS = {1: 0.3, 8: 1.0}
SOURCES = {"tiny": {"checkpoint": BUNDLED_CHECKPOINT}, "edge": {"preset": "edge"}}


def measure(engine_dir: Path, pushes: int, block: int = 5) -> dict:
    engines = MirasolEngines(engine_dir)
    try:
        decoded = list(chunks(SAMPLE_CLIP, engines.spec))
        streams = {k: engines.stream(name=f"k{k}") for k in KS}
        for k, stream in streams.items():
            for i in range(k):
                stream.watch(QUESTIONS[i % len(QUESTIONS)], ("yes", "no"), name=f"w{i}")
        for stream in streams.values():  # warm-up: sessions, allocations
            for chunk in decoded[:3]:
                stream.push(chunk)
        push_ms = {k: [] for k in KS}
        watch_ms = {k: [] for k in KS}
        n = 0
        while n < pushes:
            for k, stream in streams.items():
                for i in range(block):
                    result = stream.push(decoded[(n + i) % len(decoded)])
                    push_ms[k].append(result.timings.total_ms)
                    watch_ms[k].append(result.timings.watch_ms)
            n += block
        for stream in streams.values():
            stream.close()
    finally:
        engines.close()
    alone = float(np.median(push_ms[0]))
    out = {"push_alone_ms_p50": round(alone, 3)}
    for k in KS[1:]:
        p50 = float(np.median(push_ms[k]))
        out[f"k{k}"] = {"push_ms_p50": round(p50, 3), "watch_ms_p50": round(float(np.median(watch_ms[k])), 3),
                        "cost_vs_push": round((p50 - alone) / alone, 3),
                        "watch_ms_vs_push": round(float(np.median(watch_ms[k])) / alone, 3)}
        if k in GOALS:
            out[f"k{k}"]["goal"] = GOALS[k]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "edge"], choices=list(SOURCES))
    parser.add_argument("--recipes", nargs="+", default=["cpu", "cpu-fast"])
    parser.add_argument("--pushes", type=int, default=60, help="pushes per stream, in blocks of 5")
    parser.add_argument("--built", action="append", default=[], metavar="LABEL=DIR",
                        help="measure these engines instead of building (edge cpu-fast calibrates for ~15 min)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/watch.json"))
    args = parser.parse_args()
    report = {"machine": machine.describe(), "ks": list(KS), "answers_per_watch": 2, "results": {}}
    if args.built:
        for label, folder in (b.split("=", 1) for b in args.built):
            report["results"][label] = result = measure(Path(folder), args.pushes)
            print(json.dumps({label: result}), flush=True)
            _write(args.out, report)
        return
    with tempfile.TemporaryDirectory(prefix="mirasol-watch-bench-") as tmp:
        for preset in args.presets:
            for recipe in args.recipes:
                out = Path(tmp) / f"{preset}-{recipe}"
                start = time.perf_counter()
                build(load_recipe(recipe), out, **SOURCES[preset], **quantization_hooks())
                built_s = time.perf_counter() - start
                result = measure(out, args.pushes)
                result["build_seconds"] = round(built_s, 1)
                report["results"][f"{preset}/{recipe}"] = result
                print(json.dumps({f"{preset}/{recipe}": result}), flush=True)
                _write(args.out, report)  # after each case: a long run cut short keeps what it measured
    print(f"wrote {args.out}")


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = path.with_name(f".{path.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    tmp_out.replace(path)


if __name__ == "__main__":
    main()
