"""PyTorch: the reference backend. Runs the same four graphs the engines were exported from.

The model comes from what the manifest names: the checkpoint (its sha256 must still match)
or the preset and seed of a random-weights build. Needs the ``build`` extra (torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine_dir import EngineDir
from ..manifest import sha256_file
from .base import Backend, BackendError, DeviceArray, Runner


def load_reference_model(engines: EngineDir):
    """The PyTorch model the manifest says these engines were built from."""
    import torch

    from mirasol_edge.toolkit.source import load_source

    source = engines.manifest["model"]
    if "checkpoint" in source:
        path = Path(source["checkpoint"])
        if not path.is_file():
            raise BackendError(f"{engines.path}: built from {path}, which is not here; the torch backend needs it")
        if sha256_file(path) != source["sha256"]:
            raise BackendError(f"{path}: checkpoint changed since {engines.path} was built (sha256 differs)")
        model = load_source(path, None).whole()
    else:
        model = load_source(None, source["preset"], source.get("seed", 0)).whole()
    if model.cfg.hash() != engines.manifest["model"]["config_hash"]:
        raise BackendError(f"{engines.path}: the reference model's config hash differs from the manifest's")
    return model.eval().to(torch.float32)


class TorchRunner(Runner):
    def __init__(self, module, inputs: list[str], outputs: list[str]) -> None:
        self.module, self.inputs, self.outputs = module, inputs, outputs

    def run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        import torch

        with torch.no_grad():  # thread-local: set in the calling thread
            outs = self.module(*(feeds[n] for n in self.inputs))
        return dict(zip(self.outputs, outs))


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, engines: EngineDir, device: str = "auto", model=None) -> None:
        import torch

        from mirasol_edge.toolkit import export

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = device
        model = (model or load_reference_model(engines)).to(device)
        graphs = {"chunk_encoder": export.ChunkEncoderGraph, "ar_step": export.ARStepGraph,
                  "text_prefill": export.TextPrefillGraph, "text_decode": export.TextDecodeGraph}
        self.runners = {
            name: TorchRunner(graphs[name](model).eval(), list(info.inputs), list(info.outputs))
            for name, info in engines.components.items()
        }

    def runner(self, component: str) -> Runner:
        return self.runners[component]

    def upload(self, array: np.ndarray, into: DeviceArray | None = None) -> DeviceArray:
        return self.torch.from_numpy(np.array(array)).to(self.device)

    def download(self, value: DeviceArray) -> np.ndarray:
        return value.detach().cpu().numpy()

    def stack(self, values: list[DeviceArray], batch: int) -> DeviceArray:
        pad = [self.torch.zeros_like(values[0])] * (batch - len(values))
        return self.torch.cat(values + pad)

    def unstack(self, value: DeviceArray, count: int) -> list[DeviceArray]:
        return [value[i : i + 1].clone() for i in range(count)]

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "version": self.torch.__version__}
