"""GStreamer sources: how a Jetson gets its frames (``nvarguscamerasrc`` CSI cameras,
``nvv4l2decoder`` hardware decoding, ``rtspsrc``), and any pipeline anywhere.

    chunks("gst:nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv", spec,
           audio="alsa:hw:2,0")                            # a CSI camera and a USB microphone
    chunks("rtsp://cam/stream", spec, decoder="gstreamer")  # RTSP through rtspsrc, hardware decode where there is one
    chunks("clip.mp4", spec, decoder="gstreamer")           # a file through uridecodebin

A ``gst:`` description produces raw video; this module appends an appsink taking the decoded
pictures as they are (I420, or RGB where the source gives RGB; videoconvert only repacks), and
colour.py turns them into the model's RGB by the one policy every decoder follows (GStreamer's
own conversion guessed untagged HD as BT.709 and read full-range H.264 in MP4 as limited). A
description that already ends in ``appsink name=video`` is used as it is.

Files and URLs go through ``uridecodebin``, which picks the decoder by rank: ``decoder="auto"``
prefers NVIDIA's hardware decoders where GStreamer has them, ``"software"`` refuses them.
``Chunk.decoder`` names the element that decoded (``gstreamer:nvv4l2decoder``, ``gstreamer:avdec_h264``).

Audio comes from the source itself, or from a second source (``audio=``: ``alsa:DEVICE``,
``pulse:[DEVICE]``, ``gst:DESCRIPTION``, a file). A second source runs as its own pipeline on
the video pipeline's clock and base time, so both are timestamped by one clock (GStreamer's
audio sources slave their sample clock to it, which absorbs the microphone's drift) and an
unplugged microphone cannot stop the video. See ``gst_source.py`` for the merge and its policy.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np

from ..native import gcc_unwinder_first
from . import colour
from .pyav_source import PyAVPicture
from .types import ChunkSpec, DecodeError, UnsupportedCodec

GST_PREFIX = "gst:"
HARDWARE_DECODERS = ("nvv4l2decoder", "nvh264dec", "nvh265dec", "nvvp9dec", "nvav1dec", "nvjpegdec")
GST_DECODERS = ("auto", "software", "hardware")
# FFmpeg's VP9 decoder ran 1.4x libvpx's (vp9dec, GStreamer's default) here: bench/decode.py.
FASTER_SOFTWARE = ("avdec_vp9",)
_INIT = threading.Lock()
_Gst = None


def gst():
    """The Gst module, initialised once; a clear error where PyGObject or GStreamer is missing."""
    global _Gst
    with _INIT:
        if _Gst is None:
            gcc_unwinder_first()  # before GStreamer brings libunwind (runtime/native.py says why)
            try:
                import gi

                gi.require_version("Gst", "1.0")
                gi.require_version("GstApp", "1.0")
                gi.require_version("GstBase", "1.0")
                gi.require_version("GstVideo", "1.0")
                # GstApp: the appsink's pull methods; GstBase: which sources are live; GstVideo: layouts.
                from gi.repository import Gst, GstApp, GstBase, GstVideo  # noqa: F401
            except (ImportError, ValueError) as exc:
                raise DecodeError(
                    f"GStreamer sources need PyGObject and GStreamer's typelibs ({exc}); on Jetson they come "
                    "with JetPack; elsewhere: apt-get install gir1.2-gstreamer-1.0 gstreamer1.0-plugins-base "
                    "gstreamer1.0-plugins-good gstreamer1.0-libav, and pip install 'mirasol-edge[gstreamer]'"
                ) from None
            Gst.init(None)
            _Gst = Gst
    return _Gst


def is_live(pipeline) -> bool:
    """Whether a source of the pipeline captures in real time (a camera, a microphone, the
    network), so that it can stall; a file cannot."""
    from gi.repository import GstBase

    Gst = gst()
    sources = pipeline.iterate_sources()
    while True:
        result, element = sources.next()
        if result != Gst.IteratorResult.OK:
            return False
        if isinstance(element, GstBase.BaseSrc) and element.is_live:  # the struct field GstBaseSrc.is_live
            return True


def available() -> bool:
    try:
        gst()
    except DecodeError:
        return False
    return True


def hardware_decoders() -> list[str]:
    registry = gst().Registry.get()
    return [name for name in HARDWARE_DECODERS if registry.find_feature(name, gst().ElementFactory.__gtype__)]


def prefer_decoders(decoder: str) -> None:
    """uridecodebin picks decoders by rank: raise NVIDIA's (auto, hardware) or drop them (software)."""
    if decoder not in GST_DECODERS:
        raise DecodeError(f"GStreamer decoder must be one of {', '.join(GST_DECODERS)}, got {decoder!r}")
    Gst = gst()
    present = hardware_decoders()
    if decoder == "hardware" and not present:
        raise UnsupportedCodec(f"no hardware video decoder in this GStreamer (looked for {', '.join(HARDWARE_DECODERS)})")
    registry = Gst.Registry.get()
    for name in present:
        feature = registry.find_feature(name, Gst.ElementFactory.__gtype__)
        feature.set_rank(Gst.Rank.NONE if decoder == "software" else Gst.Rank.PRIMARY + 100)
    for name in FASTER_SOFTWARE:
        feature = registry.find_feature(name, Gst.ElementFactory.__gtype__)
        if feature is not None:
            feature.set_rank(Gst.Rank.PRIMARY + 1)


