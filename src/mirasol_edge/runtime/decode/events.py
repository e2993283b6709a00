"""The decoder seam: what every decoder (registry.py: PyAV, DALI CPU/GPU, GStreamer) hands the one
``Assembler`` (assemble.py), and nothing else.

A decoder is a ``Source``: a few facts known when it opens, and ``events()``, one time-ordered
stream of the events below, starting with ``Decoding`` (its name). Times are the source's own
presentation timestamps, in seconds, or None where it has none; turning them into the model's
clock, chunk indices and chunk times is the assembler's alone (its ``Timeline``): missing
stamps, broken jumps, gaps and the end of the video are decided there, the same way for every
decoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Picture(Protocol):
    """A decoded frame, converted only if the model's clock samples it (colour.py's policy)."""

    def to_rgb(self, size: int) -> np.ndarray: ...  # [size, size, 3] uint8


@dataclass(frozen=True, slots=True)
class Decoding:
    """Which decoder this is, as ``Chunk.decoder`` reports it (GStreamer learns its element late)."""

    decoder: str


@dataclass(frozen=True, slots=True)
class Video:
    time: float | None
    picture: Any  # a Picture; or RGB already at the model's size (an array, or DALI's DeviceFrame)


@dataclass(frozen=True, slots=True)
class Audio:
    time: float | None  # None: follows the previous samples (a resampler's tail)
    samples: np.ndarray  # mono float32 at the spec's sample rate


@dataclass(frozen=True, slots=True)
class Damaged:
    """Frames lost here: packets that did not decode."""

    frames: int = 1


@dataclass(frozen=True, slots=True)
class AudioChanged:
    """The audio's format, layout or rate changed: resampled afresh from here (flagged)."""

    time: float | None


@dataclass(frozen=True, slots=True)
class AudioEnded:
    """No more audio (a second source ended or failed): later chunks go out without waiting."""


@dataclass(frozen=True, slots=True)
class AudioLate:
    """A live audio source kept a chunk waiting too long: it goes out with silence for what is missing."""


@dataclass(frozen=True, slots=True)
class Ended:
    """The video is over. ``duration``: what the container declares (a shorter video is truncated);
    ``frame_period``: the declared frame period, for the last frame's length when none was measured."""

    duration: float | None = None
    frame_period: float | None = None


Event = Decoding | Video | Audio | Damaged | AudioChanged | AudioEnded | AudioLate | Ended


class Progress(Protocol):
    """What a decoder may read back from the assembler to pace itself (GStreamer's audio read-ahead)."""

    @property
    def audio_end_time(self) -> float | None: ...

    @property
    def video_end_time(self) -> float: ...  # when the last frame so far stops showing

    @property
    def chunk_waiting(self) -> bool: ...  # a chunk's frames are all there; its audio is not


class Source(Protocol):
    name: str  # for messages: the path, URL or description
    has_audio: bool
    audio_by_time: bool  # place audio by its timestamps (a second, live source) or back to back (a file)
    audio_offset: float  # seconds added to a second audio source's timestamps (reported per chunk)

    def events(self, progress: Progress) -> Iterator[Event]: ...

    def close(self) -> None: ...
