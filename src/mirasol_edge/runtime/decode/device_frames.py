"""Frames that stay on the GPU: DALI's NVDEC output is copied once, device to device, into
buffers of ours (DALI reuses its own on the next run), and a chunk's frames go from those,
device to device again, straight into the engine's input buffer. Nothing visits the host.

A backend without a device path (ONNX Runtime on the CPU, PyTorch) reads them through
``numpy.asarray``, which downloads them: correct everywhere, zero-copy on TensorRT.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mirasol_edge.runtime.cuda import DeviceBuffer, Stream


@dataclass(frozen=True)
class DeviceFrame:
    """Frame ``index`` of a decoded sequence [S, H, W, 3] uint8 held in ``buffer``."""

    buffer: DeviceBuffer
    index: int
    shape: tuple[int, int, int]
    lease: Any = field(default=None, compare=False, repr=False)  # keeps the buffer out of its pool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


class DeviceFrames:
    """A chunk's frames [F, H, W, 3] uint8 on the GPU: one slot per frame (sample and hold may
    repeat one), each pointing into a decoded sequence."""

    dtype = np.dtype(np.uint8)

    def __init__(self, frames: list[DeviceFrame]) -> None:
        self.frames = list(frames)
        self.shape = (len(self.frames), *self.frames[0].shape)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.frames)

    def copy_into(self, target: DeviceBuffer, stream: Stream, offset: int = 0) -> None:
        """Device to device into ``target`` from ``offset``, ordered on ``stream``."""
        for i, frame in enumerate(self.frames):
            target.copy_from(frame.buffer, stream, offset + i * frame.nbytes, frame.nbytes, frame.index * frame.nbytes)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        stream = Stream()
        try:
            staging = DeviceBuffer(self.shape, self.dtype)
            self.copy_into(staging, stream)
            host = staging.download(stream)
            staging.free()
        finally:
            stream.destroy()
        return host if dtype is None else host.astype(dtype)


class Lease:
    """A pooled buffer in use: every frame of its sequence holds the lease, and when the last of
    them is gone the buffer goes back to its pool."""

    __slots__ = ("buffer", "__weakref__")

    def __init__(self, buffer) -> None:
        self.buffer = buffer


class BufferPool:
    """Device buffers kept for reuse, per shape: ``cudaFree`` synchronizes the whole device, so
    freeing a buffer per decoded sequence from the decode thread would stall inference. At most
    ``keep`` free buffers of a shape are kept; a buffer beyond that is freed."""

    def __init__(self, make: Callable[[tuple[int, ...]], Any], keep: int = 4) -> None:
        self.make, self.keep = make, keep
        self.free: dict[tuple[int, ...], list] = {}
        self.made = 0
        self.lock = threading.Lock()  # leases end on whichever thread drops the last frame

    def take(self, shape: tuple[int, ...]) -> Lease:
        with self.lock:
            spare = self.free.get(shape)
            buffer = spare.pop() if spare else None
        if buffer is None:
            buffer = self.make(shape)
            self.made += 1
        lease = Lease(buffer)
        weakref.finalize(lease, self._give_back, shape, buffer)
        return lease

    def _give_back(self, shape: tuple[int, ...], buffer) -> None:
        with self.lock:
            spare = self.free.setdefault(shape, [])
            if len(spare) < self.keep:
                spare.append(buffer)  # otherwise dropped: freed when nothing holds it
