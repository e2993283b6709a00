"""Decode beside inference: the edge preset streaming a 640x360 H.264 + AAC clip, decoding and
pushing one after the other (``chunks()``) against decoding the next chunk on its own thread
while the engines run this one (``decode_ahead``, what mirasol-run does for files). The two
alternate A B A B in one process; the report is each one's real-time factor and their ratio.

    .venv/bin/python bench/overlap.py [--rounds 3] [--seconds 30] [--out bench/results/overlap.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from decode import encode  # bench/decode.py beside this script (a script's folder is on its path)
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.decode.live import decode_ahead
from mirasol_edge.runtime.stream import MirasolEngines
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe  # noqa: E402


def run(engines: MirasolEngines, clip: Path, spec: ChunkSpec, ahead: bool) -> dict:
    stream = engines.stream()
    source = decode_ahead(clip, spec) if ahead else chunks(clip, spec)
    start, media, pushes = time.perf_counter(), 0.0, []
    for chunk in source:
        pushes.append(stream.push(chunk).timings.total_ms)
        media += chunk.t1 - chunk.t0
    wall = time.perf_counter() - start
    stream.close()
    return {"wall_s": round(wall, 3), "media_s": media, "realtime": round(media / wall, 3), "chunks": len(pushes),
            "push_ms_mean": round(sum(pushes) / len(pushes), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overlap.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        tmp = Path(tmp)
        build(load_recipe("cpu"), tmp / "edge-cpu", preset="edge")
        engines = MirasolEngines(tmp / "edge-cpu")
        one_thread = MirasolEngines(tmp / "edge-cpu", threads=1)  # leaves the other core to the decoder
        spec = ChunkSpec.from_config(engines.dir.config)
        clip = encode(tmp / "clip.mp4", "h264", args.seconds, (640, 360), 30)
        variants = {"sequential": (engines, False), "decode_ahead": (engines, True),
                    "decode_ahead_ort_1_thread": (one_thread, True)}
        runs = {name: [] for name in variants}
        for _ in range(args.rounds):  # A B C A B C: drift on a shared machine hits all alike
            for name, (which, ahead) in variants.items():
                runs[name].append(run(which, clip, spec, ahead))
                print(name, runs[name][-1], flush=True)
    best = {name: max(r["realtime"] for r in rs) for name, rs in runs.items()}
    report = {"machine": machine.describe(), "preset": "edge", "source": f"{args.seconds:g} s 640x360 H.264 + AAC",
              "runs": runs, "best_realtime": best,
              "ratio": round(best["decode_ahead"] / best["sequential"], 3),
              "ratio_ort_1_thread": round(best["decode_ahead_ort_1_thread"] / best["sequential"], 3)}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"real-time factor: sequential {best['sequential']}x, decode ahead {best['decode_ahead']}x "
          f"(ratio {report['ratio']}), with ORT on 1 thread {best['decode_ahead_ort_1_thread']}x "
          f"(ratio {report['ratio_ort_1_thread']}) -> {args.out}")


if __name__ == "__main__":
    main()
