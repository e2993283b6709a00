"""Push latency against chunk index: the streaming runtime vs the naive way.

Streaming: ``MirasolStream.push`` on ONNX Runtime engines (the cpu recipe), one chunk at a
time against the on-device state, for ``--chunks`` chunks.

Naive: what a training-style implementation does for each new chunk: run the whole model
over the whole history again (``Mirasol.encode_offline`` on chunks 0..i, PyTorch fp32).
Its cost grows with i (and its attention memory with i squared), so it is measured at
chunk counts until one call would exceed ``--naive-budget-s`` seconds or
``--naive-max-gib`` of attention memory, and fitted (a*i + b*i^2) beyond; every
extrapolated number is marked as such.

    .venv/bin/python bench/stream.py [--presets tiny edge] [--chunks 5000]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

from mirasol_edge.runtime import machine
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.toolkit import Mirasol, MirasolConfig
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe

CHECKPOINTS = (10, 100, 1000, 5000)


def stream_latencies(engines: Path, chunks: int) -> dict:
    with MirasolStream.open(engines) as stream:
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, stream.engines.video_shape, dtype=np.uint8)
        mel = rng.normal(-40, 20, stream.engines.mel_shape).astype(np.float32)
        for _ in range(5):  # warm up, then start counting from a fresh state
            stream.push(frames=frames, mel=mel)
    gc.collect()
    with MirasolStream.open(engines) as stream:
        latencies = []
        rss = {}
        for i in range(chunks):
            start = time.perf_counter()
            stream.push(frames=frames, mel=mel)
            latencies.append((time.perf_counter() - start) * 1e3)
            if i + 1 in (10, chunks):
                rss[i + 1] = {"rss_mib": machine.rss_mib(), "peak_rss_mib": machine.peak_rss_mib()}
            if (i + 1) % 500 == 0:
                print(f"  stream chunk {i + 1}: {np.median(latencies[-500:]):.2f} ms p50 over the last 500", flush=True)
    return {"latency_ms": latencies, "rss": rss}


def attention_gib(cfg: MirasolConfig, chunks: int) -> float:
    """The offline AR model's bias and score tensors: B*H*N*N floats, twice."""
    n = chunks * cfg.latents_per_chunk
    return 2 * cfg.ar_heads * n * n * 4 / 2**30


def naive_latencies(cfg: MirasolConfig, budget_s: float, max_gib: float) -> dict:
    torch.manual_seed(0)
    model = Mirasol(cfg).eval()
    g = torch.Generator().manual_seed(0)
    one_video = torch.randint(0, 256, (1, cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3),
                              dtype=torch.uint8, generator=g)
    one_mel = torch.randn(1, cfg.mel_frames_per_chunk, cfg.n_mels, generator=g) * 20 - 40
    measured = {}
    for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if attention_gib(cfg, n) > max_gib:
            print(f"  naive {n} chunks: skipped, attention needs {attention_gib(cfg, n):.1f} GiB", flush=True)
            break
        video = one_video.repeat(1, n, 1, 1, 1)
        mel = one_mel.repeat(1, n, 1)
        with torch.inference_mode():
            start = time.perf_counter()
            model.encode_offline(video, mel)
            seconds = time.perf_counter() - start
        measured[n] = seconds * 1e3
        print(f"  naive {n} chunks: {seconds * 1e3:.1f} ms", flush=True)
        del video, mel
        gc.collect()
        if seconds * 2.5 > budget_s:  # the next point (2-2.5x the chunks) would pass the budget
            break
    xs = np.array(list(measured), float)
    ys = np.array(list(measured.values()))
    a, b = np.linalg.lstsq(np.stack([xs, xs**2], 1), ys, rcond=None)[0]
    return {"measured_ms": measured, "fit": {"a_ms_per_chunk": a, "b_ms_per_chunk2": b},
            "estimate": lambda n: measured.get(n, a * n + b * n * n)}


def engines_for(preset: str, root: Path) -> Path:
    out = root / f"{preset}-cpu"
    if not (out / "manifest.json").exists():
        print(f"building {preset} cpu engines into {out}", flush=True)
        build(load_recipe("cpu"), out, preset=preset)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (preset, r) in zip(axes[0], results.items()):
        lat = np.array(r["stream"]["latency_ms"])
        idx = np.arange(1, len(lat) + 1)
        ax.plot(idx, lat, ",", alpha=0.3, color="tab:blue")
        window = 50
        smooth = np.convolve(lat, np.ones(window) / window, mode="valid")
        ax.plot(idx[window - 1 :], smooth, color="tab:blue", label="streaming (ONNX Runtime), 50-chunk mean")
        measured = r["naive"]["measured_ms"]
        ax.plot(list(map(int, measured)), list(measured.values()), "o-", color="tab:red",
                label="naive: whole history again (PyTorch), measured")
        xs = np.geomspace(max(map(int, measured)), len(lat), 20)
        fit = r["naive"]["fit"]
        ax.plot(xs, fit["a_ms_per_chunk"] * xs + fit["b_ms_per_chunk2"] * xs**2, "--", color="tab:red",
                label="naive, extrapolated")
        ax.set(xscale="log", yscale="log", xlabel="chunk index", ylabel="ms per new chunk", title=preset)
        ax.legend(fontsize=8)
    fig.suptitle(f"push latency vs chunk index ({machine.cpu_model()}, {machine.describe()['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "edge"])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--naive-budget-s", type=float, default=60.0)
    parser.add_argument("--naive-max-gib", type=float, default=6.0)
    parser.add_argument("--engines", type=Path, default=Path("engines/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="stream-PRESET.json/.png go here")
    args = parser.parse_args()

    results, table = {}, {}
    for preset in args.presets:
        cfg = MirasolConfig.preset(preset)
        engines = engines_for(preset, args.engines)
        print(f"{preset}: streaming {args.chunks} chunks", flush=True)
        stream = stream_latencies(engines, args.chunks)
        print(f"{preset}: naive", flush=True)
        naive = naive_latencies(cfg, args.naive_budget_s, args.naive_max_gib)
        lat = np.array(stream["latency_ms"])
        rows = {}
        for n in CHECKPOINTS:
            if n > len(lat):
                continue
            around = lat[max(0, n - 25) : n + 25]  # median of the pushes around chunk n
            streamed = float(np.median(around))
            naive_ms = float(naive["estimate"](n))
            rows[n] = {"stream_ms": round(streamed, 3), "naive_ms": round(naive_ms, 1),
                       "naive_extrapolated": n not in naive["measured_ms"],
                       "naive_attention_gib": round(attention_gib(cfg, n), 2),
                       "ratio_naive_over_stream": round(naive_ms / streamed, 1)}
        first, last = lat[:500], lat[-500:]
        results[preset] = {"stream": stream, "naive": naive}
        table[preset] = {"chunks": args.chunks, "at": rows,
                         "stream_p50_first_500_ms": round(float(np.median(first)), 3),
                         "stream_p50_last_500_ms": round(float(np.median(last)), 3),
                         "flatness_last_over_first": round(float(np.median(last) / np.median(first)), 3),
                         "rss": stream["rss"],
                         "naive_measured_ms": {k: round(v, 1) for k, v in naive["measured_ms"].items()},
                         "naive_fit": {k: float(v) for k, v in naive["fit"].items()}}
        print(json.dumps(table[preset], indent=1), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    for preset in args.presets:
        path = args.out / f"stream-{preset}.json"
        path.write_text(json.dumps({"machine": machine.describe(), "preset": preset, **table[preset]}, indent=1) + "\n")
        plot({preset: results[preset]}, path.with_suffix(".png"))
        print(f"recorded {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
