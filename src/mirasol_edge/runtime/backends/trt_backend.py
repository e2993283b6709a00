"""TensorRT and TensorRT-RTX: engines deserialized once, an execution context per runner.

State stays in device memory. Each runner owns two sets of output buffers and writes the one
that holds none of its inputs, so the AR step's output state (set A) is the next step's input
while the step writes set B: a swap of two buffers, never a copy through the host.

Each runner runs on a *lane*: a non-blocking CUDA stream owned by one path of one camera (its
pushes, or its questions), so a graph capture never sees another thread's work. Where every
shape is fixed (chunk encoder, AR step), full TensorRT's steps are captured once per buffer set
as CUDA graphs and replayed; a capture that fails falls back to a plain enqueue, remembered
with its reason. TensorRT-RTX captures whole graphs itself (its runtime config's
``cuda_graph_strategy``) and keeps its JIT-compiled kernels in a runtime cache on disk.

Opening checks the library version and the GPU's compute capability against the manifest
before TensorRT sees the plan: TensorRT's own validity check is no tamper or target check.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..cuda import CaptureError, DeviceBuffer, Event, Graph, Stream, compute_capability, device_name
from ..engine_dir import EngineDir
from ..files import write_bytes_atomic
from ..trt import lazy_import_trt, trt_logger
from .base import TENSORRT, Backend, BackendError, DeviceArray, OpenRunners, Runner

MAX_GRAPHS = 4  # two buffer sets, with room for a restored state's buffers
MAX_SEEN = 16  # input/output address sets remembered while waiting for a second sighting


def output_set_for(sets: list[set[int]], inputs: set[int]) -> int:
    """The buffer set to write: the first that holds none of the input addresses (so a step
    never reads and writes one buffer, whatever happened to the step before)."""
    for index, pointers in enumerate(sets):
        if not pointers & inputs:
            return index
    raise BackendError("every output buffer set holds one of this step's inputs")


def gpu_accepts(targets: list[str], found: str, hardware_compatibility: str) -> bool:
    """Whether engines built for ``targets`` run on a GPU of compute capability ``found``."""
    if hardware_compatibility == "ampere_plus":
        return tuple(map(int, found.split("."))) >= (8, 0)
    return not targets or found in targets


class TrtRunner(Runner):
    def __init__(self, backend: TrtBackend, name: str, lane: Stream) -> None:
        trt = backend.trt
        self.backend, self.name, self.stream = backend, name, lane
        self.engine = backend.engines[name]
        self.context = backend.create_context(name)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.input_names]
        self.dynamic = any(-1 in tuple(self.engine.get_tensor_shape(n)) for n in names)
        self.sets = [self._allocate_outputs(), self._allocate_outputs()]
        self.graphs: OrderedDict[tuple, Graph] = OrderedDict()
        self.seen: OrderedDict[tuple, None] = OrderedDict()
        # Why this runner does not capture CUDA graphs itself (None: it does, once warm).
        self.no_capture: str | None = (
            "TensorRT-RTX captures (runtime cuda_graph_strategy)" if backend.rtx and backend.cuda_graphs
            else "CUDA graphs off" if not backend.cuda_graphs
            else "dynamic shapes (text decoding)" if self.dynamic else None)
        capturable = getattr(self.context, "is_stream_capturable", None)
        if self.no_capture is None and capturable is not None and not capturable(int(self.stream)):
            self.no_capture = "TensorRT says this context is not stream capturable"

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
        inputs = {feeds[n].ptr for n in self.input_names}
        outputs = self.sets[output_set_for([{b.ptr for b in s.values()} for s in self.sets], inputs)]
        for name in self.input_names:
            buf = feeds[name]
            if self.dynamic and not self.context.set_input_shape(name, buf.shape):
                raise BackendError(f"{self.name}: input {name!r} of shape {list(buf.shape)} is outside the "
                                   "engine's optimization profile")
            if not self.context.set_tensor_address(name, buf.ptr):
                raise BackendError(f"{self.name}: TensorRT refused the address of input {name!r}")
        for name, buf in outputs.items():
            if self.dynamic:
                buf.shape = tuple(self.context.get_tensor_shape(name))
            if not self.context.set_tensor_address(name, buf.ptr):
                raise BackendError(f"{self.name}: TensorRT refused the address of output {name!r}")
        key = tuple(feeds[n].ptr for n in self.input_names) + (id(outputs),)
        if self.no_capture is not None:
            self._execute()
        elif key in self.graphs:
            self.graphs[key].launch()
        elif key in self.seen and len(self.graphs) < MAX_GRAPHS:  # warm: capture, then replay
            try:
                self.graphs[key] = Graph(self.stream, self._execute)
                self.graphs[key].launch()
            except CaptureError as exc:  # trtexec's way: keep going without graphs, say why
                self.no_capture = str(exc)
                self._execute()
        else:
            self.seen[key] = None
            if len(self.seen) > MAX_SEEN:
                self.seen.popitem(last=False)
            self._execute()
        for buf in outputs.values():
            buf.stream = self.stream  # a download waits for this lane, once
        return dict(outputs)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{self.name}: TensorRT execution failed: {'; '.join(self.backend.messages[-3:])}")

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.destroy()
        self.graphs.clear()
        for buffers in self.sets:
            for buf in buffers.values():
                buf.free()
        self.sets, self.context = [], None
        self.backend.open_runners.discard(self)


class TrtBackend(Backend):
    takes_device_frames = True  # NVDEC frames go device to device into the encoder's input

    def __init__(self, engines: EngineDir, device: str = "auto", cuda_graphs: bool = True,
                 runtime_cache: str | Path | None = None) -> None:
        if engines.backend not in TENSORRT:
            raise BackendError(f"{engines.path}: built for {engines.backend}, not TensorRT")
        self.name, self.device = engines.backend, "cuda"
        trt = lazy_import_trt(engines.backend)
        self.trt, self.rtx = trt, engines.backend == "tensorrt-rtx"
        target = engines.manifest.target
        compatible = target.version_compatible and not self.rtx  # RTX engines are tied to their release
        if trt.__version__ != engines.backend_version and not compatible:
            raise BackendError(
                f"{engines.path}: engines were built with {engines.backend} {engines.backend_version}, this machine "
                f"has {trt.__version__}; rebuild them here"
                + ("" if self.rtx else " (or build with build.version_compatible = true)"))
        found = compute_capability()
        if not gpu_accepts(engines.compute_capabilities, found, target.hardware_compatibility):
            raise BackendError(
                f"{engines.path}: engines target compute capability {', '.join(engines.compute_capabilities)}; "
                f"this GPU ({device_name()}) is {found}")
        self.cuda_graphs = cuda_graphs
        self.messages: list[str] = []
        self.runtime = trt.Runtime(trt_logger(trt, self.messages))
        if compatible:
            self.runtime.engine_host_code_allowed = True
        self.stream = Stream()  # uploads and downloads that belong to no lane
        self.open_runners = OpenRunners()  # closed streams' runners leave it
        self._stacks: dict[tuple, DeviceBuffer] = {}
        self.engines = {}
        for name in engines.components:
            path = engines.engine_file(name)  # its sha256 checked on open
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise BackendError(f"{path}: {self.name} cannot load it: {'; '.join(self.messages[-3:])}")
            self.engines[name] = engine
        self._cache_path = Path(runtime_cache) if runtime_cache else _default_cache(engines)
        self._configs = self._runtime_configs(cuda_graphs) if self.rtx else {}

    def _runtime_configs(self, cuda_graphs: bool) -> dict:
        """TensorRT-RTX: one runtime cache for every context (JIT kernels compiled once, kept on
        disk between runs), whole-graph CUDA capture by the runtime itself."""
        trt = self.trt
        configs, self._cache = {}, None
        for name, engine in self.engines.items():
            config = engine.create_runtime_config()
            if self._cache is None:
                self._cache = config.create_runtime_cache()
                if self._cache_path.is_file():
                    self._cache.deserialize(self._cache_path.read_bytes())
            config.set_runtime_cache(self._cache)
            if cuda_graphs:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            configs[name] = config
        return configs

    def create_context(self, name: str):
        engine = self.engines[name]
        context = (engine.create_execution_context(self._configs[name]) if self.rtx
                   else engine.create_execution_context())
        if context is None:
            raise BackendError(f"{name}: {self.name} could not create an execution context: "
                               f"{'; '.join(self.messages[-3:])}")
        return context

    def lane(self) -> Stream:
        return Stream()

    def runner(self, component: str, lane: Stream | None = None) -> Runner:
        # own context and buffers: one per stream
        return self.open_runners.add(TrtRunner(self, component, lane or Stream()))

    def upload(self, array: np.ndarray, into: DeviceBuffer | None = None, lane: Stream | None = None) -> DeviceArray:
        if into is None or into.capacity < array.nbytes:
            into = DeviceBuffer(array.shape, array.dtype)
        into.upload(array, lane or self.stream)
        if lane is None:
            self.stream.synchronize()  # no lane will order it: finish before anyone reads it
        return into

    def upload_device(self, frames, into: DeviceBuffer | None = None, lane: Stream | None = None) -> DeviceArray:
        """``DeviceFrames`` (decoded on the GPU) device to device into the input buffer, as batch 1."""
        shape = (1, *frames.shape)
        if into is None or into.capacity < frames.nbytes:
            into = DeviceBuffer(shape, frames.dtype)
        into.shape, into.dtype = shape, frames.dtype
        stream = lane or self.stream
        frames.copy_into(into, stream)
        into.stream = stream
        if lane is None:
            stream.synchronize()
        return into

    def download(self, value: DeviceArray) -> np.ndarray:
        return value.download(self.stream)

    def mark(self, lane: Stream | None = None) -> Event:
        return Event(lane or self.stream)

    def elapsed_ms(self, start: Event, end: Event) -> float:
        return start.ms_until(end)  # GPU time between the marks; the caller has waited for the lane

    def stack(self, values: list[DeviceBuffer], batch: int, key: str = "", lane: Stream | None = None) -> DeviceArray:
        """Batch-1 buffers -> rows of one persistent buffer, device to device; zero rows pad the rest."""
        stream, first = lane or self.stream, values[0]
        for v in values:
            if v.stream is not None and v.stream is not stream:
                v.stream.synchronize()  # written on another lane: wait for it once
        shape = (batch, *first.shape[1:])
        slot = (key, shape, first.dtype.str)
        out = self._stacks.get(slot)
        if out is None:
            out = self._stacks[slot] = DeviceBuffer(shape, first.dtype)
        row = first.nbytes
        for i, v in enumerate(values):
            out.copy_from(v, stream, offset=i * row, nbytes=row)
        if len(values) < batch:
            out.zero(stream, offset=len(values) * row)
        out.stream = stream
        return out

    def unstack(self, value: DeviceBuffer, count: int, into: list[DeviceBuffer] | None = None,
                lane: Stream | None = None) -> list[DeviceArray]:
        """Rows of a batched buffer -> per-stream buffers (``into``: each stream's previous state,
        already consumed, overwritten in place), device to device."""
        stream = lane or value.stream or self.stream
        row = value.nbytes // value.shape[0]
        outs = []
        for i in range(count):
            target = into[i] if into is not None else DeviceBuffer((1, *value.shape[1:]), value.dtype)
            target.shape = (1, *value.shape[1:])
            target.copy_from(value, stream, nbytes=row, source_offset=i * row)
            target.stream = stream
            outs.append(target)
        stream.synchronize()  # these become the streams' state: an ask on another lane may read them next
        return outs

    def describe(self) -> dict:
        graphs = {r.name: r.no_capture or ("captured" if r.graphs else "not yet captured") for r in self.open_runners}
        return {"backend": self.name, "device": f"cuda ({device_name()}, sm {compute_capability()})",
                "version": self.trt.__version__, "cuda_graphs": graphs}

    def close(self) -> None:
        self.open_runners.close_all()
        for buf in self._stacks.values():
            buf.free()
        self._stacks.clear()
        if self.rtx and self._cache is not None:
            try:
                write_bytes_atomic(self._cache_path, bytes(self._cache.serialize()))
            except OSError:
                pass  # a read-only engine directory: the cache is an optimization, not a result
        self.stream.destroy()


def _default_cache(engines: EngineDir) -> Path:
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return home / "mirasol-edge" / "rtx-runtime" / f"{engines.manifest_sha256[:16]}.cache"
