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
from mirasol_edge.runtime.components import (
    MAX_CANDIDATES,
    SCORE_LEN,
    SCORE_TOKENS,
    ComponentContract,
    contracts,
    kv_names,
)
from mirasol_edge.runtime.watch import score_feeds, score_row

from .model import Mirasol
from .tokenizer import prompt_ids

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GB; go external well before that


class ExportError(MirasolError, RuntimeError):
    """A component failed to export or its ONNX does not match PyTorch."""

    exit_code = 4


@dataclass
class ExportJob:
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


class TextScoreGraph(ContractGraph):
    """Teacher forcing for every watch at once, a packed row each (``runtime.watch.ScoreRow``): the
    log-probability of each scored token given the tokens its row lets it see. The cross-attention
    keys and values are made once per stream and gathered for its rows; the output projection runs
    on the scored positions only."""

    def __init__(self, model: Mirasol) -> None:
        super().__init__(model, "text_score")
        self.model = model

    def step(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, text = self.model.cfg, self.model.text
        age, valid = self.model.ar.context_ages(feeds["pos"], cfg.window_chunks, cfg.latents_per_chunk)
        memory, cross_bias = text.memory(feeds["context"], age, valid)
        rows = feeds["row_stream"]
        cross = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in text.cross_kv(memory)]
        tokens, segments = feeds["tokens"], feeds["segments"]
        index = torch.arange(tokens.shape[1], device=tokens.device)
        causal = index[None, :] <= index[:, None]  # [query, key]
        keys, queries = segments[:, None, :], segments[:, :, None]
        visible = causal[None] & ((keys == queries) | (keys == 0))  # the prompt, and the token's own answer
        hidden, _ = text.hidden(tokens, cross, cross_bias.index_select(0, rows), positions=feeds["positions"],
                                visible=visible)
        at = feeds["score_at"]
        picked = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
        logprobs = torch.log_softmax(text.head(picked).float(), dim=-1)
        return {"score_logprobs": logprobs.gather(-1, feeds["score_tokens"][..., None])[..., 0]}


def _pairs(feeds: dict[str, Tensor], names: list[str]) -> list[tuple[Tensor, Tensor]]:
    """(key, value) per layer from ``feeds``, in the order ``kv_names`` gives."""
    return [(feeds[k], feeds[v]) for k, v in zip(names[0::2], names[1::2])]


def _named(names: list[str], pairs) -> dict[str, Tensor]:
    return dict(zip(names, (t for kv in pairs for t in kv), strict=True))


GRAPHS = {"chunk_encoder": ChunkEncoderGraph, "ar_step": ARStepGraph, "text_prefill": TextPrefillGraph,
          "text_decode": TextDecodeGraph, "text_score": TextScoreGraph}
SCORE_EXAMPLES = (("is the square red?", ("yes", "no", "maybe")), ("is there a beep?", ("yes", "no")))


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
    if contract.name == "text_score":
        return _score_example(model, contract, state)
    prompt = prompt_ids(model.tokenizer, "what colour was the first shape?", cfg.max_question_tokens)
    prefill = {"tokens": torch.tensor([prompt]), **{inp: state[s][:1] for inp, s in
                                                    contracts(cfg)["text_prefill"].from_state.items()}}
    if contract.name == "text_prefill":
        return prefill
    with torch.no_grad():
        outs = TextPrefillGraph(model).step(prefill)
    return {"token": torch.tensor([[ord("r")]]), **{inp: outs[src] for inp, src in contract.from_previous.items()}}


def _score_example(model: Mirasol, contract: ComponentContract, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Two watches' rows (no dynamic axis of size 1), cut to the build's text limits."""
    tok = model.tokenizer
    scored = contract.dynamic[SCORE_TOKENS][1]
    longest = scored // MAX_CANDIDATES - 1  # the build's answer limit
    question_limit = contract.dynamic[SCORE_LEN][1] - 2 - MAX_CANDIDATES * longest
    rows = [score_row(prompt_ids(tok, question, question_limit), [tok.encode(a)[:longest] for a in answers],
                      tok.eos_id) for question, answers in SCORE_EXAMPLES]
    feeds = {name: torch.from_numpy(array) for name, array in score_feeds(rows, tok.pad_id).items()}
    batch = contract.inputs[-2].shape[0]  # the context's: the build's batch
    return {**feeds, "row_stream": torch.arange(len(rows)) % batch,
            **{inp: state[s][:batch] for inp, s in contract.from_state.items()}}


def component_spec(model: Mirasol, name: str, batch: int, state: dict[str, Tensor],
                   max_question_tokens: int | None = None, max_answer_tokens: int | None = None) -> ExportJob:
    """One graph with example inputs; ``state`` is a stream state (``model.init_state`` or real
    pushes). Needs only that component's part of the model to be real (see toolkit.source)."""
    if name not in GRAPHS:
        raise UsageError(f"unknown component {name!r}; the components are {', '.join(GRAPHS)}")
    contract = contracts(model.cfg, batch, max_question_tokens, max_answer_tokens)[name]
    return ExportJob(contract, GRAPHS[name](model), _examples(model, contract, state))


def _dynamic_shapes(spec: ExportJob) -> tuple | None:
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


def export_onnx(spec: ExportJob, path: Path, opset: int = 18) -> None:
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
