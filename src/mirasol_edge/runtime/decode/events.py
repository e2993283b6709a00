"""Decoded media as one time-ordered stream of events: ("v", time, frame), ("a", time, samples),
("damaged", time, frames lost), ("audio_changed", time, (format, layout, rate))."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from .types import ChunkSpec, DecodeError, UnsupportedCodec

GAP_PERIODS = 2.5  # variable frame rate sources stretch a period to 2x; a real loss is longer
# A forward jump longer than this inside one stream is a broken timestamp, not a pause: held frames
# across it would be hours of chunks from a short file. The timeline is re-based over it instead.
MAX_JUMP_SECONDS = 30.0


def frame_time(frame: av.frame.Frame, fallback: float) -> float:
    return float(frame.time) if frame.time is not None else fallback


def pyav_events(container, vstream, astream, name: str, state: dict) -> Iterator[tuple]:
    """(kind, time, payload) in demux order: ("v", t, frame), ("a", t, samples), ("damaged", t, n)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=state["rate"]) if astream else None
    audio_format = None  # (format, layout, rate) the resampler was set up for: real streams change it
    # A corrupt stretch often decodes "fine": the demuxer resyncs and frames just go missing.
    # A gap of more than GAP_PERIODS frame periods counts as lost frames. The period is the
    # shortest step seen: some containers (Matroska) store no rate and FFmpeg guesses 24.
    streams = ([vstream] if vstream is not None else []) + ([astream] if astream else [])
    for packet in container.demux(*streams):
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError:
            yield ("damaged", state["last_time"], 1)
            continue
        except av.error.DecoderNotFoundError as exc:
            codec = getattr(packet.stream.codec_context, "name", None) or f"its {packet.stream.type} stream"
            raise UnsupportedCodec(f"{name}: no decoder for {codec} ({exc})") from None
        for frame in decoded:
            if packet.stream is vstream:
                time = frame_time(frame, state["last_time"] - state["shift"]) + state["shift"]
                step, period = time - state["last_time"], state["period"]
                if state["decoded_video"] and step > MAX_JUMP_SECONDS:
                    state["shift"] -= step - (period or 0.0)
                    time, step = state["last_time"] + (period or 0.0), period or 0.0
                    yield ("damaged", time, 1)  # the chunk is flagged: its timeline broke here
                if state["decoded_video"] and step > 0:
                    if period and step > GAP_PERIODS * period:
                        yield ("damaged", time, round(step / period) - 1)
                    state["period"] = min(period or step, step)
                state["last_time"] = time
                state["decoded_video"] += 1
                yield ("v", time, frame)
            else:
                incoming = (frame.format.name, frame.layout.name, frame.sample_rate)
                if audio_format is not None and incoming != audio_format:
                    # PyAV's resampler refuses a frame unlike its first: flush it, start a new one.
                    for out in resampler.resample(None):
                        yield ("a", None, out.to_ndarray().reshape(-1))
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=state["rate"])
                    yield ("audio_changed", frame_time(frame, state["last_time"]), incoming)
                audio_format = incoming
                try:
                    resampled = resampler.resample(frame)
                except ValueError as exc:  # PyAV's own, for a frame it cannot take
                    raise DecodeError(f"{name}: audio frame at {frame_time(frame, 0.0):.2f}s cannot be resampled "
                                      f"({incoming[0]}, {incoming[1]}, {incoming[2]} Hz): {exc}") from None
                for out in resampled:
                    yield ("a", frame_time(out, 0.0), out.to_ndarray().reshape(-1))
    if resampler is not None:
        for out in resampler.resample(None):
            yield ("a", None, out.to_ndarray().reshape(-1))


def dali_events(source: tuple[Any, float], vstream, astream, container, name: str, spec: ChunkSpec,
                 device: str, state: dict, on_device: bool = False) -> Iterator[tuple]:
    """DALI's frames (times from the measured constant rate) merged in time order with PyAV's audio."""
    import heapq

    from . import dali

    source, rate = source
    start = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
    data = Path(source).read_bytes()

    state["period"] = float(1 / rate)

    def video():
        for k, rgb in enumerate(dali.frames(data, spec.image_size, "gpu" if device == "dali-gpu" else "cpu", on_device)):
            time = start + float(k / rate)
            state["last_time"] = time
            state["decoded_video"] += 1
            yield ("v", time, rgb)

    audio = pyav_events(container, None, astream, name, state) if astream else iter(())
    # Audio with no time (the resampler's tail) sorts last.
    return heapq.merge(video(), audio, key=lambda e: float("inf") if e[1] is None else e[1])
