"""The one seam to CUDA: device memory, streams, copies and graphs, through cuda-python.

Everything the TensorRT backend needs from CUDA goes through here, so swapping cuda-python
for pycuda (or a Jetson's own bindings) touches one file.
"""

from __future__ import annotations

import numpy as np

from mirasol_edge.errors import MirasolError


class CudaError(MirasolError, RuntimeError):
    """A CUDA call failed, or cuda-python is not installed."""

    exit_code = 2


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise CudaError("the TensorRT backend needs cuda-python: pip install 'mirasol-edge[gpu]'") from exc
    return runtime


def check(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = _cudart().cudaGetErrorName(err)[1]
        raise CudaError(f"CUDA error {int(err)} ({name.decode() if isinstance(name, bytes) else name})")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_problem() -> str | None:
    """Why no CUDA GPU can be used here (None when one can), asked of the CUDA runtime itself:
    torch's ``cuda.is_available()`` says False with the CPU torch this project installs."""
    try:
        rt = _cudart()
    except CudaError as exc:
        return str(exc)
    try:
        count = check(rt.cudaGetDeviceCount())
    except CudaError as exc:  # no driver, no device: cudaErrorNoDevice / InsufficientDriver
        return f"the CUDA runtime finds no usable GPU: {exc}"
    return None if count > 0 else "the CUDA runtime reports 0 GPUs"


def compute_capability(device: int = 0) -> str:
    prop = check(_cudart().cudaGetDeviceProperties(device))
    return f"{prop.major}.{prop.minor}"


def device_name(device: int = 0) -> str:
    name = check(_cudart().cudaGetDeviceProperties(device)).name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


class Stream:
    def __init__(self) -> None:
        self.rt = _cudart()
        self.handle = check(self.rt.cudaStreamCreate())

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle))

    def __int__(self) -> int:
        return int(self.handle)


class DeviceBuffer:
    """``nbytes`` of device memory holding an array of ``shape`` and ``dtype`` (shape may shrink)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, capacity: int | None = None) -> None:
        self.rt = _cudart()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.capacity = capacity or max(1, int(np.prod(shape)) * self.dtype.itemsize)
        self.ptr = int(check(self.rt.cudaMalloc(self.capacity)))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.nbytes > self.capacity:
            raise CudaError(f"{array.nbytes} bytes do not fit a buffer of {self.capacity}")
        self.shape = array.shape
        check(self.rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, int(stream)))
        stream.synchronize()  # the host array may go away after we return

    def download(self, stream: Stream) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        check(self.rt.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, int(stream)))
        stream.synchronize()
        return out

    def copy_from(self, other: DeviceBuffer, stream: Stream, offset: int = 0) -> None:
        check(self.rt.cudaMemcpyAsync(self.ptr + offset, other.ptr, other.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, int(stream)))

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            self.rt.cudaFree(self.ptr)
            self.ptr = 0


class Graph:
    """A captured CUDA graph of whatever ``enqueue`` puts on the stream."""

    def __init__(self, stream: Stream, enqueue) -> None:
        rt = _cudart()
        self.rt, self.stream = rt, stream
        check(rt.cudaStreamBeginCapture(int(stream), rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            enqueue()
        finally:
            graph = check(rt.cudaStreamEndCapture(int(stream)))
        self.graph = graph
        self.exec = check(rt.cudaGraphInstantiate(graph, 0))

    def launch(self) -> None:
        check(self.rt.cudaGraphLaunch(self.exec, int(self.stream)))

    def __del__(self) -> None:
        if getattr(self, "exec", None) is not None:
            self.rt.cudaGraphExecDestroy(self.exec)
            self.rt.cudaGraphDestroy(self.graph)
