"""Synthetic clips, encoded and decoded through the real pipeline, as arrays for training and evaluation."""

from __future__ import annotations

import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks

from .synthetic import ClipFacts, make_clip, sample_facts


@dataclass
class DecodedClip:
    facts: ClipFacts
    frames: np.ndarray  # [C, F, H, W, 3] uint8
    mel: np.ndarray  # [C, T, n_mels] float32


def decode_clip(seed: int, spec: ChunkSpec, decoder: str = "pyav") -> DecodedClip:
    """Write the clip for ``seed`` with PyAV's encoders, then decode it into model chunks."""
    with tempfile.TemporaryDirectory(prefix="mirasol-clip-") as tmp:
        path, facts = make_clip(seed, tmp)
        got = list(chunks(path, spec, decoder=decoder))
    return DecodedClip(facts, np.stack([c.frames for c in got]), np.stack([c.mel for c in got]))


def _decode(args) -> DecodedClip:
    return decode_clip(*args)


def decode_clips(seeds: list[int], spec: ChunkSpec, workers: int = 2, decoder: str = "pyav") -> list[DecodedClip]:
    if workers <= 1:
        return [decode_clip(s, spec, decoder) for s in seeds]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_decode, [(s, spec, decoder) for s in seeds], chunksize=16))


def cached_clips(seeds: list[int], spec: ChunkSpec, cache: Path | None, workers: int = 2) -> list[DecodedClip]:
    """Decoded clips, kept in an .npz so a second training run skips the encoding."""
    if cache is not None and cache.exists():
        data = np.load(cache)
        if list(data["seeds"]) == list(seeds):
            return [DecodedClip(sample_facts(int(s)), f, m) for s, f, m in zip(seeds, data["frames"], data["mel"])]
    clips = decode_clips(seeds, spec, workers)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp.npz")
        np.savez(tmp, seeds=np.array(seeds), frames=np.stack([c.frames for c in clips]),
                 mel=np.stack([c.mel for c in clips]))
        tmp.replace(cache)
    return clips
