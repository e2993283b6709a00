"""What a push takes and returns, and what a question returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mirasol_edge.errors import MirasolError


@dataclass(frozen=True)
class PushTimings:
    upload_ms: float
    encode_ms: float  # encoders + Combiner
    ar_ms: float  # one AR step against the ring buffer
    total_ms: float


@dataclass(frozen=True)
class ChunkResult:
    index: int  # 0 for the first chunk this stream saw
    outputs: np.ndarray  # [m, ar_width] the AR model's outputs for this chunk
    timings: PushTimings
    t0: float | None = None
    t1: float | None = None
    flags: int = 0


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: list[int]
    chunks_seen: int  # the state that answered: after this many pushes
    truncated: bool  # the question was cut to the engines' maximum
    prefill_ms: float
    first_token_ms: float  # from the call to the first answer token
    decode_ms: float
    total_ms: float

    @property
    def ms_per_token(self) -> float:
        return self.decode_ms / max(1, len(self.tokens) - 1)


@dataclass
class RawChunk:
    """A chunk from anywhere but the decoder: frames [F,H,W,3] and mel [T,n_mels]."""

    frames: np.ndarray | None
    mel: np.ndarray | None
    t0: float | None = None
    t1: float | None = None
    flags: int = 0


class ChunkShapeError(MirasolError, ValueError):
    """A pushed chunk does not have the shape the engines were built for."""

    exit_code = 2


def prepare_chunk(chunk, video_shape: tuple, video_dtype: np.dtype,
                  mel_shape: tuple | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A chunk's frames as the engines' video input, and its mel; a wrong shape is named."""
    frames = getattr(chunk, "frames", None)
    if frames is None:
        raise ChunkShapeError("chunk has no frames")
    if hasattr(frames, "copy_into"):  # DeviceFrames: on the GPU, checked without a copy
        if tuple(frames.shape) != video_shape or video_dtype != np.uint8:
            raise ChunkShapeError(f"chunk frames on the GPU: {list(frames.shape)} uint8; these engines take "
                                  f"{list(video_shape)} {np.dtype(video_dtype).name}")
        return frames, _mel(chunk, mel_shape)
    frames = np.asarray(frames)
    if tuple(frames.shape) != video_shape:
        raise ChunkShapeError(
            f"chunk frames: expected shape {list(video_shape)} (frames, height, width, RGB) for these "
            f"engines, got {list(frames.shape)}"
        )
    if video_dtype == np.uint8:  # the engines scale on their device (builds from this version on)
        if frames.dtype != np.uint8:
            raise ChunkShapeError(f"chunk frames: these engines take uint8 RGB, got {frames.dtype}")
        return np.ascontiguousarray(frames), _mel(chunk, mel_shape)
    video = frames.astype(video_dtype) / 255.0 if frames.dtype == np.uint8 else frames
    return video.astype(video_dtype, copy=False), _mel(chunk, mel_shape)


def _mel(chunk, mel_shape: tuple | None) -> np.ndarray | None:
    mel = None
    if mel_shape is not None:
        mel = getattr(chunk, "mel", None)
        if mel is None:
            raise ChunkShapeError(f"chunk mel: these engines need audio of shape {list(mel_shape)}")
        mel = np.asarray(mel, dtype=np.float32)
        if tuple(mel.shape) != mel_shape:
            raise ChunkShapeError(
                f"chunk mel: expected shape {list(mel_shape)} (mel frames, mel bins), got {list(mel.shape)}"
            )
    return mel
