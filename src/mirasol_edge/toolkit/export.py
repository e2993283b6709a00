"""One ONNX graph per component, with the streaming state as explicit inputs and outputs.

The names, dtypes, shapes and dynamic axes of every graph come from the component contract
(``mirasol_edge.runtime.components``); this module wraps the model's parts as graphs that
take and return exactly those tensors, and exports them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.runtime.components import ComponentContract, contracts, kv_names

from .model import Mirasol
from .tokenizer import prompt_ids

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GB; go external well before that


class ExportError(MirasolError, RuntimeError):
    """A component failed to export or its ONNX does not match PyTorch."""

    exit_code = 4


@dataclass
class ComponentSpec:
    """A contract ready to export: the graph module and example inputs in the contract's order."""

    contract: ComponentContract
    module: nn.Module
    inputs: dict[str, Tensor]

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def outputs(self) -> list[str]:
        return self.contract.output_names

    @property
    def dynamic(self) -> dict[str, dict[int, tuple[str, int, int]]]:
        """input name -> {axis: (dim name, min, max)} for the lengths that vary (the profiles' too)."""
        bounds = self.contract.dynamic
        return {t.name: {axis: (dim, *bounds[dim]) for axis, dim in enumerate(t.shape) if isinstance(dim, str)}
                for t in self.contract.inputs if any(isinstance(d, str) for d in t.shape)}


