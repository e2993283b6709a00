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
            raise CudaError("cuda-python is not installed (the TensorRT backend needs it): "
                            "pip install 'mirasol-edge[gpu]'") from exc
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
    """A CUDA stream. Non-blocking by default: it never synchronizes with the legacy default
    stream, so one runner's graph capture cannot pick up another thread's work."""

    def __init__(self, non_blocking: bool = True) -> None:
        self.rt = _cudart()
        flags = self.rt.cudaStreamNonBlocking if non_blocking else self.rt.cudaStreamDefault
        self.handle = check(self.rt.cudaStreamCreateWithFlags(flags))

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle))

    def __int__(self) -> int:
        return int(self.handle)

    def destroy(self) -> None:
        if getattr(self, "handle", None) is not None:
            self.rt.cudaStreamDestroy(self.handle)
            self.handle = None

    __del__ = destroy


class DeviceBuffer:
    """``capacity`` bytes of device memory holding an array of ``shape`` and ``dtype`` (shape may
    shrink). ``stream`` is the stream whose work last wrote it: a download waits for that one."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, capacity: int | None = None) -> None:
        self.rt = _cudart()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.capacity = capacity or max(1, int(np.prod(shape)) * self.dtype.itemsize)
        self.ptr = int(check(self.rt.cudaMalloc(self.capacity)))
        self.stream: Stream | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        """Host -> device on ``stream``. From pageable memory the call returns once the host array
        has been staged, so the array may go away; work queued later on ``stream`` sees the data."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.nbytes > self.capacity:
            raise CudaError(f"{array.nbytes} bytes do not fit a buffer of {self.capacity}")
        self.shape = array.shape
        check(self.rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, int(stream)))
        self.stream = stream

    def download(self, stream: Stream) -> np.ndarray:
        """Device -> host, after the work that wrote the buffer (one synchronization)."""
        stream = self.stream or stream
        out = np.empty(self.shape, self.dtype)
        check(self.rt.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, int(stream)))
        stream.synchronize()
        return out

    def copy_from(self, other: DeviceBuffer, stream: Stream, offset: int = 0, nbytes: int | None = None,
                  source_offset: int = 0) -> None:
        """Device -> device on ``stream`` (``nbytes`` of ``other`` from ``source_offset`` to ``offset``)."""
        count = other.nbytes if nbytes is None else nbytes
        check(self.rt.cudaMemcpyAsync(self.ptr + offset, other.ptr + source_offset, count,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, int(stream)))

    def zero(self, stream: Stream, offset: int = 0, nbytes: int | None = None) -> None:
        count = self.capacity - offset if nbytes is None else nbytes
        check(self.rt.cudaMemsetAsync(self.ptr + offset, 0, count, int(stream)))

    def free(self) -> None:
        if getattr(self, "ptr", 0):
            self.rt.cudaFree(self.ptr)
            self.ptr = 0

    __del__ = free


class Event:
    """A point in a stream's work, for timing it without synchronizing at each stage."""

    def __init__(self, stream: Stream) -> None:
        self.rt = _cudart()
        self.handle = check(self.rt.cudaEventCreate())
        check(self.rt.cudaEventRecord(self.handle, int(stream)))

    def ms_until(self, later: Event) -> float:
        return float(check(self.rt.cudaEventElapsedTime(self.handle, later.handle)))

    def destroy(self) -> None:
        if getattr(self, "handle", None) is not None:
            self.rt.cudaEventDestroy(self.handle)
            self.handle = None

    __del__ = destroy


class CaptureError(CudaError):
    """A stream capture failed; the stream was left usable (the capture was ended)."""


class Graph:
    """A captured CUDA graph of whatever ``enqueue`` puts on the stream.

    A capture that fails is ended before the error is raised (as trtexec does), so the stream
    stays usable and the caller can fall back to a plain enqueue; a partial graph is destroyed.
    """

    def __init__(self, stream: Stream, enqueue) -> None:
        rt = _cudart()
        self.rt, self.stream, self.graph, self.exec = rt, stream, None, None
        check(rt.cudaStreamBeginCapture(int(stream), rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        failure = None
        try:
            enqueue()
        except Exception as exc:  # TensorRT refused to enqueue under capture
            failure = exc
        err, graph = rt.cudaStreamEndCapture(int(stream))
        if int(err) != 0 or failure is not None:
            if graph is not None and int(err) == 0:
                rt.cudaGraphDestroy(graph)
            raise CaptureError(f"stream capture failed: {failure or rt.cudaGetErrorName(err)[1]}") from failure
        self.graph = graph
        try:
            self.exec = check(rt.cudaGraphInstantiate(graph, 0))
        except CudaError as exc:
            self.destroy()
            raise CaptureError(f"graph instantiation failed: {exc}") from None

    def launch(self) -> None:
        check(self.rt.cudaGraphLaunch(self.exec, int(self.stream)))

    def destroy(self) -> None:
        if getattr(self, "exec", None) is not None:
            self.rt.cudaGraphExecDestroy(self.exec)
            self.exec = None
        if getattr(self, "graph", None) is not None:
            self.rt.cudaGraphDestroy(self.graph)
            self.graph = None

    __del__ = destroy
