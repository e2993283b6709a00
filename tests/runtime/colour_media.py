"""Real encoded clips with known colours, for the decoder-parity and colour tests.

Frames are made as RGB, turned into YUV 4:2:0 here with the matrix and range the clip claims
(or, untagged, the ones the runtime's rule assumes), and encoded by PyAV's encoders (libx264,
libvpx-vp9) with the colour tags set in the encoder, so the stream says what a camera would.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
# FFmpeg's AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic / AVColorRange codes
SPACE = {"bt601": 6, "bt709": 1}  # SMPTE 170M is BT.601 (525 lines)
TRC = {"bt601": 6, "bt709": 1}
RANGE = {False: 1, True: 2}
BARS = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255), (255, 0, 0), (0, 0, 255),
        (0, 0, 0), (128, 128, 128), (191, 64, 64), (64, 160, 96), (80, 96, 192)]


@dataclass(frozen=True)
class Kind:
    """A clip kind: codec, size, and what the stream says about its colours."""

    codec: str  # h264, vp9
    size: tuple[int, int]
    matrix: str | None  # bt601, bt709; None: untagged
    full_range: bool | None  # None: untagged (limited)

    @property
    def label(self) -> str:
        tag = "untagged" if self.matrix is None else f"{self.matrix}-{'full' if self.full_range else 'limited'}"
        return f"{self.codec}-{self.size[1]}p-{tag}"

    @property
    def assumed(self) -> tuple[str, bool]:
        """The matrix and range the frames were made with: the tags, or the runtime's rule."""
        if self.matrix is not None:
            return self.matrix, bool(self.full_range)
        hd = self.size[0] >= 1280 or self.size[1] >= 720
        return ("bt709" if hd else "bt601"), False


def kinds(codecs=("h264", "vp9"), sizes=((1280, 720), (640, 480))) -> list[Kind]:
    tags = [(None, None), ("bt601", False), ("bt709", False), ("bt601", True), ("bt709", True)]
    return [Kind(c, s, m, r) for c in codecs for s in sizes for m, r in tags]


def rgb_to_yuv420(rgb: np.ndarray, matrix: str, full: bool) -> np.ndarray:
    """RGB [H, W, 3] uint8 -> yuv420p as PyAV takes it ([H * 3 / 2, W] uint8), 2x2 mean chroma."""
    kr, kb = KR_KB[matrix]
    x = rgb.astype(np.float32) * np.float32(1 / 255)
    y = kr * x[..., 0] + (1 - kr - kb) * x[..., 1] + kb * x[..., 2]
    cb, cr = (x[..., 2] - y) / (2 * (1 - kb)), (x[..., 0] - y) / (2 * (1 - kr))
    if full:
        Y, U, V = 255 * y, 128 + 255 * cb, 128 + 255 * cr
    else:
        Y, U, V = 16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr
    h, w = Y.shape

    def half(c):
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (Y, half(U), half(V))]
    return np.concatenate([planes[0], planes[1].reshape(-1, w), planes[2].reshape(-1, w)])


