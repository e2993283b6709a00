"""Serving many streams: the CPU twin under a real tritonserver against in-process streams.

For 1, 8, 32 and 64 concurrent streams: throughput (chunks per second) and push latency
(p50 / p99, what the caller waits) through the server, each stream a ``RemoteStream`` on its
own thread, against in-process ``MirasolEngines.push_many`` over the same number of streams
on the same engines, alternated A B A B in one run. The server's overhead per request is the
client's round trip minus the server's own push time, for one stream alone.

    .venv/bin/python bench/serve.py [--presets tiny edge] [--streams 1 8 32 64] [--out bench/results/serve.json]

Needs the server environment (make triton-venv). On the day a GPU server is at hand, point it
at the real deployment (NVIDIA's container serving ``mirasol-build triton ENGINES``) and give
the same engines for the in-process side, on that machine:

    python bench/serve.py --url localhost:8001 --engines engines/h100 --streams 1 8 32 64 128
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mirasol_edge.measure.stats import stats
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.results import RawChunk
from mirasol_edge.runtime.stream import MirasolEngines
from mirasol_edge.serve.client import RemoteStream
from mirasol_edge.serve.local_server import LocalTriton
from mirasol_edge.serve.repository import ServeOptions, write_repository
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe


def _chunk(engines: MirasolEngines, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, engines.video_shape, dtype=np.uint8)
    mel = rng.standard_normal(engines.mel_shape).astype(np.float32) if engines.mel_shape else None
    return {"frames": frames, "mel": mel}


def in_process(engines: MirasolEngines, n: int, pushes: int, chunk: dict) -> dict:
    streams = [engines.stream() for _ in range(n)]
    raw = RawChunk(chunk["frames"], chunk["mel"])
    latencies = []
    start = time.perf_counter()
    for _ in range(pushes):
        results = engines.push_many(streams, [raw] * n)
        latencies += [r.timings.total_ms for r in results]  # a group's time: every stream waits for it
    wall = time.perf_counter() - start
    for s in streams:
        s.close()
    return {"chunks_per_s": round(n * pushes / wall, 2), "push_ms": stats(latencies)}


def through_server(url: str, n: int, pushes: int, chunk: dict, tag: str) -> dict:
    def one(i: int) -> tuple[list[float], list[float]]:
        rtt, server = [], []
        with RemoteStream(url, f"{tag}-{n}-{i}") as remote:
            for _ in range(pushes):
                result = remote.push(frames=chunk["frames"], mel=chunk["mel"])
                rtt.append(result.timings.total_ms)
                server.append(result.timings.encode_ms + result.timings.ar_ms + result.timings.upload_ms)
        return rtt, server

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(n) as pool:
        done = [f.result(timeout=1800) for f in [pool.submit(one, i) for i in range(n)]]
    wall = time.perf_counter() - start
    rtt = [x for r, _ in done for x in r]
    server = [x for _, s in done for x in s]
    # Round trip minus the server's own push: with one stream the server's overhead per request;
    # with many, also the wait behind the other streams' pushes in the same batch.
    return {"chunks_per_s": round(n * pushes / wall, 2), "push_ms": stats(rtt), "server_push_ms": stats(server),
            "overhead_and_wait_ms_p50": round(float(np.median(np.array(rtt) - np.array(server))), 3)}


def bench_preset(preset: str, counts: list[int], pushes_for: dict, rounds: int, tmp: Path, url: str | None = None,
                 engines_dir: Path | None = None) -> dict:
    if engines_dir is None:
        engines_dir = tmp / f"{preset}-cpu"
        build(load_recipe("cpu"), engines_dir, preset=preset)
    engines = MirasolEngines(engines_dir)
    chunk = _chunk(engines, 0)
    report = {}
    local = None
    if url is None:
        repo = write_repository(engines_dir, tmp / f"{preset}-repo", ServeOptions(max_streams=max(counts), max_batch=64,
                                                                                    idle_seconds=600), twin=True)
        local = LocalTriton(repo).start()
        url = local.url
    try:
        through_server(url, 1, 3, chunk, "warm")  # first calls load sessions
        for n in counts:
            pushes = pushes_for[preset](n)
            runs = {"in_process": [], "server": []}
            for r in range(rounds):  # A B A B
                runs["in_process"].append(in_process(engines, n, pushes, chunk))
                runs["server"].append(through_server(url, n, pushes, chunk, f"r{r}"))
                print(preset, n, "in-process", runs["in_process"][-1]["chunks_per_s"], "server",
                      runs["server"][-1]["chunks_per_s"], flush=True)
            best = {k: max(v, key=lambda x: x["chunks_per_s"]) for k, v in runs.items()}
            report[str(n)] = {"pushes_per_stream": pushes, "runs": runs, "best": best,
                              "server_vs_in_process": round(best["server"]["chunks_per_s"]
                                                            / best["in_process"]["chunks_per_s"], 3)}
    finally:
        if local is not None:
            local.stop()
    engines.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "edge"])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.json")
    parser.add_argument("--url", help="a running Triton server (gRPC) instead of the local CPU twin")
    parser.add_argument("--engines", type=Path, help="with --url: the engines it serves, for the in-process side")
    args = parser.parse_args()
    if args.url and not args.engines:
        parser.error("--url needs --engines (the same engines, for the in-process side)")
    # Enough pushes for stable numbers, few enough that 64 edge streams finish in minutes on 2 cores.
    pushes_for = {"tiny": lambda n: max(4, 256 // n), "edge": lambda n: max(2, 32 // n),
                  "mirasol3b": lambda n: 2}
    results = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        for preset in args.presets:
            results[preset] = bench_preset(preset, args.streams, pushes_for, args.rounds, Path(tmp), args.url,
                                           args.engines)
    what = (f"the server at {args.url} vs in-process push_many on {args.engines}" if args.url else
            "CPU twin under tritonserver 2.51 (nvidia-pytriton) vs in-process push_many; same ONNX Runtime graphs")
    report = {"machine": machine.describe(), "what": what, "results": results}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for preset, rows in results.items():
        for n, row in rows.items():
            s, i = row["best"]["server"], row["best"]["in_process"]
            print(f"{preset} {n:>3} streams: server {s['chunks_per_s']} chunks/s (p50 {s['push_ms']['p50']} ms, "
                  f"p99 {s['push_ms']['p99']} ms, overhead+wait {s['overhead_and_wait_ms_p50']} ms), in-process "
                  f"{i['chunks_per_s']} chunks/s -> {row['server_vs_in_process']}x")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
