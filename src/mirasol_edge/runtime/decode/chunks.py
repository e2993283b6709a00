"""Media -> time-aligned chunks of frames and log-mel, decoded sequentially (PyAV, DALI, or
GStreamer: ``gst:`` sources and ``decoder="gstreamer"``). The timing rules are the
assembler's (``assemble.py``). Decoding is one pass over the packets: the cost per chunk does
not depend on the position in the file, and memory holds one chunk of frames and audio.

Last partial chunk: ``last="pad"`` repeats the last frame, pads silence and sets
``Flags.PADDED``; ``last="drop"`` drops it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from mirasol_edge.errors import UsageError

from .assemble import Assembler
from .choose import choose_decoder
from .events import dali_events, pyav_events
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
log = logging.getLogger(__name__)
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


DECODERS = ("auto", "pyav", "dali-cpu", "dali-gpu", "gstreamer", "gstreamer-software", "gstreamer-hardware")


def chunks(source: Any, spec: ChunkSpec, last: str = "pad", timeout: Any = 10.0,
           decoder: str = "auto", mel: str = "auto", audio: Any = None, audio_offset: float = 0.0,
           device_frames: bool = False) -> Iterator[Chunk]:
    """Yield ``Chunk``s from a file, URL, camera or bytes, sequentially (see module docstring).

    ``decoder``: ``auto`` picks DALI's NVDEC decoder on a GPU (H.264, HEVC, VP9, AV1; constant
    frame rate files) and PyAV for everything else: CPU-only machines, Jetson, live sources,
    variable frame rate. DALI's CPU decoder (VP9, MJPEG) runs when asked for (``dali-cpu``):
    on the 2-core benchmark machine it was 3-5x slower than PyAV at 640x360 (bench/decode.py).
    ``Chunk.decoder`` reports which one ran.

    GStreamer (``gst.py``) decodes ``gst:`` pipeline sources, anything with ``decoder="gstreamer"``
    (hardware decoders first where GStreamer has them; ``-software`` / ``-hardware`` to insist),
    files and URLs under ``auto`` on a Jetson, and any source given a second ``audio`` source
    (``alsa:hw:2,0``, ``pulse:``, ``gst:...``, a file; ``audio_offset`` seconds added to its times).

    ``device_frames``: with DALI's NVDEC decoder, ``Chunk.frames`` stay on the GPU (``DeviceFrames``)
    and a TensorRT stream copies them device to device into its input (elsewhere they are read
    through the host).

    ``mel``: ``numpy``, ``dali`` (DALI's operators, on the GPU with the NVDEC decoder) or
    ``auto`` (DALI with NVDEC, else numpy); both match the model's torch mel (tested).
    """
    if last not in ("pad", "drop"):
        raise UsageError(f"last must be 'pad' or 'drop', got {last!r}")
    if decoder not in DECODERS:
        raise UsageError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if _use_gstreamer(source, decoder, audio):
        from .gst_source import gst_chunks

        gst_decoder = decoder.removeprefix("gstreamer-") if decoder.startswith("gstreamer-") else "auto"
        yield from gst_chunks(source, spec, last, _mel_function(spec, mel, "gstreamer"), gst_decoder, audio,
                              audio_offset, timeout=tuple(timeout) if isinstance(timeout, (tuple, list)) else float(timeout))
        return
    name = _describe(source)
    container = open_media(source, timeout)
    try:
        vstream = _check_video(container, name)
        path, rate = choose_decoder(decoder, source, vstream, name)
        mel_fn = _mel_function(spec, mel, path)
        if device_frames and path != "dali-gpu":
            raise UsageError(f"{name}: device_frames needs DALI's NVDEC decoder (decoder='dali-gpu' on a GPU), "
                             f"and this source decodes with {path}")
        yield from _chunks(container, name, spec, last, vstream, path, (source, rate) if path != "pyav" else None,
                           mel_fn, device_frames)
    finally:
        container.close()


def _use_gstreamer(source: Any, decoder: str, audio: Any) -> bool:
    from . import dali, gst

    if decoder.startswith("gstreamer") or gst.is_gst(source) or audio is not None:
        return True
    # Jetson: DALI does not decode video there, and GStreamer has the hardware decoder.
    return decoder == "auto" and isinstance(source, (str, Path)) and dali.is_jetson() and gst.available()


def _mel_function(spec: ChunkSpec, mel: str, path: str):
    if mel not in ("auto", "numpy", "dali"):
        raise UsageError(f"mel must be 'auto', 'numpy' or 'dali', got {mel!r}")
    if mel == "numpy" or (mel == "auto" and path != "dali-gpu"):
        return lambda samples: log_mel(samples, spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels)
    from . import dali

    if not dali.available():
        raise DecodeError("mel='dali' needs DALI (pip install 'mirasol-edge[dali]')")
    return dali.LogMel(spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels,
                       "gpu" if path == "dali-gpu" else "cpu")


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


def _chunks(container, name: str, spec: ChunkSpec, last: str, vstream, path: str = "pyav",
            dali_source: tuple[Any, float] | None = None, mel_fn=None, device_frames: bool = False) -> Iterator[Chunk]:
    astream = container.streams.audio[0] if container.streams.audio else None
    vstream.thread_type = "AUTO"
    state = {"rate": spec.sample_rate, "last_time": 0.0, "decoded_video": 0, "period": None, "shift": 0.0}
    out = Assembler(spec, last, mel_fn, path, has_audio=astream is not None)
    events = (dali_events(dali_source, vstream, astream, container, name, spec, path, state, device_frames)
              if dali_source
              else pyav_events(container, vstream, astream, name, state))
    try:
        for kind, time, payload in events:
            if kind == "v":
                out.video(payload, time)
            elif kind == "a":
                out.audio_samples(time, payload)
            elif kind == "audio_changed":
                out.audio_format_changed()
                log.warning("%s: audio changed to %s, %s, %d Hz at %.2fs; resampling afresh", name, *payload, time)
            else:
                out.damaged(payload)
            yield from out.ready()
    except av.error.FFmpegError as exc:
        if not state["decoded_video"]:
            raise NotMedia(f"{name}: cannot decode ({exc})") from None
        raise TruncatedMedia(f"{name}: decoding stopped after {out.index} chunks: {exc}") from None
    except RuntimeError as exc:  # DALI reports decode failures as RuntimeError
        if dali_source is None:
            raise
        raise UnsupportedCodec(f"{name}: DALI ({path}) failed to decode: {str(exc).splitlines()[0]}") from None

    if not state["decoded_video"]:
        raise NotMedia(f"{name}: no decodable video frames")
    last_time = state["last_time"]
    declared = float(vstream.average_rate or 0)
    # A damaged header can declare any rate (1/134217 fps was seen): trust it only if plausible.
    frame_period = state["period"] or (1.0 / declared if 1.0 <= declared <= 1000.0 else 1.0 / spec.fps)
    yield from out.finish(last_time + frame_period)
    if out.index == 0:
        raise ShortSource(f"{name}: shorter than one chunk ({spec.chunk_seconds:g} s) and last='drop'")
    expected = float(container.duration) / 1e6 if container.duration else None
    if expected and last_time - state["shift"] + frame_period + 1.0 < expected:  # on the file's own clock
        raise TruncatedMedia(f"{name}: video ends at {last_time:.2f}s but the container says {expected:.2f}s")
