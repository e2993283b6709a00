"""One colour policy for every decoder: a decoded picture -> the model's RGB at its size.

Libraries disagree when a stream does not say its colours: swscale takes untagged video as BT.601,
GStreamer untagged HD as BT.709 (and full-range H.264 in MP4 as limited), and their scalers differ
(bench/results/decode.json has the before and after). So the conversion is decided and done here:

- matrix: the stream's (BT.601, BT.709, BT.2020, SMPTE 240M, FCC). Untagged: BT.601 for JPEG
  pictures (JFIF says so); otherwise BT.709 for HD (width >= 1280 or height >= 720), BT.601 below.
- range: the stream's. Untagged: full for JPEG pictures (``yuvj*`` formats), limited otherwise.
- resize: the triangle filter, i.e. bilinear with antialias (its support widens with the
  reduction, as PIL's and torchvision's antialiased bilinear; plain bilinear when enlarging),
  stretched to the square (no letterbox), on the YUV planes before the matrix. swscale does it
  (``SWS_BILINEAR | SWS_ACCURATE_RND``, YUV to YUV: no matrix, range kept): in the picture it
  equals torch's ``interpolate(antialias=True)`` to rounding; at its edges it repeats the edge
  pixel where torch renormalises (tests/runtime/test_colour.py).
- then the matrix, here in numpy, rounded to nearest.

PyAV's frames and GStreamer's pictures (copied into PyAV frames: gst.py) go through ``convert``,
so the two agree to the bit on the same decoded picture. DALI converts inside its decoder (always
BT.601, range from the stream: measured, and DALI's color_space.cu) and resizes with its own
triangle; ``correction`` maps its RGB to this policy exactly wherever DALI did not clip (dali.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

log = logging.getLogger(__name__)
KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593),
         "smpte240m": (0.212, 0.087), "fcc": (0.30, 0.11)}
# FFmpeg's AVColorSpace codes (PyAV's frame.colorspace); 10 (BT.2020 constant luminance) is taken
# as its non-constant twin, close enough for a model's input.
AV_MATRIX = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
AV_UNSPECIFIED = 2
_warned: set = set()


@dataclass(frozen=True)
class Colour:
    """How a picture's samples become RGB: its matrix (``rgb``: the planes are G, B, R) and range."""

    matrix: str
    full_range: bool
    tagged: bool  # from the stream; False: the untagged rule chose

    def __str__(self) -> str:
        return f"{self.matrix} {'full' if self.full_range else 'limited'}{'' if self.tagged else ' (untagged)'}"


def policy(matrix: str | None, full_range: bool | None, width: int, height: int, jpeg: bool = False) -> Colour:
    """The rule (module docstring): what the stream says (None: it does not), else the stated defaults."""
    if matrix is not None and matrix not in KR_KB and matrix != "rgb":
        raise ValueError(f"unknown colour matrix {matrix!r}; expected one of {sorted(KR_KB)} or 'rgb'")
    tagged = matrix is not None or full_range is not None
    if matrix is None:
        matrix = "bt601" if jpeg or not (width >= 1280 or height >= 720) else "bt709"
    return Colour(matrix, jpeg if full_range is None else bool(full_range), tagged)


def from_av(colorspace: int | None, color_range: int | None, fmt: str, width: int, height: int) -> Colour:
    """The policy for FFmpeg's tags (AVColorSpace; AVColorRange: 1 limited, 2 full) and pixel format."""
    matrix = AV_MATRIX.get(int(colorspace)) if colorspace is not None else None
    if colorspace not in (None, AV_UNSPECIFIED) and matrix is None and colorspace not in _warned:
        _warned.add(colorspace)  # YCgCo, ICtCp: rare; the rule is a better guess than refusing the video
        log.warning("colour matrix %s (AVColorSpace) is not supported; converting as untagged", colorspace)
    full = {1: False, 2: True}.get(int(color_range or 0))
    return policy(matrix, full, width, height, jpeg=fmt.startswith("yuvj"))


