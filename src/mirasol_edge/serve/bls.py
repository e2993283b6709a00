"""The runtime's backend inside Triton: each component runs as its own Triton model, called
through BLS (``pb_utils.InferenceRequest``) from the stream model.

The arrays this backend hands the stream are ``pb_utils.Tensor``s. On a GPU server the
engines' outputs are asked for in GPU memory, so a stream's state stays there between its
requests and is passed to the next call without a trip through the host (renamed through
DLPack, not copied); on the CPU twin they are host tensors.
"""

from __future__ import annotations

import numpy as np

from mirasol_edge.runtime.backends.base import Backend, BackendError, DeviceArray, Runner
from mirasol_edge.runtime.dlpack import to_host
from mirasol_edge.runtime.engine_dir import EngineDir


class BlsRunner(Runner):
    def __init__(self, backend: BlsBackend, component: str) -> None:
        info = backend.engines.components[component]
        self.backend = backend
        self.name = component
        self.input_names = list(info.inputs)
        self.output_names = list(info.outputs)

    def _run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        pb = self.backend.pb
        inputs = [self.backend.named(name, feeds[name]) for name in self.input_names]
        options = {}
        if self.backend.device == "gpu":
            options["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_GPU, 0)
        response = pb.InferenceRequest(model_name=self.name, inputs=inputs, requested_output_names=self.output_names,
                                       **options).exec()
        if response.has_error():
            raise BackendError(f"Triton model {self.name!r}: {response.error().message()}")
        if self.backend.device == "cpu":
            # Copied out of the Python backend's shared-memory pool, which never shrinks: held there,
            # 2,000 idle streams' state kept /dev/shm at 343 MB after their release (20 MB copied).
            return {t.name(): pb.Tensor(t.name(), np.array(t.as_numpy(), copy=True)) for t in response.output_tensors()}
        return {t.name(): t for t in response.output_tensors()}


class BlsBackend(Backend):
    name = "triton"

    def __init__(self, pb_utils, engines: EngineDir, memory: str = "cpu") -> None:
        """``pb_utils`` is ``triton_python_backend_utils`` (importable only inside Triton's stub)."""
        if memory not in ("cpu", "gpu"):
            raise BackendError(f"state_memory must be cpu or gpu, not {memory!r}")
        self.pb = pb_utils
        self.engines = engines
        self.device = memory

    def runner(self, component: str, lane: object | None = None) -> Runner:
        return BlsRunner(self, component)

    def named(self, name: str, value):
        """The same tensor under the input name the next model expects (``present.x`` -> ``past.x``)."""
        if value.name() == name:
            return value
        if value.is_cpu():
            return self.pb.Tensor(name, value.as_numpy())
        return self.pb.Tensor.from_dlpack(name, value.to_dlpack())

    def upload(self, array: np.ndarray, into: DeviceArray | None = None, lane: object | None = None) -> DeviceArray:
        return self.pb.Tensor("host", np.ascontiguousarray(array))

    def download(self, value: DeviceArray) -> np.ndarray:
        if value.is_cpu():
            return value.as_numpy()
        return to_host(value.to_dlpack())  # GPU memory: one cudaMemcpy, no torch in the image
