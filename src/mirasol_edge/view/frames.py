"""The push loop's hand-off to the page: ``Feed.put(chunk, result)`` only queues references (a
bounded queue; when full the newest is dropped and counted), and one thread of its own records
the timings and watches and encodes the latest frame (JPEG) and the chunk's log-mel (PNG) at
most ``rate`` times a second, skipping (and counting) the chunks in between."""

from __future__ import annotations

import io
import queue
import threading
import time

import numpy as np

from .state import ViewState

QUEUE = 8


def _encode_pil(rgb: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def _encode_av(rgb: np.ndarray, fmt: str) -> bytes:
    """Without PIL: PyAV's MJPEG encoder (the runtime already needs PyAV); JPEG either way."""
    import av

    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2])
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = rgb.shape[1], rgb.shape[0], "yuvj420p"
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))


def encoder():
    """(encode(rgb, "JPEG"|"PNG") -> bytes, the PNG's content type)."""
    try:
        import PIL  # noqa: F401

        return _encode_pil, "image/png"
    except ImportError:
        return _encode_av, "image/jpeg"


def mel_image(mel: np.ndarray) -> np.ndarray:
    """[T, n_mels] dB -> [n_mels, T, 3] uint8, low frequencies at the bottom, a warm colour map."""
    m = np.asarray(mel, dtype=np.float32).T[::-1]
    lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
    x = np.clip((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m), 0, 1)
    return (np.stack([x ** 0.5, x ** 1.5, 0.4 * (1 - x) + x ** 4], axis=-1) * 255).astype(np.uint8)


class Feed:
    """Fed from the push loop; everything it does happens on its own thread."""

    def __init__(self, state: ViewState, rate: float = 4.0) -> None:
        self.state, self.interval = state, 1.0 / rate
        self.encode, self.mel_type = encoder()
        self._queue: queue.Queue = queue.Queue(QUEUE)
        self._last = 0.0
        self._thread = threading.Thread(target=self._run, name="mirasol-view-frames", daemon=True)
        self._thread.start()

    def put(self, chunk, result, watches, point: dict | None = None) -> None:
        """References only: the chunk, the result, the watches' standing (taken on the push thread),
        and what the push loop measured around the push (``point``: decode_ms, wall)."""
        try:
            self._queue.put_nowait((chunk, result, watches, point or {}))
        except queue.Full:
            self.state.count("dropped_by_view")

    def _run(self) -> None:
        pending = None  # the newest chunk not yet shown: shown when its turn comes
        while True:
            wait = self.interval - (time.monotonic() - self._last) if pending is not None else None
            try:
                item = self._queue.get(timeout=max(wait, 0.0)) if wait is not None else self._queue.get()
            except queue.Empty:
                item = ()
            try:
                if item is None:  # closing: the last chunk shown, then done
                    if pending is not None:
                        self._show(pending)
                    return
                if item:
                    chunk, result, watches, point = item
                    self._record(result, watches, point)
                    if chunk is not None:
                        if pending is not None:
                            self.state.count("frames_skipped")
                        pending = chunk
                if pending is not None and time.monotonic() - self._last >= self.interval:
                    self._last = time.monotonic()
                    self._show(pending)
                    pending = None
            except Exception as exc:  # the page is a side show: never take the run down
                self.state.set_facts(view_error=f"{type(exc).__name__}: {exc}")

    def _record(self, result, standing, point: dict) -> None:
        watches, live = standing
        t = result.timings
        self.state.add_result({**point, "index": result.index, "t0": result.t0, "t1": result.t1,
                               "upload_ms": round(t.upload_ms, 3), "encode_ms": round(t.encode_ms, 3),
                               "ar_ms": round(t.ar_ms, 3), "watch_ms": round(getattr(t, "watch_ms", 0.0), 3),
                               "total_ms": round(t.total_ms, 3)}, watches, [e.to_dict() for e in result.events], live)

    def _show(self, chunk) -> None:
        frames = np.asarray(chunk.frames)
        frame = self.encode(np.ascontiguousarray(frames[-1]), "JPEG") if frames.ndim == 4 and len(frames) else None
        mel = self.encode(mel_image(chunk.mel), "PNG") if getattr(chunk, "mel", None) is not None else None
        self.state.set_images(frame, mel)

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
