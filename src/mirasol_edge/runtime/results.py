"""What a push takes and returns, and what a question returns; and the checks both get where
they enter (in-process, on the client and on the server alike), before any work is done."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from mirasol_edge.errors import MirasolError, UsageError

# A question is a sentence: one over this many bytes of UTF-8 is refused before it is tokenized.
# The byte tokenizer gives one token per byte, so this bounds its tokens too; the engines read at
# most their ``max_question_tokens`` of them (the rest is cut, with a warning).
MAX_QUESTION_BYTES = 4096


@dataclass(frozen=True)
class PushTimings:
    upload_ms: float
    encode_ms: float  # encoders + Combiner
    ar_ms: float  # one AR step against the ring buffer
    total_ms: float
    watch_ms: float = 0.0  # the closed-set watches scored on this push (part of total_ms)


@dataclass(frozen=True)
class ChunkResult:
    index: int  # 0 for the first chunk this stream saw
    outputs: np.ndarray  # [m, ar_width] the AR model's outputs for this chunk
    timings: PushTimings
    t0: float | None = None
    t1: float | None = None
    flags: int = 0
    events: tuple = ()  # the WatchEvents this push fired (runtime.watch), in the order the watches were added


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


class ChunkValueError(ChunkShapeError):
    """A pushed chunk has the right shape but values or a kind the engines can't take (NaN, text)."""


def preview(text: str, limit: int = 60) -> str:
    """A long text cut for a message: its start and its length."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check_question(question, what: str = "question") -> str:
    """The question, or a ``UsageError`` naming what is wrong: not text, empty, not encodable as
    UTF-8 (a lone surrogate), or over ``MAX_QUESTION_BYTES``."""
    if not isinstance(question, str):
        raise UsageError(f"{what} must be text, got {type(question).__name__}")
    if not question.strip():
        raise UsageError(f"{what} is empty")
    try:
        size = len(question.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise UsageError(f"{what} is not valid Unicode text ({exc.reason} at character {exc.start}): "
                         f"{preview(question)}") from None
    if size > MAX_QUESTION_BYTES:
        raise UsageError(f"{what} is {size} bytes; at most {MAX_QUESTION_BYTES} are taken: {preview(question)}")
    return question


def check_max_new_tokens(value) -> int | None:
    """``max_new_tokens`` as an int (None: the engines' limit), or a ``UsageError``: a whole
    number of at least 1 (values over the engines' limit are capped to it where they are used)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"max_new_tokens must be a whole number of at least 1, got {type(value).__name__} "
                         f"{preview(str(value), 40)}")
    if value < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {value}")
    return int(value)


def prepare_chunk(chunk, video_shape: tuple, video_dtype: np.dtype,
                  mel_shape: tuple | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A chunk's frames as the engines' video input, and its mel; a wrong shape, a wrong kind of
    array (text, objects) and values that are not finite (NaN, infinity) are named."""
    frames = getattr(chunk, "frames", None)
    if frames is None:
        raise ChunkShapeError("chunk has no frames")
    if hasattr(frames, "copy_into"):  # DeviceFrames: on the GPU, checked without a copy
        if tuple(frames.shape) != video_shape or video_dtype != np.uint8:
            raise ChunkShapeError(f"chunk frames on the GPU: {list(frames.shape)} uint8; these engines take "
                                  f"{list(video_shape)} {np.dtype(video_dtype).name}")
        return frames, _mel(chunk, mel_shape)
    frames = _array(frames, "frames", "uif")
    if tuple(frames.shape) != video_shape:
        raise ChunkShapeError(
            f"chunk frames: expected shape {list(video_shape)} (frames, height, width, RGB) for these "
            f"engines, got {list(frames.shape)}"
        )
    if video_dtype == np.uint8:  # the engines scale on their device (builds from this version on)
        if frames.dtype != np.uint8:
            raise ChunkShapeError(f"chunk frames: these engines take uint8 RGB, got {frames.dtype}")
        return np.ascontiguousarray(frames), _mel(chunk, mel_shape)
    if frames.dtype != np.uint8 and frames.dtype.kind != "f":
        raise ChunkValueError(f"chunk frames: these engines take uint8 RGB or floats in [0, 1], got {frames.dtype}")
    video = frames.astype(video_dtype) / 255.0 if frames.dtype == np.uint8 else frames
    return _finite(video.astype(video_dtype, copy=False), "frames"), _mel(chunk, mel_shape)


def _array(value, what: str, kinds: str) -> np.ndarray:
    """``value`` as an array of numbers (dtype kind in ``kinds``), or the error that names it."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ChunkValueError(f"chunk {what}: not an array of numbers ({exc})") from None
    if array.dtype.kind not in kinds:
        raise ChunkValueError(f"chunk {what}: an array of numbers expected, got {type(value).__name__} "
                              f"of dtype {array.dtype}")
    return array


def _finite(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ChunkValueError(f"chunk {what}: {bad} of {array.size} values are NaN or infinite")
    return array


def _mel(chunk, mel_shape: tuple | None) -> np.ndarray | None:
    mel = None
    if mel_shape is not None:
        mel = getattr(chunk, "mel", None)
        if mel is None:
            raise ChunkShapeError(f"chunk mel: these engines need audio of shape {list(mel_shape)}")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
            mel = _array(mel, "mel", "fiu").astype(np.float32, copy=False)
        if tuple(mel.shape) != mel_shape:
            raise ChunkShapeError(
                f"chunk mel: expected shape {list(mel_shape)} (mel frames, mel bins), got {list(mel.shape)}"
            )
        _finite(mel, "mel")
    return mel
