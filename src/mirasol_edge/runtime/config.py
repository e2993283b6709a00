"""Every dimension of a Mirasol model, in one frozen dataclass, with named presets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mirasol_edge.errors import UsageError

COMBINERS = ("transformer", "ttm")


@dataclass(frozen=True)
class MirasolConfig:
    """Dimensions of a Mirasol model and the chunking they imply.

    Media is cut into consecutive chunks of ``frames_per_chunk`` frames sampled at
    ``fps``, i.e. ``chunk_seconds = frames_per_chunk / fps``. The audio of the same span
    is ``audio_samples_per_chunk = sample_rate * chunk_seconds`` mono samples, turned into
    ``mel_frames_per_chunk = audio_samples_per_chunk / hop_length`` log-mel frames.

    Presets (``MirasolConfig.preset(name)``):

    ========== === ===== ======== ============ ========= ====== =======
    preset     fps F     frames   chunks/128   samples   mel    window
                         H x W    frames       /chunk    T x n  W
    ========== === ===== ======== ============ ========= ====== =======
    tiny       4   4     32x32    32           16000     100x32 8
    edge       8   16    112x112  8            32000     200x64 16
    mirasol3b  8   16    224x224  8            32000     200x128 32
    ========== === ===== ======== ============ ========= ====== =======

    Tensor layouts:
      video chunk  ``[B, F, H, W, 3]`` uint8 (0..255) or float32 in [0, 1], RGB
      mel chunk    ``[B, T, n_mels]`` float32 log-mel in dB (``runtime.decode`` / ``toolkit.audio``)
      latents      ``[B, m, ar_width]`` per chunk (``m = latents_per_chunk``)
    """

    name: str = "custom"
    # chunking
    fps: float = 4.0
    frames_per_chunk: int = 4
    image_size: int = 32
    tubelet_frames: int = 2
    patch_size: int = 8
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 32
    audio_patch_time: int = 10
    audio_patch_mels: int = 8
    # video encoder (spatio-temporal ViT over tubelets)
    video_width: int = 64
    video_depth: int = 2
    video_heads: int = 2
    # audio encoder (ViT over log-mel patches); 0 depth drops the audio path
    use_audio: bool = True
    audio_width: int = 64
    audio_depth: int = 2
    audio_heads: int = 2
    # combiner
    combiner: str = "ttm"
    combiner_width: int = 64
    combiner_depth: int = 1
    combiner_heads: int = 2
    latents_per_chunk: int = 8  # m
    ttm_memory_size: int = 16
    # audio-video autoregressive model
    ar_width: int = 128
    ar_depth: int = 2
    ar_heads: int = 4
    window_chunks: int = 8  # W
    # text decoder
    text_width: int = 128
    text_depth: int = 2
    text_heads: int = 4
    vocab_size: int = 260  # 256 bytes + specials, see toolkit.tokenizer
    max_question_tokens: int = 48
    max_answer_tokens: int = 16
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        self._validate()

    # ---- derived chunk geometry -------------------------------------------------
    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk / self.fps

    @property
    def audio_samples_per_chunk(self) -> int:
        return round(self.sample_rate * self.chunk_seconds)

    @property
    def mel_frames_per_chunk(self) -> int:
        return self.audio_samples_per_chunk // self.hop_length

    @property
    def chunks_per_128_frames(self) -> float:
        return 128 / self.frames_per_chunk

    @property
    def video_tokens(self) -> int:
        grid = self.image_size // self.patch_size
        return (self.frames_per_chunk // self.tubelet_frames) * grid * grid

    @property
    def audio_tokens(self) -> int:
        if not self.use_audio:
            return 0
        return (self.mel_frames_per_chunk // self.audio_patch_time) * (
            self.n_mels // self.audio_patch_mels
        )

    @property
    def context_tokens(self) -> int:
        """Tokens the text decoder cross-attends to: the last W chunks' latents."""
        return self.window_chunks * self.latents_per_chunk

    @property
    def max_text_tokens(self) -> int:
        """BOS + question + SEP + answer (+ EOS)."""
        return self.max_question_tokens + self.max_answer_tokens + 3

    # ---- presets and serialisation ----------------------------------------------
    @classmethod
    def preset(cls, name: str) -> MirasolConfig:
        try:
            fields = PRESETS[name]
        except KeyError:
            raise UsageError(
                f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
            ) from None
        return cls(name=name, **fields)

    def replace(self, **changes: Any) -> MirasolConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MirasolConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def hash(self) -> str:
        """Stable sha256 of every dimension; engines built from this config carry it."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # ---- validation ---------------------------------------------------------------
    def _validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise UsageError(f"MirasolConfig.{key}: {why}")

        need(self.combiner in COMBINERS, "combiner", f"must be one of {COMBINERS}, got {self.combiner!r}")
        need(self.fps > 0, "fps", "must be positive")
        need(self.frames_per_chunk % self.tubelet_frames == 0, "frames_per_chunk",
             f"{self.frames_per_chunk} is not a multiple of tubelet_frames={self.tubelet_frames}")
        need(self.image_size % self.patch_size == 0, "image_size",
             f"{self.image_size} is not a multiple of patch_size={self.patch_size}")
        samples = self.sample_rate * self.frames_per_chunk / self.fps
        need(abs(samples - round(samples)) < 1e-6, "sample_rate",
             f"a chunk of {self.chunk_seconds}s is not a whole number of samples")
        need(round(samples) % self.hop_length == 0, "hop_length",
             f"{round(samples)} samples per chunk is not a multiple of hop_length={self.hop_length}")
        if self.use_audio:
            need(self.mel_frames_per_chunk % self.audio_patch_time == 0, "audio_patch_time",
                 f"{self.mel_frames_per_chunk} mel frames per chunk is not a multiple of {self.audio_patch_time}")
            need(self.n_mels % self.audio_patch_mels == 0, "audio_patch_mels",
                 f"n_mels={self.n_mels} is not a multiple of {self.audio_patch_mels}")
        for prefix in ("video", "audio", "combiner", "ar", "text"):
            width, heads = getattr(self, f"{prefix}_width"), getattr(self, f"{prefix}_heads")
            need(width % heads == 0, f"{prefix}_width", f"{width} is not divisible by {prefix}_heads={heads}")
        need(self.window_chunks >= 1, "window_chunks", "must be at least 1")
        need(self.latents_per_chunk >= 1, "latents_per_chunk", "must be at least 1")
        need(self.vocab_size >= 260, "vocab_size", "must hold 256 bytes and 4 special tokens")


PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests and the bundled demo model: 1 s chunks of 4 frames at 32x32.
    "tiny": {},
    # Sized for an 8 GB Jetson Orin Nano: ~150M parameters, 2 s chunks at 112x112.
    "edge": dict(
        fps=8.0, frames_per_chunk=16, image_size=112, tubelet_frames=2, patch_size=16,
        n_mels=64, audio_patch_time=10, audio_patch_mels=16,
        video_width=384, video_depth=8, video_heads=6,
        audio_width=256, audio_depth=6, audio_heads=4,
        combiner_width=512, combiner_depth=2, combiner_heads=8,
        latents_per_chunk=16, ttm_memory_size=32,
        ar_width=768, ar_depth=12, ar_heads=12, window_chunks=16,
        text_width=512, text_depth=8, text_heads=8,
        max_question_tokens=64, max_answer_tokens=32,
    ),
    # The paper's 3B: most parameters in the audio-video autoregressive model.
    "mirasol3b": dict(
        fps=8.0, frames_per_chunk=16, image_size=224, tubelet_frames=2, patch_size=16,
        n_mels=128, audio_patch_time=10, audio_patch_mels=16,
        video_width=768, video_depth=12, video_heads=12,
        audio_width=768, audio_depth=12, audio_heads=12,
        combiner_width=1024, combiner_depth=4, combiner_heads=16,
        latents_per_chunk=32, ttm_memory_size=64,
        ar_width=2048, ar_depth=40, ar_heads=16, window_chunks=32,
        text_width=1536, text_depth=18, text_heads=12,
        vocab_size=32000, max_question_tokens=128, max_answer_tokens=64,
    ),
}