def scene(i: int, size: tuple[int, int]) -> np.ndarray:
    """A camera-like frame: soft colour gradients, moving coloured discs, stripes, sensor noise."""
    w, h = size
    u, v = np.linspace(0, 1, w, dtype=np.float32)[None, :], np.linspace(0, 1, h, dtype=np.float32)[:, None]
    rgb = np.empty((h, w, 3), np.float32)
    rgb[..., 0] = 150 + 60 * np.sin(6.3 * u + 0.05 * i)
    rgb[..., 1] = 120 + 50 * np.cos(4 * v + 2 * u)
    rgb[..., 2] = 110 + 70 * np.sin(3 * (u + v) - 0.04 * i)
    r = int(0.08 * h)
    for k, colour in enumerate([(210, 70, 50), (50, 170, 90), (70, 90, 200), (230, 200, 60)]):
        cx, cy = int(w * (0.2 + 0.2 * k + 0.05 * np.sin(0.1 * i + k))), int(h * (0.5 + 0.3 * np.cos(0.07 * i + 2 * k)))
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        box = rgb[y0 : cy + r, x0 : cx + r]
        dy, dx = np.arange(y0, y0 + box.shape[0])[:, None] - cy, np.arange(x0, x0 + box.shape[1])[None, :] - cx
        box[dy**2 + dx**2 < r**2] = colour
    band = rgb[int(0.8 * h):, : int(0.3 * w)]
    band[:] = np.where((np.arange(band.shape[1]) // 3 % 2 == 0)[None, :, None], 200.0, 40.0)
    rgb += _noise(h, w)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _noise(h: int, w: int) -> np.ndarray:
    """A fixed sensor noise pattern (the same every frame: cheap to encode, still fine detail)."""
    return np.random.default_rng(h * w).normal(0, 5, (h, w, 1)).astype(np.float32)


def bars(size: tuple[int, int], colours=BARS) -> np.ndarray:
    w, h = size
    edges = np.linspace(0, w, len(colours) + 1).round().astype(int)
    rgb = np.zeros((h, w, 3), np.uint8)
    for c, (a, b) in zip(colours, zip(edges, edges[1:])):
        rgb[:, a:b] = c
    return rgb


def write(path: Path, kind: Kind, seconds: float = 2.0, fps: int = 10, content: str = "scene") -> Path:
    """Encode ``seconds`` of ``content`` (``scene`` or ``bars``) as ``kind`` says; returns the path."""
    matrix, full = kind.assumed
    path = path.with_suffix(".mp4" if kind.codec == "h264" else ".mkv")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if kind.codec == "h264" else "libvpx-vp9", rate=fps)
        stream.width, stream.height = kind.size
        stream.pix_fmt = "yuv420p"
        stream.options = ({"crf": "16", "preset": "veryfast"} if kind.codec == "h264"
                          else {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8"})
        if kind.matrix is not None:  # the tags, as a camera writes them into the stream
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_primaries, ctx.color_trc = SPACE[matrix], SPACE[matrix], TRC[matrix]
            ctx.color_range = RANGE[full]
        for i in range(int(seconds * fps)):
            rgb = scene(i, kind.size) if content == "scene" else bars(kind.size)
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420(rgb, matrix, full), format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            if kind.matrix is not None:
                frame.colorspace, frame.color_range = SPACE[matrix], RANGE[full]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


MEAN_LEVELS, P99_LEVELS = 2.0, 12.0  # what any two decoders may differ by (issue 21)


class Clips:
    """Clips made once and kept: ``clips(kind, content)`` -> path (a module fixture holds one)."""

    def __init__(self, root: Path) -> None:
        self.root, self.made = root, {}

    def __call__(self, kind: Kind, content: str = "scene") -> Path:
        if (kind, content) not in self.made:
            self.made[kind, content] = write(self.root / f"{kind.label}-{content}", kind, content=content)
        return self.made[kind, content]


def edge_spec():
    from mirasol_edge.runtime.config import MirasolConfig
    from mirasol_edge.runtime.decode.chunks import ChunkSpec

    return ChunkSpec.from_config(MirasolConfig.preset("edge"))  # 8 fps, 16 frames a chunk, 112x112


def decoded(clip: Path, decoder: str, spec=None) -> np.ndarray:
    """Every chunk frame [N, H, W, 3] uint8 that ``decoder`` makes of ``clip`` at ``spec`` (edge's)."""
    from mirasol_edge.runtime.decode.chunks import chunks

    return np.concatenate([np.asarray(c.frames) for c in chunks(clip, spec or edge_spec(), decoder=decoder)])


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and 99th-percentile absolute difference, in levels."""
    assert a.shape == b.shape
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), float(np.percentile(d, 99))


def bar_means(rgb: np.ndarray, n: int = len(BARS)) -> np.ndarray:
    """Mean RGB inside each bar of a bars() frame [H, W, 3], 2 pixels clear of its edges."""
    edges = np.linspace(0, rgb.shape[1], n + 1)
    return np.array([rgb[4:-4, int(a) + 2 : int(np.ceil(b)) - 2].reshape(-1, 3).mean(axis=0)
                     for a, b in zip(edges, edges[1:])])
