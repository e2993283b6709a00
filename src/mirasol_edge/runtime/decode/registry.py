"""The decoder registry: every name ``chunks(decoder=...)`` takes besides ``auto``, and how it
opens a ``Source`` (events.py) for the one assembler (assemble.py).

``pyav`` and ``dali-*`` open on PyAV's container, which chunks.py opened and checked (DALI takes
its audio and the declared duration from it); the GStreamer decoders open their own pipelines.
A new decoder is an opener registered here; choose.py decides which one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .events import Source
from .types import ChunkSpec


@dataclass(frozen=True)
class Request:
    """What chunks() knows when it opens a decoder."""

    source: Any  # path, URL, bytes, camera or ``gst:`` description
    name: str  # the source as messages name it
    spec: ChunkSpec
    timeout: float | tuple[float, float] = 10.0  # seconds, or (open, read)
    audio: Any = None  # a second audio source (GStreamer)
    audio_offset: float = 0.0
    device_frames: bool = False  # dali-gpu: frames stay on the GPU
    container: Any = None  # PyAV's open container (pyav, dali-*)
    rate: Fraction | None = None  # dali-*: the measured constant frame rate


Opener = Callable[[Request], Source]
_OPENERS: dict[str, Opener] = {}


def register(name: str, opener: Opener) -> None:
    if name == "auto":
        raise ValueError("'auto' is chunks()'s choice among the decoders, not a decoder")
    _OPENERS[name] = opener


def names() -> tuple[str, ...]:
    return tuple(_OPENERS)


def open_source(name: str, request: Request) -> Source:
    opener = _OPENERS.get(name)
    if opener is None:
        raise KeyError(f"no decoder named {name!r}; registered: {', '.join(_OPENERS)}")
    return opener(request)


# Imported when opened: DALI and GStreamer are optional, and GStreamer's libraries load only if used.
def _pyav(request: Request) -> Source:
    from .pyav_source import PyAVSource

    return PyAVSource(request.container, request.name, request.spec.sample_rate)


def _dali(decoder: str) -> Opener:
    def open_dali(request: Request) -> Source:
        from .dali import DaliSource

        return DaliSource(request.source, request.container, request.name, request.spec, decoder, request.rate,
                          request.device_frames)

    return open_dali


def _gstreamer(variant: str) -> Opener:
    def open_gstreamer(request: Request) -> Source:
        from .gst_source import GstSource

        return GstSource(request.source, request.spec, variant, request.audio, request.audio_offset,
                         timeout=request.timeout)

    return open_gstreamer


register("pyav", _pyav)
register("dali-cpu", _dali("dali-cpu"))
register("dali-gpu", _dali("dali-gpu"))
register("gstreamer", _gstreamer("auto"))  # hardware decoders first where GStreamer has them
register("gstreamer-software", _gstreamer("software"))
register("gstreamer-hardware", _gstreamer("hardware"))
