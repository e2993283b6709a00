"""Media -> time-aligned chunks of frames and log-mel, decoded sequentially with PyAV.

Time, not frame counts: output frame ``k`` of the stream is the last decoded frame whose
presentation time is <= ``t_start + k / fps`` (sample and hold), so variable frame rate
and B-frame reordering come out right. Chunk ``i`` covers ``[t0, t1)`` with
``t0 = t_start + i * chunk_seconds``, and its audio is the resampled mono samples of
exactly that window. Decoding is one pass over the packets: the cost per chunk does not
depend on the position in the file, and memory holds one chunk of frames and audio.

Last partial chunk: ``last="pad"`` repeats the last frame, pads silence and sets
``Flags.PADDED``; ``last="drop"`` drops it.
"""

from __future__ import annotations

import enum
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from .mel import log_mel

log = logging.getLogger(__name__)
MAX_DIMENSION = 16384
GAP_PERIODS = 2.5  # variable frame rate sources stretch a period to 2x; a real loss is longer


class DecodeError(Exception):
    """Media could not be turned into chunks; the message names the source and the problem."""


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
    def from_config(cls, config: Any) -> "ChunkSpec":
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


def _describe(source: Any) -> str:
    return "<bytes>" if isinstance(source, (bytes, bytearray, io.IOBase)) else str(source)


def open_media(source: Any, timeout: float | None = 10.0) -> av.container.InputContainer:
    """Open a path, URL, ``/dev/videoN`` camera or raw bytes, mapping failures to DecodeError."""
    name = _describe(source)
    options: dict[str, Any] = {}
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise EmptySource(f"{name}: empty input")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and not str(source).startswith(("rtsp://", "http://", "https://", "/dev/")):
        path = Path(source)
        if not path.is_file():
            raise DecodeError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise EmptySource(f"{path}: empty file")
    elif str(source).startswith("/dev/video"):
        options["format"] = "v4l2"
    try:
        return av.open(source if not isinstance(source, Path) else str(source), timeout=timeout, **options)
    except av.error.InvalidDataError as exc:
        if _looks_like_mp4(source):
            raise TruncatedMedia(
                f"{name}: an MP4/MOV file whose index (moov box) cannot be read: truncated, or still being "
                f"written ({exc})"
            ) from None
        raise NotMedia(f"{name}: not a media file FFmpeg can read ({exc})") from None
    except av.error.FFmpegError as exc:
        raise DecodeError(f"{name}: cannot open ({exc})") from None


def _looks_like_mp4(source: Any) -> bool:
    """ISO BMFF files start with a box whose type is ftyp (or the moov/mdat of older writers)."""
    try:
        if isinstance(source, io.IOBase):
            source.seek(0)
            head = source.read(12)
        else:
            with open(source, "rb") as f:
                head = f.read(12)
    except (OSError, TypeError):
        return False
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide")


class _VideoSampler:
    """Sample-and-hold resampling of decoded frames onto the model's frame clock."""

    def __init__(self, spec: ChunkSpec) -> None:
        self.spec = spec
        self.t_start: float | None = None
        self.next_k = 0
        self.held: av.VideoFrame | None = None
        self.held_rgb: np.ndarray | None = None

    def _rgb(self) -> np.ndarray:
        if self.held_rgb is None:
            size = self.spec.image_size
            self.held_rgb = self.held.reformat(width=size, height=size, format="rgb24").to_ndarray()
        return self.held_rgb

    def push(self, frame: av.VideoFrame, time: float) -> list[tuple[float, np.ndarray]]:
        out = []
        if self.t_start is None:
            self.t_start = time
        if self.held is not None:
            while self.t_start + self.next_k / self.spec.fps < time:
                out.append((self.t_start + self.next_k / self.spec.fps, self._rgb()))
                self.next_k += 1
        self.held, self.held_rgb = frame, None
        return out

    def flush(self, end_time: float) -> list[tuple[float, np.ndarray]]:
        out = []
        if self.held is None:
            return out
        while self.t_start + self.next_k / self.spec.fps < end_time:
            out.append((self.t_start + self.next_k / self.spec.fps, self._rgb()))
            self.next_k += 1
        return out


def _frame_time(frame: av.frame.Frame, fallback: float) -> float:
    return float(frame.time) if frame.time is not None else fallback


def chunks(source: Any, spec: ChunkSpec, last: str = "pad", timeout: float | None = 10.0) -> Iterator[Chunk]:
    """Yield ``Chunk``s from a file, URL, camera or bytes, sequentially (see module docstring)."""
    if last not in ("pad", "drop"):
        raise ValueError(f"last must be 'pad' or 'drop', got {last!r}")
    name = _describe(source)
    container = open_media(source, timeout)
    try:
        yield from _chunks(container, name, spec, last)
    finally:
        container.close()