def video_branch(spec: ChunkSpec) -> str:
    # No scaling here: colour.py resizes with the filter every decoder shares; videoconvert only
    # repacks (NV12 from hardware decoders to I420, BGRx to RGB), and passes I420 through.
    return ("queue max-size-buffers=8 ! videoconvert ! video/x-raw,format=(string){I420,RGB} ! "
            "appsink name=video sync=false async=false max-buffers=8 emit-signals=false")


def audio_branch(spec: ChunkSpec) -> str:
    return ("queue max-size-time=2000000000 ! audioconvert ! audioresample ! "
            f"audio/x-raw,format=F32LE,channels=1,rate={spec.sample_rate},layout=interleaved ! "
            "appsink name=audio sync=false async=false emit-signals=false max-buffers=64")


def is_gst(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(GST_PREFIX)


def uri_of(source: Any) -> str:
    text = str(source)
    if "://" in text:
        return text
    path = Path(text)
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    return path.resolve().as_uri()


def describe_video(source: Any, spec: ChunkSpec, with_audio: bool) -> str:
    """The pipeline description for a video source (and its own audio, when ``with_audio``)."""
    if is_gst(source):
        description = source[len(GST_PREFIX):].strip()
        if not description:
            raise DecodeError("gst: source with an empty pipeline description")
        return description if "name=video" in description else f"{description} ! {video_branch(spec)}"
    text = f"uridecodebin name=src uri={uri_of(source)} src. ! {video_branch(spec)}"
    return text + (f" src. ! {audio_branch(spec)}" if with_audio else "")


def describe_audio(source: Any, spec: ChunkSpec) -> str:
    """The pipeline description for a second audio source."""
    text = str(source)
    if text.startswith("alsa:"):
        device = text[len("alsa:"):]
        head = f"alsasrc device={device}" if device else "alsasrc"
    elif text.startswith("pulse:"):
        device = text[len("pulse:"):]
        head = f"pulsesrc device={device}" if device else "pulsesrc"
    elif is_gst(text):
        head = text[len(GST_PREFIX):].strip()
        if "name=audio" in head:
            return head
    else:
        head = f"uridecodebin uri={uri_of(text)} caps=audio/x-raw expose-all-streams=false"  # its video is ignored
    return f"{head} ! {audio_branch(spec)}"


def sample_time(sample) -> float | None:
    """A sample's running time (seconds: on the pipeline clock from its start, comparable between
    pipelines that share clock and base time)."""
    Gst = gst()
    buffer = sample.get_buffer()
    if buffer.pts == Gst.CLOCK_TIME_NONE:
        return None
    running = sample.get_segment().to_running_time(Gst.Format.TIME, buffer.pts)
    return (running if running != Gst.CLOCK_TIME_NONE else buffer.pts) / Gst.SECOND


def _copy(buffer) -> np.ndarray:
    ok, info = buffer.map(gst().MapFlags.READ)
    if not ok:
        raise DecodeError("a GStreamer buffer could not be read")
    try:
        return np.frombuffer(info.data, dtype=np.uint8).copy()
    finally:
        buffer.unmap(info)


def sample_audio(sample) -> np.ndarray:
    """A copy of an audio sample's mono float32 samples."""
    return _copy(sample.get_buffer()).view(np.float32)


# GstVideoColorMatrix nicks -> colour.py's matrices
GST_MATRIX = {"bt601": "bt601", "bt709": "bt709", "bt2020": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc",
              "rgb": "rgb"}


def caps_colour(structure, width: int, height: int, tags: colour.Colour | None = None) -> colour.Colour:
    """The policy for a picture's caps: ``tags`` where the stream's own were read another way (a
    file: FFmpeg reads its bitstream); else the caps' colorimetry, which a decoder leaves out when
    the stream does not say (then the policy's rule, not GStreamer's guess)."""
    if tags is not None:
        return tags
    text = structure.get_string("colorimetry")
    if not text:
        return colour.policy(None, None, width, height)
    from gi.repository import GstVideo

    parsed = GstVideo.VideoColorimetry()
    if not parsed.from_string(text):
        raise DecodeError(f"GStreamer caps have a colorimetry this GStreamer cannot parse: {text!r}")
    matrix = GST_MATRIX.get(parsed.matrix.value_nick)
    full = {"0-255": True, "16-235": False}.get(parsed.range.value_nick)
    return colour.policy(matrix, full, width, height)


class Layout(NamedTuple):
    """What a caps means for the bytes of its buffers."""

    format: str  # I420 or RGB
    width: int
    height: int
    stride: list  # bytes per row, per plane
    offset: list  # where each plane starts
    colour: colour.Colour
    size: int  # bytes a buffer holds at least


class GstPicture:
    """A video sample's bytes and layout; when the model's clock samples it, copied into a PyAV frame
    (I420 as yuv420p, RGB as rgb24) that colour.py converts exactly as it converts PyAV's own."""

    __slots__ = ("data", "layout")

    def __init__(self, data: np.ndarray, layout: Layout) -> None:
        self.data, self.layout = data, layout

    def frame(self) -> av.VideoFrame:
        layout = self.layout
        frame = av.VideoFrame(layout.width, layout.height, AV_FORMAT[layout.format])
        for plane, stride, offset in zip(frame.planes, layout.stride, layout.offset):
            row = plane.width * (3 if layout.format == "RGB" else 1)
            rows = self.data[offset : offset + plane.height * stride].reshape(plane.height, stride)
            np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :row] = rows[:, :row]
        return frame

    def to_rgb(self, size: int) -> np.ndarray:
        return PyAVPicture(self.frame(), self.layout.colour, bare=True).to_rgb(size)


