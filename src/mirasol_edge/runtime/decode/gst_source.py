"""Run GStreamer pipelines and turn their appsinks' samples into ``Chunk``s (see ``gst.py``).

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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .assemble import Assembler
from .gst import describe_audio, describe_video, gst, is_gst, is_live, prefer_decoders, sample_array
from .types import Chunk, ChunkSpec, DecodeError, ShortSource

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


def gst_chunks(source: Any, spec: ChunkSpec, last: str, mel_fn: Callable[[np.ndarray], np.ndarray],
               decoder: str = "auto", audio: Any = None, audio_offset: float = 0.0, audio_wait: float = 1.0,
               timeout: float | tuple[float, float] = 10.0) -> Iterator[Chunk]:
    """Chunks from a GStreamer source (``gst:`` description, file or URL), with ``audio`` from a second source.
    ``timeout``: seconds without video before it is an error; (open, read) for the first frame and after."""
    open_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    Gst = gst()
    name = str(source)
    prefer_decoders(decoder)
    own_audio = audio is None and not is_gst(source)
    video = _Pipeline(describe_video(source, spec, with_audio=own_audio), name, read_timeout)
    audio_pipe = _Pipeline(describe_audio(audio, spec), str(audio), read_timeout) if audio is not None else None
    vsink = video.sink("video")
    if vsink is None:
        raise DecodeError(f"{name}: the pipeline has no appsink named 'video'")
    asink = (audio_pipe or video).sink("audio")
    has_audio = asink is not None
    out = Assembler(spec, last, mel_fn, "gstreamer", has_audio, place_audio_by_time=audio_pipe is not None,
                    audio_offset=audio_offset if audio_pipe is not None else 0.0)
    audio_done = not has_audio
    first = {"v": None, "a": None}
    last_video, period = None, None
    waiting_since = None  # wall time a complete chunk of frames started waiting for audio
    try:
        video.start()
        if audio_pipe is not None:
            audio_pipe.start(video.pipeline.get_clock() or Gst.SystemClock.obtain(), video.pipeline.get_base_time())
        idle_since = time.monotonic()
        while True:
            if not audio_done:  # up to two chunks past the video (see _drain_audio)
                until = None if last_video is None else last_video + 2 * spec.chunk_seconds
                audio_done = _drain_audio(asink, audio_pipe, out, first, audio_offset, name, until=until)
            sample = vsink.try_pull_sample(int(PULL_S * Gst.SECOND))
            if sample is not None:
                t, frame = sample_array(sample)
                t = t if t is not None else (last_video or 0.0) + (period or 1.0 / spec.fps)
                if last_video is not None and t > last_video:
                    period = min(period or t - last_video, t - last_video)
                if first["v"] is None:
                    first["v"] = t
                    out.decoder = f"gstreamer:{video.decoder}" if video.decoder else "gstreamer"
                last_video, idle_since = t, time.monotonic()
                out.video(frame, t)
            elif vsink.is_eos():
                break
            problem = video.error()
            if problem:
                raise DecodeError(f"{name}: GStreamer {problem}")
            limit = read_timeout if last_video is not None else open_timeout
            if time.monotonic() - idle_since > limit:
                raise DecodeError(f"{name}: no video from GStreamer for {limit:g} s")
            waiting_since = _audio_policy(out, spec, audio_pipe is not None and audio_pipe.live, audio_done, audio_wait,
                                          waiting_since)
            yield from out.ready()
        # The video ended: the audio up to its end, waited for at most the read timeout (a dead
        # stream's never comes), or audio_wait for a live second source (a microphone that stalls).
        end = (last_video or 0.0) + (period or 1.0 / spec.fps)
        live_mic = audio_pipe is not None and audio_pipe.live
        deadline = time.monotonic() + (audio_wait if live_mic else read_timeout)
        while not audio_done and time.monotonic() < deadline:
            if out.audio_end_time is not None and out.audio_end_time >= end:
                break
            audio_done = _drain_audio(asink, audio_pipe, out, first, audio_offset, name, wait=PULL_S, until=end)
        if last_video is None:
            raise DecodeError(f"{name}: GStreamer gave no video frames")
        yield from out.finish(last_video + (period or 1.0 / spec.fps))
        if out.index == 0:
            raise ShortSource(f"{name}: shorter than one chunk ({spec.chunk_seconds:g} s) and last='drop'")
    finally:
        video.stop()
        if audio_pipe is not None:
            audio_pipe.stop()


def _drain_audio(asink, audio_pipe: _Pipeline | None, out: Assembler, first: dict, offset: float, name: str,
                 wait: float = 0.0, until: float | None = None) -> bool:
    """What the audio sink holds now, up to ``until`` seconds of stream time: a file's audio must
    not pile up in memory (GStreamer decodes it ahead as far as its queues let it; the appsink's
    limit holds the rest back). True once the audio is over (its end, or its failure)."""
    Gst = gst()
    if until is not None and out.audio_end_time is not None and out.audio_end_time >= until:
        return False  # far enough ahead of the video already
    sample = asink.try_pull_sample(int(wait * Gst.SECOND))
    while sample is not None:
        t, samples = sample_array(sample, channels=1)
        if first["a"] is None and t is not None:
            first["a"] = t
            if first["v"] is not None:
                log.info("%s: audio starts %.3f s after video (offset applied: %+.3f s)", name, t - first["v"], offset)
        out.audio_samples(None if t is None else t + offset, samples)
        end = out.audio_end_time
        sample = asink.try_pull_sample(0) if until is None or end is None or end < until else None
    if audio_pipe is not None:
        problem = audio_pipe.error()
        if problem:  # an unplugged microphone: the video goes on, in silence, flagged
            log.warning("%s: audio source failed (%s); going on without audio", audio_pipe.name, problem)
            out.end_audio()
            audio_pipe.stop()
            return True
    if asink.is_eos():
        out.end_audio()  # a second source that ended: the chunks past its end are flagged
        return True
    return False


def _audio_policy(out: Assembler, spec: ChunkSpec, live_second_source: bool, audio_done: bool, wait: float,
                  since: float | None) -> float | None:
    """A chunk of frames kept waiting for a live audio source over ``wait`` s goes out with what
    arrived (flagged). A file never stalls: it is waited for."""
    if not live_second_source or audio_done or len(out.frames) < spec.frames_per_chunk:
        return None
    now = time.monotonic()
    if since is None:
        return now
    if now - since > wait:
        out.fill_audio_gap()
        return None
    return since
