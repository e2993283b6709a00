"""GStreamer sources: how a Jetson gets its frames (``nvarguscamerasrc`` CSI cameras,
``nvv4l2decoder`` hardware decoding, ``rtspsrc``), and any pipeline anywhere.

    chunks("gst:nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv", spec,
           audio="alsa:hw:2,0")                            # a CSI camera and a USB microphone
    chunks("rtsp://cam/stream", spec, decoder="gstreamer")  # RTSP through rtspsrc, hardware decode where there is one
    chunks("clip.mp4", spec, decoder="gstreamer")           # a file through uridecodebin

A ``gst:`` description produces raw video; this module appends the conversion to the model's
RGB frames and an appsink (a description that already ends in ``appsink name=video`` is used
as it is). Files and URLs go through ``uridecodebin``, which picks the decoder by rank:
``decoder="auto"`` prefers NVIDIA's hardware decoders where GStreamer has them,
``"software"`` refuses them. ``Chunk.decoder`` names the element that decoded
(``gstreamer:nvv4l2decoder``, ``gstreamer:avdec_h264``).

Audio comes from the source itself, or from a second source (``audio=``: ``alsa:DEVICE``,
``pulse:[DEVICE]``, ``gst:DESCRIPTION``, a file). A second source runs as its own pipeline on
the video pipeline's clock and base time, so both are timestamped by one clock (GStreamer's
audio sources slave their sample clock to it, which absorbs the microphone's drift) and an
unplugged microphone cannot stop the video. See ``audio.py`` for the merge and its policy.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

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
            try:
                import gi

                gi.require_version("Gst", "1.0")
                gi.require_version("GstApp", "1.0")
                gi.require_version("GstBase", "1.0")
                # GstApp: the appsink's pull methods; GstBase: which sources are live.
                from gi.repository import Gst, GstApp, GstBase  # noqa: F401
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
    size = spec.image_size
    # add-borders=false: stretch to the square, as PyAV's reformat does (no letterbox).
    return ("queue max-size-buffers=8 ! videoconvert ! videoscale add-borders=false ! "
            f"video/x-raw,format=RGB,width={size},height={size},pixel-aspect-ratio=1/1 ! "
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


def sample_array(sample, channels: int | None = None) -> tuple[float | None, np.ndarray]:
    """A sample's running time (seconds: on the pipeline clock from its start, comparable between
    pipelines that share clock and base time) and a copy of its data: RGB frames [H, W, 3], or mono audio."""
    Gst = gst()
    buffer = sample.get_buffer()
    time = None
    if buffer.pts != Gst.CLOCK_TIME_NONE:
        running = sample.get_segment().to_running_time(Gst.Format.TIME, buffer.pts)
        time = (running if running != Gst.CLOCK_TIME_NONE else buffer.pts) / Gst.SECOND
    ok, info = buffer.map(Gst.MapFlags.READ)
    if not ok:
        raise DecodeError("a GStreamer buffer could not be read")
    try:
        data = np.frombuffer(info.data, dtype=np.uint8).copy()
    finally:
        buffer.unmap(info)
    if channels is not None:
        return time, data.view(np.float32)
    structure = sample.get_caps().get_structure(0)
    width, height = structure.get_value("width"), structure.get_value("height")
    stride = len(data) // height  # rows may be padded to 4 bytes
    return time, data.reshape(height, stride)[:, : width * 3].reshape(height, width, 3)