def _chunks(container, name: str, spec: ChunkSpec, last: str) -> Iterator[Chunk]:
    if not container.streams.video:
        raise NoVideoStream(f"{name}: no video stream (streams: {[s.type for s in container.streams]})")
    vstream = container.streams.video[0]
    ctx = vstream.codec_context
    if ctx.width == 0 or ctx.height == 0:
        raise TruncatedMedia(f"{name}: the video stream's size cannot be read (0x0): damaged or truncated header")
    if not (0 < ctx.width <= MAX_DIMENSION and 0 < ctx.height <= MAX_DIMENSION):
        raise AbsurdDimensions(f"{name}: video is {ctx.width}x{ctx.height}; expected 1..{MAX_DIMENSION} per side")
    astream = container.streams.audio[0] if container.streams.audio else None
    vstream.thread_type = "AUTO"
    resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate) if astream else None

    sampler = _VideoSampler(spec)
    frames: list[np.ndarray] = []
    audio = np.zeros(0, dtype=np.float32)  # samples from audio_t0 on, trimmed as chunks go out
    audio_t0: float | None = None
    audio_done = astream is None
    index, damaged, decoded_video, last_time = 0, 0, 0, 0.0
    base_flags = Flags.SILENT if astream is None else Flags.NONE

    def chunk_audio(t0: float, t1: float) -> tuple[np.ndarray, bool]:
        """Samples of [t0, t1) and whether all of them are there yet."""
        n = spec.samples_per_chunk
        if audio_t0 is None:
            return np.zeros(n, np.float32), audio_done
        start = round((t0 - audio_t0) * spec.sample_rate)
        window = np.zeros(n, np.float32)
        lo, hi = max(start, 0), min(start + n, len(audio))
        if hi > lo:
            window[lo - start : hi - start] = audio[lo:hi]
        return window, audio_done or len(audio) >= start + n

    def ready(final: bool) -> Iterator[Chunk]:
        nonlocal frames, index, damaged, audio, audio_t0
        while len(frames) >= spec.frames_per_chunk or (final and frames):
            t0 = sampler.t_start + index * spec.chunk_seconds
            t1 = t0 + spec.chunk_seconds
            samples, complete = chunk_audio(t0, t1)
            if not complete and not final:
                return
            flags = base_flags
            take = frames[: spec.frames_per_chunk]
            if len(take) < spec.frames_per_chunk:
                if last == "drop":
                    frames = []
                    return
                take = take + [take[-1]] * (spec.frames_per_chunk - len(take))
                flags |= Flags.PADDED
            if damaged:
                flags |= Flags.DAMAGED
            mel = log_mel(samples, spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels)
            yield Chunk(np.stack(take), mel, t0, t1, index, flags, damaged)
            frames, index, damaged = frames[spec.frames_per_chunk :], index + 1, 0
            if audio_t0 is not None:  # keep memory bounded: drop audio before the next chunk
                cut = max(0, round((t1 - audio_t0) * spec.sample_rate))
                audio, audio_t0 = audio[cut:], audio_t0 + cut / spec.sample_rate

    # A corrupt stretch often decodes "fine": the demuxer resyncs and frames just go missing.
    # A gap of more than GAP_PERIODS frame periods in the timestamps counts as lost frames.
    period = 1.0 / float(vstream.average_rate) if vstream.average_rate else None
    streams = [vstream] + ([astream] if astream else [])
    try:
        for packet in container.demux(*streams):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                damaged += 1
                continue
            except av.error.DecoderNotFoundError as exc:
                raise UnsupportedCodec(f"{name}: no decoder for {packet.stream.codec_context.name} ({exc})") from None
            for frame in decoded:
                if packet.stream is vstream:
                    time = _frame_time(frame, last_time)
                    if period and decoded_video and time - last_time > GAP_PERIODS * period:
                        damaged += round((time - last_time) / period) - 1
                    last_time = time
                    decoded_video += 1
                    frames.extend(rgb for _, rgb in sampler.push(frame, time))
                else:
                    for out in resampler.resample(frame):
                        if audio_t0 is None:
                            audio_t0 = _frame_time(out, 0.0)
                        audio = np.concatenate([audio, out.to_ndarray().reshape(-1)])
            yield from ready(final=False)
    except av.error.FFmpegError as exc:
        if not decoded_video:
            raise NotMedia(f"{name}: cannot decode ({exc})") from None
        raise TruncatedMedia(f"{name}: decoding stopped after {index} chunks: {exc}") from None

    if resampler is not None:
        for out in resampler.resample(None):
            audio = np.concatenate([audio, out.to_ndarray().reshape(-1)])
    audio_done = True
    if not decoded_video:
        raise NotMedia(f"{name}: no decodable video frames")
    frame_period = 1.0 / float(vstream.average_rate or spec.fps)
    frames.extend(rgb for _, rgb in sampler.flush(last_time + frame_period))
    yield from ready(final=True)
    if index == 0:
        raise ShortSource(f"{name}: shorter than one chunk ({spec.chunk_seconds:g} s) and last='drop'")
    expected = float(container.duration) / 1e6 if container.duration else None
    if expected and last_time + frame_period + 1.0 < expected:
        raise TruncatedMedia(f"{name}: video ends at {last_time:.2f}s but the container says {expected:.2f}s")
