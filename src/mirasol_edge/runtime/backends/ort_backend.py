"""ONNX Runtime: the CPU backend, and the CUDA execution provider where onnxruntime-gpu is installed.

I/O binding keeps every output as an ``OrtValue`` on the provider's device, and the next
step binds those values as inputs, so on CUDA the state never visits the host.
"""

from __future__ import annotations

import numpy as np

from ..engine_dir import EngineDir, verify_onnx
from ..manifest import QUANTIZED
from .base import Backend, BackendError, DeviceArray, OpenRunners, Runner

# ONNX Runtime rewrites DequantizeLinear -> MatMul -> Add into Reshape -> Gemm before its Q/DQ
# fusion runs, so a Q/DQ graph never reaches integer kernels and int8 runs slower than fp32.
# Without that rewrite the same graph fuses into MatMulIntegerToFloat (measured: bench/quantize.py).
QDQ_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def disabled_optimizers(precision: str) -> list[str]:
    return list(QDQ_DISABLED_OPTIMIZERS) if precision in QUANTIZED else []


class OrtRunner(Runner):
    def __init__(self, session, device_type: str, name: str, owner: OpenRunners) -> None:
        self.session, self.owner = session, owner
        self.device_type = device_type
        self.name = name
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_names = [i.name for i in session.get_inputs()]

    def _run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        binding = self.session.io_binding()  # per call: runs from several threads are safe
        for name in self.input_names:
            binding.bind_ortvalue_input(name, feeds[name])
        for name in self.output_names:
            binding.bind_output(name, self.device_type)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.get_outputs()))

    def close(self) -> None:
        self.owner.discard(self)


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, engines: EngineDir, device: str = "auto", threads: int = 0, spinning: bool = False) -> None:
        import onnxruntime as ort

        self.ort = ort
        available = ort.get_available_providers()
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise BackendError(f"device 'cuda' needs onnxruntime-gpu; this onnxruntime has {available}")
        if device not in ("cpu", "cuda"):
            raise BackendError(f"onnxruntime runs on 'cpu' or 'cuda', not {device!r}")
        self.device = device
        self.device_type = "cuda" if device == "cuda" else "cpu"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]

        # An ORT-optimized engine is tied to the version and the provider that wrote it (the build
        # optimizes for the CPU); on CUDA the plain ONNX is loaded and optimized online for CUDA.
        use_engines = (device == "cpu" and engines.backend == "onnxruntime"
                       and all(c.engine for c in engines.components.values()))
        if use_engines and engines.backend_version != ort.__version__:
            raise BackendError(
                f"{engines.path}: engines were optimized by onnxruntime {engines.backend_version}, this machine "
                f"has {ort.__version__}; rebuild them with mirasol-build --recipe cpu"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if use_engines:  # already optimized at build time
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.open_runners = OpenRunners()
        self.sessions = {}
        for name, info in engines.components.items():
            path = engines.engine_file(name) if use_engines else verify_onnx(engines.path, name, info)
            try:
                self.sessions[name] = ort.InferenceSession(str(path), options, providers=providers,
                                                           disabled_optimizers=disabled_optimizers(info.precision))
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
                raise BackendError(f"{path}: onnxruntime cannot load {name}: {exc}") from None

    def runner(self, component: str, lane: object | None = None) -> Runner:
        return self.open_runners.add(OrtRunner(self.sessions[component], self.device_type, component,
                                               self.open_runners))

    def upload(self, array: np.ndarray, into: DeviceArray | None = None, lane: object | None = None) -> DeviceArray:
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, 0)

    def download(self, value: DeviceArray) -> np.ndarray:
        return value.numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "version": self.ort.__version__}

    def close(self) -> None:
        self.open_runners.close_all()
        self.sessions.clear()
