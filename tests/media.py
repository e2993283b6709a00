"""Real encoded test media, written with PyAV: frame index in colour, beeps at known times."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_colour(i: int) -> tuple[int, int, int]:
    """Frame index encoded in the red and green channels (steps of 16 survive YUV and compression)."""
    return (16 * (i % 16), 16 * ((i // 16) % 16), 128)


def frame_index(rgb) -> int:
    """Inverse of ``frame_colour`` for a decoded frame [H, W, 3]."""
    return int(round(float(rgb[..., 0].mean()) / 16)) % 16 + 16 * (int(round(float(rgb[..., 1].mean()) / 16)) % 16)


def write_clip(path: Path, seconds: float, fps: float = 10, size: tuple[int, int] = (64, 48),
               vcodec: str = "libx264", acodec: str | None = "aac", rate: int = 16000, channels: int = 1,
               beeps: tuple[float, ...] = (), vfr: bool = False, bframes: bool = True) -> Path:
    """Write a clip; audio is silence with 1 kHz beeps of 0.1 s starting at ``beeps`` seconds."""
    container = av.open(str(path), "w")
    video = container.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000) if not vfr else None)
    video.width, video.height = size
    video.pix_fmt = "yuvj420p" if vcodec == "mjpeg" else "yuv420p"
    video.time_base = Fraction(1, 1000)
    video.codec_context.time_base = Fraction(1, 1000)  # frame.pts below is in milliseconds
    if vcodec == "libx264":
        video.options = {"bf": "2" if bframes else "0", "g": "12", "preset": "ultrafast" if not bframes else "fast"}
    audio = None
    if acodec:
        audio = container.add_stream(acodec, rate=rate)
        audio.layout = "stereo" if channels == 2 else "mono"
        audio.time_base = Fraction(1, rate)
    n = int(seconds * fps)
    times = np.arange(n) / fps
    if vfr:  # jitter the spacing: 1x and 2x periods alternate
        times = np.cumsum(np.where(np.arange(n) % 3 == 0, 2.0, 1.0)) / fps
        times = times[times < seconds] - times[0]
    for i, t in enumerate(times):
        img = np.empty((size[1], size[0], 3), np.uint8)
        img[:] = frame_colour(i)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = int(round(t * 1000))
        frame.time_base = Fraction(1, 1000)
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if audio is not None:
        samples = np.zeros(int(seconds * rate), np.float32)
        for b in beeps:
            s = int(b * rate)
            tt = np.arange(int(0.1 * rate)) / rate
            samples[s : s + len(tt)] = 0.5 * np.sin(2 * np.pi * 1000 * tt)
        frame_size = audio.codec_context.frame_size or 1024
        fmt = audio.codec_context.format.name
        for start in range(0, len(samples), frame_size):
            block = samples[start : start + frame_size]
            planes = np.repeat(block[None], channels, axis=0)
            if fmt in ("flt", "s16"):  # packed formats take [1, samples*channels]
                planes = planes.T.reshape(1, -1)
            data = planes.astype(np.int16 if fmt.startswith("s16") else np.float32)
            if fmt.startswith("s16"):
                data = (planes * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=audio.layout.name)
            frame.sample_rate = rate
            frame.pts = start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    container.close()
    return path


def write_ts_segment(path: Path, rate: int, layout: str, seconds: float = 2.0, start: float = 0.0,
                     fps: int = 10, tone: float = 440.0) -> Path:
    """An MPEG-TS segment, H.264 + AAC at ``rate`` Hz ``layout``, timed from ``start`` seconds:
    concatenated segments are what a broadcast capture or an RTSP recorder writes."""
    channels = 1 if layout == "mono" else 2
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = layout
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 10) % 255, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(start * fps) + i, Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        n = int(seconds * rate)
        wave = (0.2 * np.sin(2 * np.pi * tone * np.arange(n) / rate)).astype(np.float32)
        for k in range(0, n, 1024):
            block = np.repeat(wave[None, k : k + 1024], channels, axis=0)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, round(start * rate) + k, Fraction(1, rate)
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)
    return path