class ContractGraph(nn.Module):
    """A component as a graph that takes and returns exactly its contract's tensors: the exporter
    passes them in the contract's order, ``step`` reads and writes them by name."""

    def __init__(self, model: Mirasol, name: str) -> None:
        super().__init__()
        self.contract = contracts(model.cfg)[name]  # names only: the batch changes shapes, not names

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        out = self.step(dict(zip(self.contract.input_names, tensors, strict=True)))
        return tuple(out[n] for n in self.contract.output_names)

    def state_in(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """The stream state this component carries, by state name."""
        return {s: feeds[inp] for s, (inp, _) in self.contract.state.items()}

    def state_out(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {out: state[s] for s, (_, out) in self.contract.state.items()}

    def step(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError


class ChunkEncoderGraph(ContractGraph):
    def __init__(self, model: Mirasol) -> None:
        super().__init__(model, "chunk_encoder")
        self.encoder = model.chunk_encoder

    def step(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        # Frames arrive as decoded, uint8: the engine scales them on its device, so a chunk crosses
        # to a GPU at a quarter of the float32 bytes and no CPU converts it.
        video = feeds["video"].to(torch.float32) / 255.0
        latents, memory = self.encoder(video, feeds.get("mel"), self.state_in(feeds).get("memory"))
        return {"latents": latents, **self.state_out({"memory": memory})}


class ARStepGraph(ContractGraph):
    def __init__(self, model: Mirasol) -> None:
        super().__init__(model, "ar_step")
        self.model = model

    def step(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        out, state = self.model.ar_step(feeds["latents"], None, self.state_in(feeds))
        return {"outputs": out, **self.state_out(state)}


class TextPrefillGraph(ContractGraph):
    def __init__(self, model: Mirasol) -> None:
        super().__init__(model, "text_prefill")
        self.model = model

    def step(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, depth = self.model.cfg, self.model.cfg.text_depth
        age, valid = self.model.ar.context_ages(feeds["pos"], cfg.window_chunks, cfg.latents_per_chunk)
        memory, cross_bias = self.model.text.memory(feeds["context"], age, valid)
        cross = self.model.text.cross_kv(memory)
        logits, presents = self.model.text(feeds["tokens"], cross, cross_bias)
        return {"logits": logits[:, -1], **_named(kv_names("present", depth), presents),
                **_named(kv_names("cross", depth), cross), "cross_bias": cross_bias}


class TextDecodeGraph(ContractGraph):
    def __init__(self, model: Mirasol) -> None:
        super().__init__(model, "text_decode")
        self.text = model.text
        self.depth = model.cfg.text_depth

    def step(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        past, cross = (_pairs(feeds, kv_names(prefix, self.depth)) for prefix in ("past", "cross"))
        logits, presents = self.text(feeds["token"], cross, feeds["cross_bias"], past)
        return {"logits": logits[:, -1], **_named(kv_names("present", self.depth), presents)}


def _pairs(feeds: dict[str, Tensor], names: list[str]) -> list[tuple[Tensor, Tensor]]:
    """(key, value) per layer from ``feeds``, in the order ``kv_names`` gives."""
    return [(feeds[k], feeds[v]) for k, v in zip(names[0::2], names[1::2])]


def _named(names: list[str], pairs) -> dict[str, Tensor]:
    return dict(zip(names, (t for kv in pairs for t in kv), strict=True))


GRAPHS = {"chunk_encoder": ChunkEncoderGraph, "ar_step": ARStepGraph, "text_prefill": TextPrefillGraph,
          "text_decode": TextDecodeGraph}


def _examples(model: Mirasol, contract: ComponentContract, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Example inputs, named and shaped by the contract: the given stream state where the
    contract carries state, a real prompt and its prefill for the text steps, else the
    contract's own examples (random frames, mel and latents)."""
    carried = {inp: state[s] for s, (inp, _) in contract.state.items()}
    if contract.name in ("chunk_encoder", "ar_step"):
        rng = np.random.default_rng(0)
        return {t.name: carried[t.name] if t.name in carried else torch.from_numpy(t.example(rng, {}))
                for t in contract.inputs}
    cfg = model.cfg
    prompt = prompt_ids(model.tokenizer, "what colour was the first shape?", cfg.max_question_tokens)
    prefill = {"tokens": torch.tensor([prompt]), **{inp: state[s][:1] for inp, s in
                                                    contracts(cfg)["text_prefill"].from_state.items()}}
    if contract.name == "text_prefill":
        return prefill
    with torch.no_grad():
        outs = TextPrefillGraph(model).step(prefill)
    return {"token": torch.tensor([[ord("r")]]), **{inp: outs[src] for inp, src in contract.from_previous.items()}}


def component_spec(model: Mirasol, name: str, batch: int, state: dict[str, Tensor],
                   max_question_tokens: int | None = None, max_answer_tokens: int | None = None) -> ComponentSpec:
    """One graph with example inputs; ``state`` is a stream state (``model.init_state`` or real
    pushes). Needs only that component's part of the model to be real (see toolkit.source)."""
    if name not in GRAPHS:
        raise UsageError(f"unknown component {name!r}; the components are {', '.join(GRAPHS)}")
    contract = contracts(model.cfg, batch, max_question_tokens, max_answer_tokens)[name]
    return ComponentSpec(contract, GRAPHS[name](model), _examples(model, contract, state))


def _dynamic_shapes(spec: ComponentSpec) -> tuple | None:
    if not spec.dynamic:
        return None
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for name in spec.inputs:
        axes = {}
        for axis, (dim_name, low, high) in spec.dynamic.get(name, {}).items():
            dims.setdefault(dim_name, torch.export.Dim(dim_name.replace(".", "_"), min=low, max=high))
            axes[axis] = dims[dim_name]
        shapes.append(axes or None)
    # Match forward(a, b, *rest): torch.export wants the varargs' shapes as one tuple.
    params = inspect.signature(spec.module.forward).parameters.values()
    fixed = sum(p.kind == p.POSITIONAL_OR_KEYWORD for p in params)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return (*shapes[:fixed], tuple(shapes[fixed:]))
    return tuple(shapes)


@contextlib.contextmanager
def _quiet():
    """torch.onnx.export prints progress lines and warnings per graph; keep the CLI readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(spec: ComponentSpec, path: Path, opset: int = 18) -> None:
    """Write ``path`` (and ``path.data`` for large models) atomically via a temporary directory."""
    path = Path(path)
    external = parameter_bytes(spec.module) > EXTERNAL_DATA_BYTES
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}."))
    tmp = tmpdir / path.name
    try:
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                spec.module.eval(), tuple(spec.inputs.values()), str(tmp),
                input_names=list(spec.inputs), output_names=spec.outputs,
                dynamic_shapes=_dynamic_shapes(spec), dynamo=True, external_data=external,
                opset_version=opset, optimize=True,
            )
        for produced in tmpdir.iterdir():
            os.replace(produced, path.parent / produced.name)
    except Exception as exc:  # torch.export raises many types; name the component
        raise ExportError(f"{spec.name}: ONNX export failed: {type(exc).__name__}: {str(exc)[:2000]}") from exc
    finally:
        for leftover in tmpdir.glob("*"):
            leftover.unlink()
        tmpdir.rmdir()


@dataclass(frozen=True)
class Parity:
    max_abs_error: float
    max_rel_error: float  # max |onnx - torch| / max |torch|
    min_cosine: float
    worst_output: str

    def to_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "min_cosine": self.min_cosine, "worst_output": self.worst_output}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Parity:
    worst = ("", 0.0, 0.0, 1.0)
    max_rel, min_cos = 0.0, 1.0
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            raise ExportError(f"output {name}: shape {list(got.shape)} != PyTorch {list(ref.shape)}")
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        finite = np.isfinite(ref64)
        if not np.array_equal(finite, np.isfinite(got64)):
            raise ExportError(f"output {name}: non-finite values differ from PyTorch")
        diff = np.abs(ref64[finite] - got64[finite])
        err = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
        rel = err / scale if scale else err
        a, b = ref64[finite].ravel(), got64[finite].ravel()
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(a @ b / norms) if norms else (1.0 if np.allclose(a, b) else 0.0)
        if err >= worst[1]:
            worst = (name, err, rel, cos)
        max_rel, min_cos = max(max_rel, rel), min(min_cos, cos)
    return Parity(worst[1], max_rel, min_cos, worst[0])


def torch_outputs(spec: ComponentSpec, inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    tensors = spec.inputs if inputs is None else {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        outs = spec.module(*tensors.values())
    return {name: t.float().numpy() if t.is_floating_point() else t.numpy() for name, t in zip(spec.outputs, outs)}


def onnx_outputs(path: Path, *input_sets: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """ONNX Runtime's outputs for each input set, from one session (a 4 GB graph loads once)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if Path(str(path) + ".data").is_file():
        # Over 2 GB: ORT's CPU EP runs fp16 MatMuls on fp32 copies of the weights, and prepacking
        # copies those again: 5.3x the fp16 bytes at peak, 2.2x without prepacking (measured).
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = []
    for inputs in input_sets:
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        results.append(dict(zip(names, (np.asarray(o, dtype=np.float32) if np.asarray(o).dtype.kind == "f" else o
                                        for o in session.run(names, feed)))))
    return results


def parity_input_sets(spec: ComponentSpec, extra_inputs: list[dict[str, np.ndarray]] = ()) -> list[dict]:
    return [{k: v.numpy() for k, v in spec.inputs.items()}, *extra_inputs]


def onnx_parity(path: Path, sets: list[dict[str, np.ndarray]], references: list[dict[str, np.ndarray]]) -> Parity:
    """Worst agreement of the ONNX graph with PyTorch's outputs over the input sets."""
    results = [compare(ref, got) for ref, got in zip(references, onnx_outputs(path, *sets))]
    worst = max(results, key=lambda p: p.max_abs_error)
    return Parity(worst.max_abs_error, max(p.max_rel_error for p in results),
                  min(p.min_cosine for p in results), worst.worst_output)


def graph_io(onnx_path: Path) -> dict:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}