class Layouts:
    """The layout of each caps a video sink delivers (they rarely change: the last one is kept)."""

    def __init__(self, tags: colour.Colour | None) -> None:
        self.tags, self.caps, self.layout = tags, None, None

    def of(self, caps) -> Layout:
        if self.caps is not None and caps.is_equal(self.caps):
            return self.layout
        from gi.repository import GstVideo

        info = GstVideo.VideoInfo.new_from_caps(caps)
        fmt = GstVideo.VideoFormat.to_string(info.finfo.format) if info is not None else "?"
        if fmt not in AV_FORMAT:
            raise DecodeError(f"the GStreamer video appsink gets {fmt} pictures; it takes I420 or RGB "
                              f"(end the description with videoconvert ! video/x-raw,format=I420): {caps.to_string()}")
        picture_colour = caps_colour(caps.get_structure(0), info.width, info.height, self.tags)
        self.caps = caps
        self.layout = Layout(fmt, info.width, info.height, list(info.stride), list(info.offset), picture_colour,
                             info.size)
        return self.layout


def sample_picture(sample, layouts: Layouts) -> GstPicture:
    """A video sample's picture, copied out of its buffer (converted later, if sampled)."""
    layout = layouts.of(sample.get_caps())
    buffer = sample.get_buffer()
    meta = _video_meta(buffer)
    if meta is not None:  # a producer's own row padding and plane placement
        layout = layout._replace(stride=list(meta.stride), offset=list(meta.offset))
    data = _copy(buffer)
    if meta is None and len(data) < layout.size:
        raise DecodeError(f"a GStreamer {layout.format} {layout.width}x{layout.height} buffer holds {len(data)} "
                          f"bytes; its caps need {layout.size}")
    return GstPicture(data, layout)


AV_FORMAT = {"I420": "yuv420p", "RGB": "rgb24"}


def _video_meta(buffer):
    from gi.repository import GstVideo

    return GstVideo.buffer_get_video_meta(buffer)
