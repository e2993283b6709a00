"""PyAV (FFmpeg) as a decoder: one pass over the packets, video and audio in demux order.

Video frames go out as they decoded (``PyAVPicture``: converted by colour.py only if the model's
clock samples them); audio is resampled to the model's mono rate, afresh when the
stream changes its format. DALI's source takes its audio from here too (``demux`` with no video).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import av
import numpy as np

from . import colour
from .events import Audio, AudioChanged, Damaged, Decoding, Ended, Event, Progress, Video
from .types import DecodeError, NotMedia, TruncatedMedia, UnsupportedCodec

log = logging.getLogger(__name__)


def frame_colour(frame: av.VideoFrame) -> colour.Colour:
    """The policy's conversion for this frame's tags (an older PyAV has none on frames: untagged)."""
    return colour.from_av(getattr(frame, "colorspace", None), getattr(frame, "color_range", None),
                          frame.format.name, frame.width, frame.height)


class PyAVPicture:
    """A decoded frame (PyAV's, or GStreamer's copied into one: ``bare``) and the conversion the policy
    chose for it (None: from the frame's own tags), converted only if the model's clock samples it."""

    __slots__ = ("frame", "colour", "bare")

    def __init__(self, frame: av.VideoFrame, picture_colour: colour.Colour | None = None, bare: bool = False) -> None:
        self.frame, self.colour, self.bare = frame, picture_colour, bare

    def to_rgb(self, size: int) -> np.ndarray:
        try:
            picture = self.frame if self.bare else colour.bare(self.frame)
            return colour.convert(picture, self.colour or frame_colour(self.frame), size)
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecodeError(f"a {self.frame.format.name} {self.frame.width}x{self.frame.height} frame could "
                              f"not be converted to RGB: {exc}") from None


def _time(frame) -> float | None:
    return float(frame.time) if frame.time is not None else None


def demux(container, vstream, astream, rate: int, name: str) -> Iterator[Event]:
    """Video, audio and damage events in demux order (``vstream`` None: audio only)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate) if astream else None
    audio_format = None  # (format, layout, rate) the resampler was set up for: real streams change it
    streams = ([vstream] if vstream is not None else []) + ([astream] if astream else [])
    for packet in container.demux(*streams):
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError:
            yield Damaged(1)
            continue
        except av.error.DecoderNotFoundError as exc:
            codec = getattr(packet.stream.codec_context, "name", None) or f"its {packet.stream.type} stream"
            raise UnsupportedCodec(f"{name}: no decoder for {codec} ({exc})") from None
        for frame in decoded:
            if packet.stream is vstream:
                yield Video(_time(frame), PyAVPicture(frame))
                continue
            incoming = (frame.format.name, frame.layout.name, frame.sample_rate)
            if audio_format is not None and incoming != audio_format:
                # PyAV's resampler refuses a frame unlike its first: flush it, start a new one.
                for out in resampler.resample(None):
                    yield Audio(None, out.to_ndarray().reshape(-1))
                resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
                log.warning("%s: audio changed to %s, %s, %d Hz at %.2fs; resampling afresh", name, *incoming,
                            _time(frame) or 0.0)
                yield AudioChanged(_time(frame))
            audio_format = incoming
            try:
                resampled = resampler.resample(frame)
            except ValueError as exc:  # PyAV's own, for a frame it cannot take
                raise DecodeError(f"{name}: audio frame at {_time(frame) or 0.0:.2f}s cannot be resampled "
                                  f"({incoming[0]}, {incoming[1]}, {incoming[2]} Hz): {exc}") from None
            for out in resampled:
                yield Audio(_time(out) or 0.0, out.to_ndarray().reshape(-1))
    if resampler is not None:
        for out in resampler.resample(None):
            yield Audio(None, out.to_ndarray().reshape(-1))


def declared(container, vstream) -> Ended:
    """What the container says: its duration, and the frame period if its rate is plausible (a
    damaged header can declare any rate: 1/134217 fps was seen)."""
    rate = float(vstream.average_rate or 0)
    return Ended(float(container.duration) / 1e6 if container.duration else None,
                 1.0 / rate if 1.0 <= rate <= 1000.0 else None)


class PyAVSource:
    """The ``pyav`` decoder: an open container (chunks.py opened and checked it); closes it."""

    audio_by_time = False
    audio_offset = 0.0

    def __init__(self, container, name: str, sample_rate: int) -> None:
        self.container, self.name, self.sample_rate = container, name, sample_rate
        self.vstream = container.streams.video[0]
        self.vstream.thread_type = "AUTO"
        self.astream = container.streams.audio[0] if container.streams.audio else None
        self.has_audio = self.astream is not None

    def events(self, progress: Progress) -> Iterator[Event]:
        yield Decoding("pyav")
        frames = 0
        try:
            for event in demux(self.container, self.vstream, self.astream, self.sample_rate, self.name):
                frames += isinstance(event, Video)
                yield event
        except av.error.FFmpegError as exc:
            if not frames:
                raise NotMedia(f"{self.name}: cannot decode ({exc})") from None
            raise TruncatedMedia(f"{self.name}: decoding stopped after {frames} video frames: {exc}") from None
        if not frames:
            raise NotMedia(f"{self.name}: no decodable video frames")
        yield declared(self.container, self.vstream)

    def close(self) -> None:
        self.container.close()
