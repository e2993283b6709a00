"""Media -> time-aligned chunks of frames and log-mel, decoded sequentially (PyAV, DALI, or
GStreamer: ``gst:`` sources and ``decoder="gstreamer"``). Which decoder runs is choose.py's;
each is a ``Source`` in the registry (registry.py) feeding the one assembler (assemble.py), whose
timing rules and colour policy (colour.py) are the same for all. Decoding is one pass over the
packets: the cost per chunk does not depend on the position in the file, and memory holds one
chunk of frames and audio.

Last partial chunk: ``last="pad"`` repeats the last frame, pads silence and sets
``Flags.PADDED``; ``last="drop"`` drops it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import av

from mirasol_edge.errors import UsageError

from . import registry
from .assemble import assemble
from .choose import choose_decoder, wants_gstreamer
from .mel import log_mel
from .types import (
    LIVE_PREFIXES,
    AbsurdDimensions,
    Chunk,
    ChunkSpec,
    DecodeError,
    EmptySource,
    Flags,
    NotMedia,
    NoVideoStream,
    ShortSource,
    TruncatedMedia,
    UnsupportedCodec,
)

__all__ = ["LIVE_PREFIXES", "AbsurdDimensions", "Chunk", "ChunkSpec", "DecodeError", "EmptySource", "Flags",
           "NoVideoStream", "NotMedia", "ShortSource", "TruncatedMedia", "UnsupportedCodec", "chunks", "open_media"]
MAX_DIMENSION = 16384


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
    elif isinstance(source, (str, Path)) and not str(source).startswith(LIVE_PREFIXES):
        path = Path(source)
        if not path.is_file():
            raise DecodeError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise EmptySource(f"{path}: empty file")
    elif str(source).startswith("/dev/video"):
        options["format"] = "v4l2"
    try:
        # Damaged metadata (titles, tags) is no reason to refuse the media: read it leniently.
        return av.open(source if not isinstance(source, Path) else str(source), timeout=timeout,
                       metadata_errors="replace", **options)
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


DECODERS = ("auto", *registry.names())  # as shipped; registry.register adds more


def chunks(source: Any, spec: ChunkSpec, last: str = "pad", timeout: Any = 10.0,
           decoder: str = "auto", mel: str = "auto", audio: Any = None, audio_offset: float = 0.0,
           device_frames: bool = False, resume: tuple[int, float] | None = None) -> Iterator[Chunk]:
    """Yield ``Chunk``s from a file, URL, camera or bytes, sequentially (see module docstring).

    ``decoder``: ``auto`` picks DALI's NVDEC decoder on a GPU (H.264, HEVC, VP9, AV1; constant
    frame rate files) and PyAV for everything else: CPU-only machines, Jetson, live sources,
    variable frame rate. DALI's CPU decoder (VP9, MJPEG) runs when asked for (``dali-cpu``):
    on the 2-core benchmark machine it was 3-5x slower than PyAV at 640x360 (bench/decode.py).
    ``Chunk.decoder`` reports which one ran. Every decoder gives the same pixels: colour.py's
    policy (the stream's tagged matrix and range, one stated rule where it has none) and resize.

    GStreamer (``gst.py``) decodes ``gst:`` pipeline sources, anything with ``decoder="gstreamer"``
    (hardware decoders first where GStreamer has them; ``-software`` / ``-hardware`` to insist),
    files and URLs under ``auto`` on a Jetson, and any source given a second ``audio`` source
    (``alsa:hw:2,0``, ``pulse:``, ``gst:...``, a file; ``audio_offset`` seconds added to its times).

    ``device_frames``: with DALI's NVDEC decoder, ``Chunk.frames`` stay on the GPU (``DeviceFrames``)
    and a TensorRT stream copies them device to device into its input (elsewhere they are read
    through the host).

    ``mel``: ``numpy``, ``dali`` (DALI's operators, on the GPU with the NVDEC decoder) or
    ``auto`` (DALI with NVDEC, else numpy); both match the model's torch mel (tested).

    ``resume``: the (index, t0) of the first chunk, for a source reopened after a failure (live.py):
    its chunks go on counting and on the same timeline instead of starting again from 0.
    """
    if last not in ("pad", "drop"):
        raise UsageError(f"last must be 'pad' or 'drop', got {last!r}")
    if decoder != "auto" and decoder not in registry.names():
        raise UsageError(f"decoder must be one of {('auto', *registry.names())}, got {decoder!r}")
    name = _describe(source)
    timeout = tuple(timeout) if isinstance(timeout, (tuple, list)) else float(timeout)
    request = registry.Request(source, name, spec, timeout, audio, audio_offset, device_frames)
    if wants_gstreamer(source, decoder, audio):
        chosen = decoder if decoder.startswith("gstreamer") else "gstreamer"
        mel_fn = _mel_function(spec, mel, chosen)
        yield from assemble(registry.open_source(chosen, request), spec, last, mel_fn, resume)
        return
    container = open_media(source, timeout)
    try:
        vstream = _check_video(container, name)
        chosen, rate = choose_decoder(decoder, source, vstream, name)
        mel_fn = _mel_function(spec, mel, chosen)
        if device_frames and chosen != "dali-gpu":
            raise UsageError(f"{name}: device_frames needs DALI's NVDEC decoder (decoder='dali-gpu' on a GPU), "
                             f"and this source decodes with {chosen}")
        opened = registry.open_source(chosen, replace(request, container=container, rate=rate))
    except BaseException:
        container.close()
        raise
    yield from assemble(opened, spec, last, mel_fn, resume)


def _mel_function(spec: ChunkSpec, mel: str, decoder: str):
    if mel not in ("auto", "numpy", "dali"):
        raise UsageError(f"mel must be 'auto', 'numpy' or 'dali', got {mel!r}")
    if mel == "numpy" or (mel == "auto" and decoder != "dali-gpu"):
        return lambda samples: log_mel(samples, spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels)
    from . import dali

    if not dali.available():
        raise DecodeError("mel='dali' needs DALI (pip install 'mirasol-edge[dali]')")
    return dali.LogMel(spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels,
                       "gpu" if decoder == "dali-gpu" else "cpu")


def _check_video(container, name: str):
    if not container.streams.video:
        raise NoVideoStream(f"{name}: no video stream (streams: {[s.type for s in container.streams]})")
    vstream = container.streams.video[0]
    ctx = vstream.codec_context
    if ctx is None:  # FFmpeg could not tell the codec: a damaged header
        raise UnsupportedCodec(f"{name}: the video stream's codec cannot be identified (damaged header?)")
    if ctx.width == 0 or ctx.height == 0:
        raise TruncatedMedia(f"{name}: the video stream's size cannot be read (0x0): damaged or truncated header")
    if not (0 < ctx.width <= MAX_DIMENSION and 0 < ctx.height <= MAX_DIMENSION):
        raise AbsurdDimensions(f"{name}: video is {ctx.width}x{ctx.height}; expected 1..{MAX_DIMENSION} per side")
    return vstream
