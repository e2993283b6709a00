"""Synthetic clips, encoded and decoded through the real pipeline, as arrays for training and evaluation."""

from __future__ import annotations

import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks

from .synthetic import LONG_CHUNKS, ClipFacts, LongClipFacts, make_clip, make_long_clip, sample_facts, sample_long_facts


@dataclass
class DecodedClip:
    facts: ClipFacts | LongClipFacts
    frames: np.ndarray  # [C, F, H, W, 3] uint8
    mel: np.ndarray  # [C, T, n_mels] float32


def decode_clip(seed: int, spec: ChunkSpec, decoder: str = "pyav", long: int = 0) -> DecodedClip:
    """Write the clip for ``seed`` with PyAV's encoders, then decode it into model chunks
    (``long``: a long clip of that many chunks, ``make_long_clip``; 0: the 6-chunk clip)."""
    with tempfile.TemporaryDirectory(prefix="mirasol-clip-") as tmp:
        path, facts = make_long_clip(seed, tmp, long) if long else make_clip(seed, tmp)
        got = list(chunks(path, spec, decoder=decoder))
    return DecodedClip(facts, np.stack([c.frames for c in got]), np.stack([c.mel for c in got]))


def _decode(args) -> DecodedClip:
    return decode_clip(*args)


def decode_clips(seeds: list[int], spec: ChunkSpec, workers: int = 2, decoder: str = "pyav",
                 long: int = 0) -> list[DecodedClip]:
    if workers <= 1:
        return [decode_clip(s, spec, decoder, long) for s in seeds]
    # spawn, not fork: a process that has run torch or ONNX Runtime holds thread pools whose locks a
    # forked child inherits taken (measured: the workers hung in futex_wait after a model had run)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_decode, [(s, spec, decoder, long) for s in seeds], chunksize=16 if not long else 2))


def decode_long_clips(seeds: list[int], spec: ChunkSpec, chunks: int = LONG_CHUNKS, workers: int = 2
                      ) -> list[DecodedClip]:
    return decode_clips(seeds, spec, workers, long=chunks)


def cached_clips(seeds: list[int], spec: ChunkSpec, cache: Path | None, workers: int = 2,
                 long: int = 0) -> list[DecodedClip]:
    """Decoded clips, kept in an .npz so a second training run skips the encoding (``long``: long clips
    of that many chunks; about 1.6 MB each decoded at the tiny preset's size)."""
    facts = (lambda s: sample_long_facts(s, long)) if long else sample_facts
    if cache is not None and cache.exists():
        data = np.load(cache)
        if list(data["seeds"]) == list(seeds) and data["frames"].shape[1] == (long or data["frames"].shape[1]):
            return [DecodedClip(facts(int(s)), f, m) for s, f, m in zip(seeds, data["frames"], data["mel"])]
    clips = decode_clips(seeds, spec, workers, long=long)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp.npz")
        np.savez(tmp, seeds=np.array(seeds), frames=np.stack([c.frames for c in clips]),
                 mel=np.stack([c.mel for c in clips]))
        tmp.replace(cache)
    return clips
