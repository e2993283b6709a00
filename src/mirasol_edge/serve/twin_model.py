"""The CPU twin's engine model: a Python-backend Triton model that runs one component's ONNX
through ONNX Runtime, with the same name, inputs and outputs as the ``onnxruntime_onnx`` or
``tensorrt_plan`` model it stands in for. Loaded by Triton's Python stub."""

from __future__ import annotations

import json
from pathlib import Path

from mirasol_edge.runtime.backends.ort_backend import disabled_optimizers


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params["graph"]
        precision = params.get("precision", "fp32")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one process per component on a shared CPU: no thread fights
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=disabled_optimizers(precision))
        self.inputs = [t.name for t in self.session.get_inputs()]
        self.outputs = [t.name for t in self.session.get_outputs()]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb

        responses = []
        for request in requests:
            try:
                feeds = {n: pb.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
                values = self.session.run(self.outputs, feeds)
                responses.append(pb.InferenceResponse([pb.Tensor(n, v) for n, v in zip(self.outputs, values)]))
            except Exception as exc:  # the caller gets the message; the model keeps serving
                responses.append(pb.InferenceResponse(error=pb.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
