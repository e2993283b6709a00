"""Frames that stay on the GPU: DALI's NVDEC output is copied once, device to device, into
buffers of ours (DALI reuses its own on the next run), and a chunk's frames go from those,
device to device again, straight into the engine's input buffer. Nothing visits the host.

A backend without a device path (ONNX Runtime on the CPU, PyTorch) reads them through
``numpy.asarray``, which downloads them: correct everywhere, zero-copy on TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mirasol_edge.runtime.cuda import DeviceBuffer, Stream


@dataclass(frozen=True)
class DeviceFrame:
    """Frame ``index`` of a decoded sequence [S, H, W, 3] uint8 held in ``buffer``."""

    buffer: DeviceBuffer
    index: int
    shape: tuple[int, int, int]

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
