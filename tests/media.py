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
