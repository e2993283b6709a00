"""What decoding produces and how it fails: the chunk spec, the chunk, its flags, and the
``DecodeError`` family (each names the source and the problem)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from mirasol_edge.errors import MirasolError

LIVE_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "/dev/", "gst:")  # not files on disk
MEDIA_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".ts", ".m4v")  # a folder's video files


class DecodeError(MirasolError):
    """Media could not be turned into chunks; the message names the source and the problem."""

    exit_code = 3


class EmptySource(DecodeError): ...


class NotMedia(DecodeError): ...


class NoVideoStream(DecodeError): ...


class UnsupportedCodec(DecodeError): ...


class AbsurdDimensions(DecodeError): ...


class TruncatedMedia(DecodeError): ...


class ShortSource(DecodeError): ...


class Flags(enum.IntFlag):
    NONE = 0
    PADDED = 1  # last partial chunk, padded
    SILENT = 2  # the source has no audio track: the mel is of silence
    DAMAGED = 4  # frames in this chunk were lost (corrupt packets, or a gap the demuxer skipped)
    AUDIO_CHANGED = 8  # the audio's rate, layout or format changed here: resampled afresh from this chunk
    AUDIO_GAP = 16  # a second audio source stalled, failed or ended: silence where its audio is missing


@dataclass(frozen=True)
class ChunkSpec:
    """What the model eats. Build it from the model config or an engine manifest."""

    fps: float
    frames_per_chunk: int
    image_size: int
    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int

    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk / self.fps

    @property
    def samples_per_chunk(self) -> int:
        return round(self.sample_rate * self.chunk_seconds)

    @classmethod
    def from_config(cls, config: Any) -> ChunkSpec:
        """From a ``MirasolConfig`` or its dict (a manifest's ``model.config``)."""
        get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
        return cls(**{k: get(k) for k in cls.__dataclass_fields__})


@dataclass
class Chunk:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    mel: np.ndarray  # [T, n_mels] float32 dB
    t0: float
    t1: float
    index: int
    flags: Flags
    damaged_frames: int = 0  # frames lost in this chunk: undecodable packets and gaps in the timestamps
    decoder: str = "pyav"  # which path decoded the video: pyav, dali-cpu, dali-gpu, gstreamer:<element>
    audio_offset: float = 0.0  # seconds added to a second audio source's timestamps (gst_source.py)
    # [S] float32 mono at ``ChunkSpec.sample_rate``: exactly [t0, t1), the samples the mel was computed
    # from (zeros where the source has none: Flags.SILENT / AUDIO_GAP); one chunk's worth, a fresh array
    audio: np.ndarray | None = None
