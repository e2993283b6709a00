"""Events -> ``Chunk``s: the one assembler every decoder (registry.py) feeds through ``assemble``.

Time, not frame counts: output frame ``k`` is the last decoded frame whose presentation time
is <= ``t_start + k / fps`` (sample and hold), so variable frame rate and B-frame reordering
come out right. Chunk ``i`` covers ``[t0, t1)`` with ``t0 = t_start + i * chunk_seconds``, and
its audio is the mono samples of exactly that window, placed by their own timestamps. Memory
holds one chunk of frames and audio.

Chunk indices and times are set here and nowhere else: a source resumed after a reconnect
(``resume=(index, t0)``: live.py) continues both, so a gap in ``Chunk.index`` is exactly the
chunks that were dropped or lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .events import (
    Audio,
    AudioChanged,
    AudioEnded,
    AudioLate,
    Damaged,
    Decoding,
    Ended,
    Event,
    Source,
    Video,
)
from .timeline import Timeline
from .types import Chunk, ChunkSpec, Flags, ShortSource


class VideoSampler:
    """Sample-and-hold resampling of decoded frames onto the model's frame clock."""

    def __init__(self, spec: ChunkSpec) -> None:
        self.spec = spec
        self.t_start: float | None = None
        self.next_k = 0
        self.held: Any = None  # a Picture (converted when first needed) or RGB already at size
        self.held_rgb: np.ndarray | None = None

    def _rgb(self) -> np.ndarray:
        if self.held_rgb is None:
            held = self.held
            # A picture is converted once; RGB arrays and frames on the GPU are already at size.
            self.held_rgb = held.to_rgb(self.spec.image_size) if hasattr(held, "to_rgb") else held
        return self.held_rgb

    def push(self, frame: Any, time: float) -> list[np.ndarray]:
        out = []
        if self.t_start is None:
            self.t_start = time
        if self.held is not None:
            while self.t_start + self.next_k / self.spec.fps < time:
                out.append(self._rgb())
                self.next_k += 1
        self.held, self.held_rgb = frame, None
        return out

    def flush(self, end_time: float) -> list[np.ndarray]:
        out = []
        if self.held is None:
            return out
        while self.t_start + self.next_k / self.spec.fps < end_time:
            out.append(self._rgb())
            self.next_k += 1
        return out


