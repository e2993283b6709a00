"""Parameters per component for every preset, and per-chunk streaming forward time on this machine.

    .venv/bin/python bench/model_forward.py [--repeats 20] [--out bench/results/model_forward.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mirasol_edge.runtime import machine
from mirasol_edge.toolkit import PRESETS, Mirasol, MirasolConfig
from mirasol_edge.toolkit.summary import parameter_counts


def time_chunk(name: str, repeats: int) -> dict[str, float]:
    cfg = MirasolConfig.preset(name)
    torch.manual_seed(0)
    model = Mirasol(cfg).eval()
    video = torch.randint(0, 256, (1, cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    mel = torch.randn(1, cfg.mel_frames_per_chunk, cfg.n_mels) * 20 - 40
    state = model.init_state(1)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            start = time.perf_counter()
            _, state = model.encode_chunk(video, mel, state)
            if i >= 3:  # warm-up
                times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": statistics.median(times), "max_ms": max(times), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_forward.json")
    args = parser.parse_args()
    report = {
        "machine": machine.describe(),
        "parameters": {name: parameter_counts(MirasolConfig.preset(name)) for name in PRESETS},
        "encode_chunk_cpu_fp32": {name: time_chunk(name, args.repeats) for name in ("tiny", "edge")},
    }
    for name, counts in report["parameters"].items():
        print(f"{name:10s}", "  ".join(f"{k}={v / 1e6:,.2f}M" for k, v in counts.items()))
    for name, t in report["encode_chunk_cpu_fp32"].items():
        print(f"{name:10s} encode_chunk p50 {t['p50_ms']:.2f} ms  max {t['max_ms']:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
