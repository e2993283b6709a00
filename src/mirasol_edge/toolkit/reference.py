"""PyTorch: the reference backend. Runs the same four graphs the engines were exported from.

The model comes from what the manifest names: the checkpoint (its sha256 must still match)
or the preset and seed of a random-weights build. Needs the ``build`` extra (torch). The
runtime finds it through the ``mirasol_edge.backends`` entry point, so it never imports
the toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirasol_edge.runtime.backends.base import Backend, BackendError, DeviceArray, Runner
from mirasol_edge.runtime.components import COMPONENTS, contracts
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.files import sha256_file
from mirasol_edge.runtime.manifest import Component
from mirasol_edge.runtime.stream import MirasolEngines
from mirasol_edge.runtime.tokenizer import ByteTokenizer


def load_reference_model(engines: EngineDir):
    """The PyTorch model the manifest says these engines were built from."""
    import torch

    from .source import load_source

    source = engines.manifest.model
    if "checkpoint" in source:
        path = Path(source["checkpoint"])
        if not path.is_file():
            raise BackendError(f"{engines.path}: built from {path}, which is not here; the torch backend needs it")
        if sha256_file(path) != source["sha256"]:
            raise BackendError(f"{path}: checkpoint changed since {engines.path} was built (sha256 differs)")
        model = load_source(path, None).whole()
    else:
        model = load_source(None, source["preset"], source.get("seed", 0)).whole()
    if model.cfg.hash() != engines.manifest.model["config_hash"]:
        raise BackendError(f"{engines.path}: the reference model's config hash differs from the manifest's")
    return model.eval().to(torch.float32)


class TorchRunner(Runner):
    def __init__(self, name: str, module, inputs: list[str], outputs: list[str], autocast=None) -> None:
        self.name, self.module, self.input_names, self.outputs = name, module, inputs, outputs
        self.autocast = autocast  # makes a torch.autocast for fp16 on CUDA; None for fp32

    def _run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        import contextlib

        import torch

        cast = self.autocast() if self.autocast else contextlib.nullcontext()  # one per call: not reentrant
        with torch.no_grad(), cast:  # thread-local: set in the calling thread
            outs = self.module(*(feeds[n] for n in self.input_names))
        return dict(zip(self.outputs, outs))


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, engines: EngineDir, device: str = "auto", model=None, precision: str = "fp32") -> None:
        """``precision="fp16"`` runs the fp32 weights under CUDA autocast (LayerNorm and softmax stay fp32)."""
        import torch

        from . import export

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = device
        model = (model or load_reference_model(engines)).to(device)
        if precision not in ("fp32", "fp16") or (precision == "fp16" and not device.startswith("cuda")):
            raise BackendError(f"the torch backend runs fp32, or fp16 on CUDA; not {precision} on {device}")
        self.precision = precision
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if precision == "fp16" else None
        self.runners = {
            name: TorchRunner(name, export.GRAPHS[name](model).eval(), list(info.inputs), list(info.outputs), autocast)
            for name, info in engines.components.items()
        }

    def runner(self, component: str, lane: object | None = None) -> Runner:
        return self.runners[component]

    def upload(self, array: np.ndarray, into: DeviceArray | None = None, lane: object | None = None) -> DeviceArray:
        return self.torch.from_numpy(np.array(array)).to(self.device)

    def download(self, value: DeviceArray) -> np.ndarray:
        return value.detach().cpu().numpy()

    def stack(self, values: list[DeviceArray], batch: int, key: str = "", lane: object | None = None) -> DeviceArray:
        pad = [self.torch.zeros_like(values[0])] * (batch - len(values))
        return self.torch.cat(values + pad)

    def unstack(self, value: DeviceArray, count: int, into: list | None = None,
                lane: object | None = None) -> list[DeviceArray]:
        return [value[i : i + 1].clone() for i in range(count)]

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "version": self.torch.__version__,
                "precision": self.precision}


@dataclass(frozen=True)
class ReferenceDir:
    """What the stream reads from an engine directory, for a model with no engines yet: the
    component contract's tensors, the model's initial state and the recipe's text limits."""

    path: Path
    config: dict
    batch: int
    max_question_tokens: int
    max_answer_tokens: int
    manifest_sha256: str
    components: dict[str, Component]  # as a build's manifest would list them, without files
    state: dict[str, np.ndarray]

    @classmethod
    def of(cls, model, max_question_tokens: int, max_answer_tokens: int) -> ReferenceDir:
        cfg = model.cfg
        infos = {name: Component(f"{name}.onnx", "", "fp32", {t.name: t for t in c.inputs},
                                 {t.name: t for t in c.outputs}, {}, "reference")
                 for name, c in contracts(cfg, 1, max_question_tokens, max_answer_tokens).items()}
        state = {name: t.detach().cpu().numpy() for name, t in model.init_state(1).items()}
        return cls(Path(f"<reference {cfg.name}>"), cfg.to_dict(), 1, max_question_tokens, max_answer_tokens,
                   f"reference:{cfg.hash()}", infos, state)

    def tokenizer(self):
        return ByteTokenizer()

    def initial_state(self) -> dict[str, np.ndarray]:
        return self.state



class RecordingRunner(Runner):
    """Wraps a runner and keeps a host copy of every feed it is given (Polygraphy's recording runner)."""

    def __init__(self, inner: Runner, backend: Backend, into: list[dict[str, np.ndarray]]) -> None:
        self.inner, self.backend, self.into = inner, backend, into
        self.name, self.input_names = inner.name, inner.input_names

    def _run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        self.into.append({n: np.array(self.backend.download(feeds[n])) for n in self.input_names})
        return self.inner.run(feeds)


class RecordingBackend(Backend):
    """A backend whose runners record their real inputs, per component, as a stream runs."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name, self.device = inner, f"recording {inner.name}", inner.device
        self.records: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in COMPONENTS}

    def runner(self, component: str, lane: object | None = None) -> Runner:
        return RecordingRunner(self.inner.runner(component, lane), self.inner, self.records[component])

    def upload(self, array: np.ndarray, into: DeviceArray | None = None, lane: object | None = None) -> DeviceArray:
        return self.inner.upload(array, into, lane)

    def download(self, value: DeviceArray) -> np.ndarray:
        return self.inner.download(value)


PARITY_WATCH = ("is there a beep?", ("yes", "no"))


def record_stream(model, clip: Path, questions: list[str], max_question_tokens: int | None = None,
                  max_answer_tokens: int | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component's real inputs while the fp32 model streams ``clip`` through ``MirasolStream``
    and answers ``questions`` greedily: the one reference path for parity inputs and calibration."""
    cfg = model.cfg
    ref = ReferenceDir.of(model, max_question_tokens or cfg.max_question_tokens,
                          max_answer_tokens or cfg.max_answer_tokens)
    recording = RecordingBackend(TorchBackend(ref, "cpu", model=model))
    with MirasolEngines(ref, recording).stream() as stream:
        stream.watch(*PARITY_WATCH)  # scored on every push: text_score's real inputs
        # PyAV and numpy: the reference is the same on every machine (a broken NVDEC cannot fail a build)
        for chunk in chunks(clip, ChunkSpec.from_config(cfg), decoder="pyav", mel="numpy"):
            stream.push(chunk)
        for question in questions:
            stream.ask(question)
    return recording.records
