"""Which decoder (registry.py) runs a source: GStreamer for ``gst:`` sources, a second audio source,
``decoder="gstreamer..."`` and files on a Jetson; else PyAV, or DALI (NVDEC on a GPU, its CPU
decoder) where the codec, the source kind and a constant frame rate allow it."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from .types import LIVE_PREFIXES, UnsupportedCodec


def probe_constant_rate(source: Any, packets: int = 64) -> Fraction | None:
    """The exact frame rate if the first ``packets`` video timestamps are evenly spaced, else None.

    Containers such as Matroska store no frame rate (FFmpeg then guesses 24) and round
    timestamps to milliseconds, so the rate DALI's frame clock needs is measured from the
    timestamps and snapped to the exact rate it rounds from (30, 30000/1001, ...).
    """
    if not isinstance(source, (str, Path)):
        return None
    try:
        with av.open(str(source), metadata_errors="replace") as probe:
            stream = probe.streams.video[0]
            declared = [r for r in (stream.average_rate, stream.guessed_rate) if r]
            quantum = float(stream.time_base)
            times = []
            for packet in probe.demux(stream):
                if packet.pts is not None:
                    times.append(float(packet.pts * packet.time_base))
                if len(times) >= packets:
                    break
    except (av.error.FFmpegError, IndexError):
        return None
    times = np.sort(times)
    steps = np.diff(times)
    if len(steps) < 2 or steps.min() <= 0 or steps.max() - steps.min() > 2 * quantum + 0.01 * steps.min():
        return None
    measured = (len(times) - 1) / (times[-1] - times[0])
    nearest = round(measured)
    for rate in (*declared, Fraction(nearest), Fraction(round(measured * 1.001) * 1000, 1001)):
        if rate and abs(float(rate) - measured) <= 0.005 * measured:
            return Fraction(rate)
    return Fraction(measured).limit_denominator(1001)


def wants_gstreamer(source: Any, decoder: str, audio: Any) -> bool:
    from . import dali, gst

    if decoder.startswith("gstreamer") or gst.is_gst(source) or audio is not None:
        return True
    # Jetson: DALI does not decode video there, and GStreamer has the hardware decoder.
    return decoder == "auto" and isinstance(source, (str, Path)) and dali.is_jetson() and gst.available()


def choose_decoder(requested: str, source: Any, vstream, name: str) -> tuple[str, Fraction | None]:
    """Which decoder runs this source (and, for DALI, the measured frame rate); a forced choice
    that cannot work says why. ``auto`` only ever picks NVDEC: DALI's CPU decoder measured
    slower than PyAV (bench/decode.py)."""
    if requested not in ("auto", "dali-cpu", "dali-gpu"):  # PyAV, or another decoder registered on its container
        return requested, None
    want = "dali-gpu" if requested == "auto" else requested
    codec = vstream.codec_context.name
    problem = _dali_problem(source, codec, want)
    rate = None
    if problem is None:  # the cheap checks passed; the rate probe reads the file
        rate = probe_constant_rate(source)
        problem = None if rate is not None else "the video has a variable frame rate, which DALI refuses"
    if problem is None:
        return want, rate
    if requested == "auto":
        return "pyav", None
    device = "GPU" if want == "dali-gpu" else "CPU"
    raise UnsupportedCodec(f"{name}: cannot decode {codec} with DALI's {device} decoder: {problem}")


def _dali_problem(source: Any, codec: str, want: str) -> str | None:
    from . import dali

    if not dali.available():
        return "DALI is not installed" + (" (and does not decode video on Jetson)" if dali.is_jetson() else "")
    if isinstance(source, (bytes, bytearray, io.IOBase)) or str(source).startswith(LIVE_PREFIXES):
        return "DALI decodes whole files, not live streams or byte buffers"
    device, codecs = ("GPU", dali.NVDEC_CODECS) if want == "dali-gpu" else ("CPU", dali.CPU_CODECS)
    if codec not in codecs:
        return f"its {device} decoder takes {', '.join(sorted(codecs))}, not {codec}"
    if want == "dali-gpu" and not dali.gpu_available():
        return "no CUDA GPU is visible to DALI"
    return None
