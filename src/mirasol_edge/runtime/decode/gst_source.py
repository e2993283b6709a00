"""The ``gstreamer`` decoder: GStreamer pipelines whose appsinks' samples become the seam's events
(events.py; see ``gst.py`` for the pipelines).

The audio policy, for a second audio source (a microphone beside a camera):
- both pipelines run on one clock with one base time, so buffer timestamps compare directly;
  ``audio_offset`` (seconds, default 0) is added to the audio's, for a device known to lag;
  ``Chunk.audio_offset`` reports the offset in effect, the measured start skew is logged;
- audio is placed by its timestamps: drift the source did not absorb, and short stalls, show
  up as gaps (silence) or overlaps (cut), never as a shifted timeline;
- a chunk whose audio from a live source (a capture device) has not fully arrived
  ``audio_wait`` seconds (wall clock) after its frames did goes out with silence where audio
  is missing, flagged ``Flags.AUDIO_GAP`` (a file is waited for: it cannot stall);
- an audio source that fails (a microphone unplugged) is logged and dropped: the video goes
  on and every later chunk is silence, flagged ``AUDIO_GAP``.
A failure of the video pipeline is a ``DecodeError`` naming the source and the element.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import colour
from .events import Audio, AudioEnded, AudioLate, Decoding, Event, Progress, Video
from .gst import (
    Layouts,
    describe_audio,
    describe_video,
    gst,
    is_gst,
    is_live,
    prefer_decoders,
    sample_audio,
    sample_picture,
    sample_time,
)
from .types import ChunkSpec, DecodeError

log = logging.getLogger(__name__)
PULL_S = 0.02  # one wait on the video sink; short, so the audio sink and the bus are read often


class _Pipeline:
    def __init__(self, description: str, name: str, read_timeout: float = 10.0) -> None:
        Gst = gst()
        self.name = name
        try:
            self.pipeline = Gst.parse_launch(description)
        except Exception as exc:  # GLib.Error: the message names the element or syntax at fault
            raise DecodeError(f"{name}: GStreamer cannot build the pipeline ({exc}): {description}") from None
        self.bus = self.pipeline.get_bus()
        self.decoder: str | None = None
        self.read_timeout = read_timeout
        self.live = False
        self.pipeline.connect("deep-element-added", self._added)

    def _added(self, _bin, _sub, element) -> None:
        factory = element.get_factory()
        if factory and factory.get_name() == "rtspsrc":
            # A dead camera must fail within our read timeout, not rtspsrc's 20 s; 200 ms of
            # jitter buffer instead of 2 s keeps a live stream's delay low.
            element.set_property("tcp-timeout", int(self.read_timeout * 1e6))
            element.set_property("latency", 200)
        klass = (factory.get_metadata("klass") or "") if factory else ""
        if "Decoder" in klass and ("Video" in klass or "Image" in klass):  # jpegdec is an image decoder
            self.decoder = factory.get_name()

    def sink(self, name: str):
        return self.pipeline.get_by_name(name)

    def error(self) -> str | None:
        """The first error on the bus, as text, or None."""
        Gst = gst()
        message = self.bus.pop_filtered(Gst.MessageType.ERROR)
        if message is None:
            return None
        err, debug = message.parse_error()
        return f"{message.src.get_name()}: {err.message}" + (f" ({debug.splitlines()[0]})" if debug else "")

    def start(self, clock=None, base_time=None) -> None:
        Gst = gst()
        if clock is not None:  # run on another pipeline's clock and base time: one timeline for both
            self.pipeline.use_clock(clock)
            self.pipeline.set_start_time(Gst.CLOCK_TIME_NONE)
            self.pipeline.set_base_time(base_time)
        result = self.pipeline.set_state(Gst.State.PLAYING)
        if result == Gst.StateChangeReturn.FAILURE:
            raise DecodeError(f"{self.name}: GStreamer could not start the pipeline: {self.error() or 'no reason given'}")
        self.live = is_live(self.pipeline)  # a capture device, not a file: it can stall

    def stop(self, wait_s: float = 5.0) -> None:
        """To NULL, waited for at most ``wait_s``: an RTSP source whose server vanished can block
        its teardown; such a pipeline is left to finish on its own thread."""
        done = threading.Event()

        def to_null() -> None:
            self.pipeline.set_state(gst().State.NULL)
            done.set()

        threading.Thread(target=to_null, name=f"stop {self.name}", daemon=True).start()
        if not done.wait(wait_s):
            log.warning("%s: the GStreamer pipeline did not stop within %g s; left to finish", self.name, wait_s)


def probe_file(source: Any) -> tuple[colour.Colour, bool] | None:
    """A local file's colour, as FFmpeg reads its bitstream's tags (GStreamer 1.22's qtdemux reads a
    full-range H.264 MP4 as limited), so a file converts exactly as the PyAV path converts it; and
    whether it has audio (an audio branch no pad ever links would be waited for to the timeout)."""
    if is_gst(source) or "://" in str(source) or not Path(str(source)).is_file():
        return None
    import av

    try:
        with av.open(str(source), metadata_errors="replace") as probe:
            if not probe.streams.video:
                return None
            ctx = probe.streams.video[0].codec_context
            return (colour.from_av(getattr(ctx, "colorspace", None), getattr(ctx, "color_range", None),
                                   ctx.pix_fmt or "", ctx.width, ctx.height), bool(probe.streams.audio))
    except av.error.FFmpegError:
        return None  # GStreamer may still read it: then its caps say


class GstSource:
    """A GStreamer source (``gst:`` description, file or URL), with ``audio`` from a second source.
    ``timeout``: seconds without video before it is an error; (open, read) for the first frame and after."""

    def __init__(self, source: Any, spec: ChunkSpec, decoder: str = "auto", audio: Any = None,
                 audio_offset: float = 0.0, audio_wait: float = 1.0,
                 timeout: float | tuple[float, float] = 10.0) -> None:
        self.open_timeout, self.read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.source, self.spec, self.name = source, spec, str(source)
        self.audio_wait = audio_wait
        prefer_decoders(decoder)
        probed = probe_file(source)
        self.tags = probed[0] if probed else None
        own_audio = audio is None and not is_gst(source) and (probed is None or probed[1])
        self.video = _Pipeline(describe_video(source, spec, with_audio=own_audio), self.name, self.read_timeout)
        self.audio_pipe = (_Pipeline(describe_audio(audio, spec), str(audio), self.read_timeout)
                           if audio is not None else None)
        self.vsink = self.video.sink("video")
        if self.vsink is None:
            raise DecodeError(f"{self.name}: the pipeline has no appsink named 'video'")
        self.asink = (self.audio_pipe or self.video).sink("audio")
        self.has_audio = self.asink is not None
        self.audio_by_time = self.audio_pipe is not None
        self.audio_offset = audio_offset if self.audio_pipe is not None else 0.0
        self.first = {"v": None, "a": None}

    def events(self, progress: Progress) -> Iterator[Event]:
        Gst, spec = gst(), self.spec
        yield Decoding("gstreamer")
        audio_done = not self.has_audio
        last_video, layouts = None, Layouts(self.tags)
        waiting_since = None  # wall time a complete chunk of frames started waiting for audio
        self.video.start()
        if self.audio_pipe is not None:
            self.audio_pipe.start(self.video.pipeline.get_clock() or Gst.SystemClock.obtain(),
                                  self.video.pipeline.get_base_time())
        idle_since = time.monotonic()
        while True:
            if not audio_done:  # up to two chunks past the video (see _drain_audio)
                until = None if last_video is None else last_video + 2 * spec.chunk_seconds
                audio_done = yield from self._drain_audio(progress, until=until)
            sample = self.vsink.try_pull_sample(int(PULL_S * Gst.SECOND))
            if sample is not None:
                t = sample_time(sample)
                if self.first["v"] is None:
                    self.first["v"] = t if t is not None else 0.0
                    if self.video.decoder:
                        yield Decoding(f"gstreamer:{self.video.decoder}")
                last_video, idle_since = (t if t is not None else last_video), time.monotonic()
                yield Video(t, sample_picture(sample, layouts))
            elif self.vsink.is_eos():
                break
            problem = self.video.error()
            if problem:
                raise DecodeError(f"{self.name}: GStreamer {problem}")
            limit = self.read_timeout if self.first["v"] is not None else self.open_timeout
            if time.monotonic() - idle_since > limit:
                raise DecodeError(f"{self.name}: no video from GStreamer for {limit:g} s")
            waiting_since = yield from self._audio_policy(progress, audio_done, waiting_since)
        if self.first["v"] is None:
            raise DecodeError(f"{self.name}: GStreamer gave no video frames")
        # The video ended: the audio up to its end, waited for at most the read timeout (a dead
        # stream's never comes), or audio_wait for a live second source (a microphone that stalls).
        end = progress.video_end_time
        live_mic = self.audio_pipe is not None and self.audio_pipe.live
        deadline = time.monotonic() + (self.audio_wait if live_mic else self.read_timeout)
        while not audio_done and time.monotonic() < deadline:
            if progress.audio_end_time is not None and progress.audio_end_time >= end:
                break
            audio_done = yield from self._drain_audio(progress, wait=PULL_S, until=end)

    def close(self) -> None:
        self.video.stop()
        if self.audio_pipe is not None:
            self.audio_pipe.stop()

    def _drain_audio(self, progress: Progress, wait: float = 0.0, until: float | None = None):
        """What the audio sink holds now, up to ``until`` seconds of stream time: a file's audio must
        not pile up in memory (GStreamer decodes it ahead as far as its queues let it; the appsink's
        limit holds the rest back). Returns True once the audio is over (its end, or its failure)."""
        Gst, asink, offset = gst(), self.asink, self.audio_offset
        if until is not None and progress.audio_end_time is not None and progress.audio_end_time >= until:
            return False  # far enough ahead of the video already
        sample = asink.try_pull_sample(int(wait * Gst.SECOND))
        while sample is not None:
            t = sample_time(sample)
            if self.first["a"] is None and t is not None:
                self.first["a"] = t
                if self.first["v"] is not None:
                    log.info("%s: audio starts %.3f s after video (offset applied: %+.3f s)", self.name,
                             t - self.first["v"], offset)
            yield Audio(None if t is None else t + offset, sample_audio(sample))
            end = progress.audio_end_time
            sample = asink.try_pull_sample(0) if until is None or end is None or end < until else None
        if self.audio_pipe is not None:
            problem = self.audio_pipe.error()
            if problem:  # an unplugged microphone: the video goes on, in silence, flagged
                log.warning("%s: audio source failed (%s); going on without audio", self.audio_pipe.name, problem)
                yield AudioEnded()
                self.audio_pipe.stop()
                return True
        if asink.is_eos():
            yield AudioEnded()  # a second source that ended: the chunks past its end are flagged
            return True
        return False

    def _audio_policy(self, progress: Progress, audio_done: bool, since: float | None):
        """A chunk of frames kept waiting for a live audio source over ``audio_wait`` s goes out with
        what arrived (flagged). A file never stalls: it is waited for. Returns the new wait start."""
        live_second_source = self.audio_pipe is not None and self.audio_pipe.live
        if not live_second_source or audio_done or not progress.chunk_waiting:
            return None
        now = time.monotonic()
        if since is None:
            return now
        if now - since > self.audio_wait:
            yield AudioLate()
            return None
        return since
