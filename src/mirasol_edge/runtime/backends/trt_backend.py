"""TensorRT and TensorRT-RTX: engines deserialized once, an execution context per runner.

State stays in device memory. Each runner owns two sets of output buffers and alternates
between them, so the AR step's output state (set A) is the next step's input while the
step writes set B: a swap of two buffers, never a copy through the host. Where every shape
is fixed (chunk encoder, AR step) the step is captured once per buffer set as a CUDA graph
and replayed.

Opening checks the library version and the GPU's compute capability against the manifest
before TensorRT sees the plan: TensorRT's own validity check is no tamper or target check.
"""

from __future__ import annotations

import numpy as np

from ..cuda import DeviceBuffer, Graph, Stream, compute_capability, device_name
from ..engine_dir import EngineDir
from ..trt import lazy_import_trt, trt_logger
from .base import Backend, BackendError, DeviceArray, Runner

MAX_GRAPHS = 4  # two buffer sets, with room for a restored state's buffers


class TrtRunner(Runner):
    def __init__(self, backend: TrtBackend, name: str) -> None:
        trt = backend.trt
        self.backend, self.name = backend, name
        self.engine = backend.engines[name]
        self.context = self.engine.create_execution_context()
        self.stream = backend.stream
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.input_names]
        self.dynamic = any(-1 in tuple(self.engine.get_tensor_shape(n)) for n in names)
        self.sets = [self._allocate_outputs(), self._allocate_outputs()]
        self.turn = 0
        self.graphs: dict[tuple, Graph] = {}
        self.seen: set[tuple] = set()

    def _max_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.engine.get_tensor_shape(name))
        if -1 not in shape:
            return shape
        # Output lengths follow the inputs: size the buffer for the profile's largest input.
        longest = max(
            top for i in self.input_names
            for top, dim in zip(self.engine.get_tensor_profile_shape(i, 0)[2], self.engine.get_tensor_shape(i))
            if dim == -1
        )
        return tuple(longest + 1 if d == -1 else d for d in shape)

    def _allocate_outputs(self) -> dict[str, DeviceBuffer]:
        trt = self.backend.trt
        return {n: DeviceBuffer(self._max_shape(n), trt.nptype(self.engine.get_tensor_dtype(n)))
                for n in self.outputs}

    def _run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        outputs = self.sets[self.turn]
        self.turn ^= 1
        for name in self.input_names:
            buf = feeds[name]
            if self.dynamic:
                self.context.set_input_shape(name, buf.shape)
            self.context.set_tensor_address(name, buf.ptr)
        for name, buf in outputs.items():
            if self.dynamic:
                buf.shape = tuple(self.context.get_tensor_shape(name))
            self.context.set_tensor_address(name, buf.ptr)
        key = tuple(feeds[n].ptr for n in self.input_names) + (id(outputs),)
        if self.dynamic:
            self._execute()
        elif key in self.graphs:
            self.graphs[key].launch()
        elif key in self.seen and len(self.graphs) < MAX_GRAPHS:  # warm: capture, then replay
            self.graphs[key] = Graph(self.stream, self._execute)
            self.graphs[key].launch()
        else:
            self.seen.add(key)
            self._execute()
        self.stream.synchronize()
        return dict(outputs)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{self.name}: TensorRT execution failed")


class TrtBackend(Backend):
    def __init__(self, engines: EngineDir, device: str = "auto") -> None:
        if engines.backend not in ("tensorrt", "tensorrt-rtx"):
            raise BackendError(f"{engines.path}: built for {engines.backend}, not TensorRT")
        self.name = engines.backend
        self.device = "cuda"
        trt = lazy_import_trt(engines.backend)
        self.trt = trt
        compatible = engines.manifest.target.version_compatible
        if trt.__version__ != engines.backend_version and not compatible:
            raise BackendError(
                f"{engines.path}: engines were built with {engines.backend} {engines.backend_version}, this machine "
                f"has {trt.__version__}; rebuild them here (or build with build.version_compatible = true)"
            )
        found = compute_capability()
        wanted = engines.compute_capabilities
        if wanted and found not in wanted:
            raise BackendError(
                f"{engines.path}: engines target compute capability {', '.join(wanted)}; this GPU "
                f"({device_name()}) is {found}"
            )
        self.messages: list[str] = []
        self.runtime = trt.Runtime(trt_logger(trt, self.messages))
        if compatible:
            self.runtime.engine_host_code_allowed = True
        self.stream = Stream()
        self.engines = {}
        for name, info in engines.components.items():
            plan = info.engine.read_bytes()  # sha256 already verified by EngineDir.open
            engine = self.runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise BackendError(f"{info.engine}: {self.name} cannot load it: {'; '.join(self.messages[-3:])}")
            self.engines[name] = engine

    def runner(self, component: str) -> Runner:
        return TrtRunner(self, component)  # own context and buffers: one per stream

    def upload(self, array: np.ndarray, into: DeviceBuffer | None = None) -> DeviceArray:
        if into is None or into.capacity < array.nbytes:
            into = DeviceBuffer(array.shape, array.dtype)
        into.upload(array, self.stream)
        return into

    def download(self, value: DeviceArray) -> np.ndarray:
        return value.download(self.stream)

    def describe(self) -> dict:
        return {"backend": self.name, "device": f"cuda ({device_name()}, sm {compute_capability()})",
                "version": self.trt.__version__}