class Assembler:
    """``feed`` it a source's events; take chunks from ``ready``, and the last ones from ``finish``."""

    def __init__(self, spec: ChunkSpec, last: str, mel_fn: Callable[[np.ndarray], np.ndarray], has_audio: bool,
                 place_audio_by_time: bool = False, audio_offset: float = 0.0,
                 resume: tuple[int, float] | None = None) -> None:
        """``place_audio_by_time``: each audio buffer goes where its timestamp says (live capture,
        where a stall leaves a gap); otherwise samples follow one another from the first one's
        time (files, whose audio is continuous and whose resampler output times can jitter).
        ``resume``: the (index, t0) the first chunk gets (a reconnected live source goes on)."""
        self.spec, self.last, self.mel_fn, self.decoder = spec, last, mel_fn, ""
        self.place_audio_by_time, self.audio_offset = place_audio_by_time, audio_offset
        self.resume = resume
        self.gap = False  # the next chunk's audio was filled with silence
        self.timeline = Timeline(1.0 / spec.fps)
        self.sampler = VideoSampler(spec)
        self.frames: list[np.ndarray] = []
        self.audio = np.zeros(0, dtype=np.float32)  # samples from audio_t0 on, trimmed as chunks go out
        self._pieces: list[np.ndarray] = []  # received after ``audio``, not yet joined to it
        self._audio_len = 0  # len(audio) + the pieces
        self.audio_t0: float | None = None
        self.audio_done = not has_audio
        self.count = self.damaged_frames = 0  # chunks out so far; frames lost in the next one
        self.audio_changed = False
        self.ended = Ended()
        self.base_flags = Flags.SILENT if not has_audio else Flags.NONE  # every chunk's

    def feed(self, event: Event) -> None:
        match event:
            case Video(time, picture):
                time, lost = self.timeline.place(time)
                self.damaged_frames += lost
                self.frames.extend(self.sampler.push(picture, time))
            case Audio(time, samples):
                self.audio_samples(time, samples)
            case Damaged(frames):
                self.damaged_frames += frames
            case AudioChanged():
                self.audio_changed = True
            case AudioEnded():
                self.audio_done = True
            case AudioLate():
                self.fill_audio_gap()
            case Decoding(decoder):
                self.decoder = decoder
            case Ended():
                self.ended = event
            case _:
                raise TypeError(f"not a decoder event: {event!r}")

    @property
    def index(self) -> int:
        """The next chunk's index."""
        return self.count + (self.resume[0] if self.resume else 0)

    @property
    def video_end_time(self) -> float:
        return self.timeline.end(self.ended.frame_period)

    @property
    def chunk_waiting(self) -> bool:
        return len(self.frames) >= self.spec.frames_per_chunk

    def audio_samples(self, time: float | None, samples: np.ndarray) -> None:
        if self.audio_t0 is None:
            self.audio_t0 = time if time is not None else 0.0
        elif time is not None and self.place_audio_by_time:  # a gap becomes silence, an overlap is cut
            expected = self.audio_t0 + self._audio_len / self.spec.sample_rate
            gap = round((time - expected) * self.spec.sample_rate)
            if gap > self.spec.sample_rate // 100:  # over 10 ms: a real gap, not rounding
                self._append(np.zeros(gap, np.float32))
            elif gap < -(self.spec.sample_rate // 100):
                samples = samples[min(-gap, len(samples)):]
        self._append(samples)

    def _append(self, samples: np.ndarray) -> None:
        # Pieces, joined when a chunk needs them: decoders hand over audio in small buffers, and
        # joining each one onto the rest would cost the square of what is waiting.
        self._pieces.append(samples)
        self._audio_len += len(samples)

    def _joined(self) -> np.ndarray:
        if self._pieces:
            self.audio = np.concatenate([self.audio, *self._pieces])
            self._pieces.clear()
        return self.audio

    @property
    def audio_end_time(self) -> float | None:
        """Where the audio received so far ends, on the stream's clock."""
        return None if self.audio_t0 is None else self.audio_t0 + self._audio_len / self.spec.sample_rate

    def fill_audio_gap(self) -> None:
        """Silence for what has not arrived of the next chunk's audio; that chunk is flagged AUDIO_GAP."""
        rate, t0 = self.spec.sample_rate, self.sampler.t_start + self.count * self.spec.chunk_seconds
        if self.audio_t0 is None:
            self.audio_t0 = t0
        missing = round((t0 + self.spec.chunk_seconds - self.audio_t0) * rate) - self._audio_len
        if missing > 0:
            self._append(np.zeros(missing, np.float32))
        self.gap = True

    def _chunk_audio(self, t0: float) -> tuple[np.ndarray, bool]:
        """Samples of [t0, t0 + chunk) and whether samples cover all of it (a small slack: rounding)."""
        n = self.spec.samples_per_chunk
        if self.audio_t0 is None:
            return np.zeros(n, np.float32), False
        start = round((t0 - self.audio_t0) * self.spec.sample_rate)
        window = np.zeros(n, np.float32)
        if self._audio_len < start + n and not self.audio_done:
            return window, False  # not all there yet: no need to join
        audio = self._joined()
        lo, hi = max(start, 0), min(start + n, len(audio))
        if hi > lo:
            window[lo - start : hi - start] = audio[lo:hi]
        slack = self.spec.sample_rate // 100
        # A file's audio may start a little after its video: that is its start, not a gap.
        starts_in_time = start >= -slack or not self.place_audio_by_time
        return window, starts_in_time and len(audio) >= start + n

    def ready(self, final: bool = False) -> Iterator[Chunk]:
        spec = self.spec
        while len(self.frames) >= spec.frames_per_chunk or (final and self.frames):
            t0 = self.sampler.t_start + self.count * spec.chunk_seconds  # on the source's clock
            t1 = t0 + spec.chunk_seconds
            samples, covered = self._chunk_audio(t0)
            if not (covered or self.audio_done) and not final:
                return
            flags = self.base_flags
            take = self.frames[: spec.frames_per_chunk]
            if len(take) < spec.frames_per_chunk:
                if self.last == "drop":
                    self.frames = []
                    return
                take = take + [take[-1]] * (spec.frames_per_chunk - len(take))
                flags |= Flags.PADDED
            if self.damaged_frames:
                flags |= Flags.DAMAGED
            if self.audio_changed:
                flags |= Flags.AUDIO_CHANGED
            if self.gap or (self.place_audio_by_time and not covered):  # a second source left part of it silent
                flags |= Flags.AUDIO_GAP
            shift = self.resume[1] - self.sampler.t_start if self.resume else 0.0  # onto the resumed clock
            yield Chunk(_stack(take), self.mel_fn(samples), t0 + shift, t1 + shift, self.index, flags,
                        self.damaged_frames, self.decoder, self.audio_offset, samples)
            self.frames = self.frames[spec.frames_per_chunk :]
            self.count, self.damaged_frames, self.audio_changed, self.gap = self.count + 1, 0, False, False
            if self.audio_t0 is not None:  # keep memory bounded: drop audio before the next chunk
                cut = max(0, round((t1 - self.audio_t0) * spec.sample_rate))
                audio = self._joined()
                self.audio, self.audio_t0 = audio[cut:], self.audio_t0 + cut / spec.sample_rate
                self._audio_len = len(self.audio)

    def finish(self) -> Iterator[Chunk]:
        """The last frame held to the video's end, then whatever chunks that completes (padded per ``last``)."""
        self.audio_done = True
        self.frames.extend(self.sampler.flush(self.video_end_time))
        yield from self.ready(final=True)


def assemble(source: Source, spec: ChunkSpec, last: str, mel_fn: Callable[[np.ndarray], np.ndarray],
             resume: tuple[int, float] | None = None) -> Iterator[Chunk]:
    """A source's chunks: its events through one ``Assembler``; the source is closed at the end."""
    out = Assembler(spec, last, mel_fn, source.has_audio, source.audio_by_time, source.audio_offset, resume)
    events = source.events(out)
    try:
        for event in events:
            out.feed(event)
            yield from out.ready()
        yield from out.finish()
    finally:
        close = getattr(events, "close", None)  # a generator's cleanup runs now, not when collected
        if close is not None:
            close()
        source.close()
    if out.count == 0:
        raise ShortSource(f"{source.name}: shorter than one chunk ({spec.chunk_seconds:g} s) and last='drop'")
    out.timeline.check_complete(source.name, out.ended.duration, out.ended.frame_period)


def _stack(frames: list) -> Any:
    if isinstance(frames[0], np.ndarray):
        return np.stack(frames)
    from .device_frames import DeviceFrames  # frames on the GPU stay there

    return DeviceFrames(frames)