def _normalise(colour: Colour) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset that take (Y, Cb, Cr) samples (8-bit scale) to (y in 0..1, cb, cr in -0.5..0.5)."""
    if colour.full_range:
        return np.array([1 / 255, 1 / 255, 1 / 255]), np.array([0.0, 128.0, 128.0])
    return np.array([1 / 219, 1 / 224, 1 / 224]), np.array([16.0, 128.0, 128.0])


def _matrix(name: str) -> np.ndarray:
    """(y, cb, cr) -> (R, G, B) in 0..1."""
    kr, kb = KR_KB[name]
    kg = 1 - kr - kb
    return np.array([[1, 0, 2 * (1 - kr)],
                     [1, -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg],
                     [1, 2 * (1 - kb), 0]])


@lru_cache(maxsize=64)
def _affine(colour: Colour) -> tuple[np.ndarray, np.ndarray]:
    """(Y, Cb, Cr) samples -> RGB 0..255 as ``samples @ A.T + b`` (float32)."""
    if colour.matrix == "rgb":  # GBR planes: reorder; full or limited range
        scale = 1.0 if colour.full_range else 255 / 219
        a = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]) * scale
        return a.astype(np.float32), np.full(3, 0.0 if colour.full_range else -16 * scale, np.float32)
    scale, offset = _normalise(colour)
    a = 255 * _matrix(colour.matrix) * scale[None, :]
    return a.astype(np.float32), (-a @ offset).astype(np.float32)


def correction(decoded: Colour, wanted: Colour) -> tuple[np.ndarray, np.ndarray] | None:
    """RGB made with ``decoded``'s conversion -> RGB with ``wanted``'s: ``rgb @ A.T + b``, or None
    when they are the same. Exact where the first conversion did not clip."""
    if (decoded.matrix, decoded.full_range) == (wanted.matrix, wanted.full_range):
        return None
    a1, b1 = (x.astype(np.float64) for x in _affine(decoded))
    a2, b2 = (x.astype(np.float64) for x in _affine(wanted))
    a = a2 @ np.linalg.inv(a1)
    return a, b2 - a @ b1


# The triangle, rounded exactly: plain BILINEAR rounds a little differently between code paths.
TRIANGLE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


_local = threading.local()


def _scaled(frame: av.VideoFrame, fmt: str, size: int, full_range: bool) -> av.VideoFrame:
    # One reformatter per thread keeps its swscale context from frame to frame (a new one per
    # frame cost 8x the scaling); decode threads (live.py) must not share one.
    reformatter = getattr(_local, "reformatter", None) or VideoReformatter()
    _local.reformatter = reformatter
    keep = 2 if full_range else 1  # AVColorRange: the same on both sides, so no range conversion
    try:
        return reformatter.reformat(frame, width=size, height=size, format=fmt, interpolation=TRIANGLE,
                                    src_color_range=keep, dst_color_range=keep)
    except (TypeError, ValueError):  # an older PyAV: no ranges, no flags; its swscale keeps YUV ranges as they are
        return reformatter.reformat(frame, width=size, height=size, format=fmt, interpolation="BILINEAR")


def bare(frame: av.VideoFrame) -> av.VideoFrame:
    """The picture alone, in a new frame: a decoder's frame also carries its chroma siting (H.264's
    is left), which swscale honours; GStreamer's pictures cannot carry it, so the policy takes
    chroma as centred for every decoder (half a luma pixel: 1/20 of an output pixel from 720p)."""
    copy = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for source, target in zip(frame.planes, copy.planes):
        row = min(source.line_size, target.line_size)
        rows = np.frombuffer(source, np.uint8).reshape(source.height, source.line_size)
        np.frombuffer(target, np.uint8).reshape(target.height, target.line_size)[:, :row] = rows[:, :row]
    return copy


def convert(frame: av.VideoFrame, colour: Colour, size: int) -> np.ndarray:
    """A picture -> RGB [size, size, 3] uint8: resized as YUV (the triangle), then ``colour``'s matrix.
    ``frame`` holds the picture alone (``bare``: GStreamer's are made so)."""
    fmt = frame.format
    if fmt.is_rgb or fmt.has_palette or getattr(fmt, "is_bayer", False):  # RGB already: only resized
        return _scaled(frame, "rgb24", size, True).to_ndarray()
    deep = max(c.bits for c in fmt.components) > 8
    # yuvj* formats are full range by name: resized into one too, or swscale converts the range.
    target = "yuvj444p" if fmt.name.startswith("yuvj") else "yuv444p16le" if deep else "yuv444p"
    small = _scaled(frame, target, size, colour.full_range)
    dtype = np.dtype("<u2") if deep else np.uint8
    planes = [np.frombuffer(p, dtype).reshape(size, -1)[:, :size].astype(np.float32) for p in small.planes[:3]]
    if deep:  # 16-bit samples to 8-bit levels
        planes = [p * np.float32(1 / 256) for p in planes]
    a, b = _affine(colour)
    rgb = np.empty((size, size, 3), np.float32)
    for k in range(3):  # by hand, not a matmul: BLAS threads cost more than these 9 products
        rgb[..., k] = planes[0] * a[k, 0] + planes[1] * a[k, 1] + planes[2] * a[k, 2] + b[k]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
