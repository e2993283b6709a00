"""Calibration data from real media: every component's real inputs, recorded while the fp32
model streams decoded clips and answers real questions.

- chunk_encoder: decoded frames and log-mel, and the TTM memory the stream carries;
- ar_step: the Combiner latents and the AR state (KV ring, context, position) before each step;
- text_prefill / text_decode: the demo task's questions against the context the clip left,
  and every greedy decoding step of the answer (its token, KV cache and cross-attention);
- text_score: a watch's row against the state each push leaves.

Each clip gives each component an equal share of ``max_samples`` as it is streamed, so memory holds
one clip's records at most (all of them at edge: ~2.5 GB a clip, 12 clips did not fit in 24 GiB).

Media is a directory of clips (anything the decode iterator reads) or ``synthetic``: clips from
the demo generator, encoded with PyAV. Clips that don't decode are skipped and counted. The
recorded inputs are cached under the hash of the media bytes and the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime.components import COMPONENTS
from mirasol_edge.runtime.decode.chunks import ChunkSpec, DecodeError, chunks
from mirasol_edge.runtime.decode.types import MEDIA_SUFFIXES
from mirasol_edge.runtime.files import atomic_path, sha256_file
from mirasol_edge.toolkit.reference import record_stream

FORMAT = "mirasol-calib/3"  # 2: recorded through MirasolStream on the PyTorch reference; 3: a share per clip
CALIB_SEED = 30_000_000  # synthetic calibration clips; training and held-out evaluation use other seeds

Sample = dict[str, np.ndarray]
SyntheticMedia = Callable[[int], list[Path]]  # clips wanted -> clip files


class CalibrationError(MirasolError, ValueError):
    """Too little calibration data, or media that can't give any."""

    exit_code = 7


@dataclass
class CalibrationSet:
    """Per component: samples for computing ranges (``fit``) and held out for the report."""

    fit: dict[str, list[Sample]]
    held_out: dict[str, list[Sample]]
    clips: int
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    key: str = ""

    def describe(self) -> dict:
        return {"key": self.key, "clips": self.clips, "skipped": self.skipped,
                "samples": {c: {"fit": len(self.fit[c]), "held_out": len(self.held_out[c])} for c in self.fit}}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mirasol-edge" / "calib"


def media_files(media: str | Path, clips: int, synthetic: SyntheticMedia | None = None) -> list[Path]:
    """The recipe's calibration clips: a directory's, or ``synthetic``: clips made by ``synthetic``
    (the demo task's generator, which mirasol-build passes in)."""
    if str(media) == "synthetic":
        if synthetic is None:
            raise CalibrationError("calibration.media = 'synthetic' needs a clip generator (mirasol-build passes the "
                                   "demo task's); give a directory of clips instead")
        return synthetic(clips)
    directory = Path(media)
    if not directory.is_dir():
        raise CalibrationError(f"calibration media {directory}: not a directory (or 'synthetic')")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    if not files:
        raise CalibrationError(f"calibration media {directory}: no video files ({', '.join(sorted(MEDIA_SUFFIXES))})")
    return files[:clips]


def _subsample(samples: list[Sample], limit: int) -> list[Sample]:
    if len(samples) <= limit:
        return samples
    keep = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in keep]


def _cache_key(files: list[Path], weights_hash: str, config_hash: str, max_samples: int, held_out: float,
               questions: list[str]) -> str:
    text = json.dumps({"format": FORMAT, "media": [sha256_file(f) for f in files], "weights": weights_hash,
                       "config": config_hash, "max_samples": max_samples, "held_out": held_out,
                       "questions": questions})
    return hashlib.sha256(text.encode()).hexdigest()


def _save(path: Path, data: CalibrationSet) -> None:
    tensors = {f"{split}/{c}/{i:05d}/{name}": array
               for split, per in (("fit", data.fit), ("held_out", data.held_out))
               for c, samples in per.items() for i, sample in enumerate(samples) for name, array in sample.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "clips": str(data.clips),
                                               "skipped": json.dumps(data.skipped)})


def _load(path: Path, key: str) -> CalibrationSet | None:
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
    except Exception:  # a damaged cache is recomputed, never trusted
        return None
    splits: dict[str, dict[str, dict[int, Sample]]] = {"fit": {}, "held_out": {}}
    for name, array in tensors.items():
        split, component, index, tensor = name.split("/", 3)
        splits[split].setdefault(component, {}).setdefault(int(index), {})[tensor] = array
    ordered = {s: {c: [per[i] for i in sorted(per)] for c, per in comps.items()} for s, comps in splits.items()}
    return CalibrationSet(ordered["fit"], ordered["held_out"], int(meta["clips"]), json.loads(meta["skipped"]), key)


def collect(model, media: str | Path, clips: int, max_samples: int, min_samples: int, held_out: float,
            weights_hash: str, questions: list[str], synthetic: SyntheticMedia | None = None,
            progress=lambda msg: None) -> CalibrationSet:
    """Real inputs for every component; the last ``held_out`` fraction of the clips is kept for reports."""
    files = media_files(media, clips, synthetic)
    key = _cache_key(files, weights_hash, model.cfg.hash(), max_samples, held_out, questions)
    cached = cache_dir() / f"{key}.safetensors"
    if cached.is_file() and (data := _load(cached, key)) is not None:
        progress(f"calibration data from the cache ({cached.name[:12]}...)")
        return _enough(data, media, min_samples)

    spec = ChunkSpec.from_config(model.cfg)
    decoded, skipped = [], []
    for path in files:
        try:
            for _ in chunks(path, spec, decoder="pyav", mel="numpy"):  # as record_stream decodes; bad media skipped
                pass
        except (DecodeError, OSError) as exc:
            skipped.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        decoded.append(path)
    n_held = max(1, round(len(decoded) * held_out))
    if len(decoded) - n_held < 1:
        raise CalibrationError(
            f"calibration media {media}: {len(decoded)} of {len(files)} clips decoded ({len(skipped)} skipped"
            + (f", first: {skipped[0]}" if skipped else "") + "); need at least 2 (one to fit, one held out)")

    per_split = {}
    for split, part in (("fit", decoded[:-n_held]), ("held_out", decoded[-n_held:])):
        samples = {c: [] for c in COMPONENTS}
        share = -(-max_samples // len(part))
        for i, path in enumerate(part):
            progress(f"calibration: streaming {split} clip {i + 1}/{len(part)}")
            for component, feeds in record_stream(model, path, questions).items():
                samples[component] += _subsample(feeds, share)
        per_split[split] = {c: _subsample(s, max_samples) for c, s in samples.items()}
    data = CalibrationSet(per_split["fit"], per_split["held_out"], len(decoded), skipped, key)
    _save(cached, data)
    return _enough(data, media, min_samples)


def _enough(data: CalibrationSet, media, min_samples: int) -> CalibrationSet:
    for component in COMPONENTS:
        samples = data.fit[component]
        if len(samples) < min_samples:
            raise CalibrationError(
                f"calibration media {media}: {component} got {len(samples)} samples from the clips it fits on; "
                f"calibration.min_samples = {min_samples} (give more clips, or longer ones)")
    return data
