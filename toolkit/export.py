"""One ONNX graph per component, with the streaming state as explicit inputs and outputs.

Components and their I/O (state named ``past.X`` in, ``present.X`` out):

  chunk_encoder  video [B,F,H,W,3] f32, mel [B,T,n_mels], past.memory
                 -> latents [B,m,Dc], present.memory
  ar_step        latents [B,m,Dc], past.pos [B] i64, past.{i}.key/.value [B,H,W*m,dh], past.context
                 -> outputs [B,m,Dar], present.pos, present.{i}.key/.value, present.context
  text_prefill   tokens [1,L] i64, context [1,W*m,Dar], pos [1] i64
                 -> logits [1,V] (last position), present.{i}.key/.value [1,H,L,dh],
                    cross.{i}.key/.value [1,H,1+W*m,dh], cross_bias [1,1,1,1+W*m]
  text_decode    token [1,1] i64, past.{i}.key/.value [1,H,P,dh], cross.{i}.key/.value, cross_bias
                 -> logits [1,V], present.{i}.key/.value [1,H,P+1,dh]
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .model import Mirasol
from .tokenizer import prompt_ids

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GB; go external well before that


class ExportError(RuntimeError):
    """A component failed to export or its ONNX does not match PyTorch."""


@dataclass
class ComponentSpec:
    name: str
    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: list[str]
    # input name -> {axis: (dim name, min, max)} for lengths that vary
    dynamic: dict[str, dict[int, tuple[str, int, int]]] = field(default_factory=dict)


def _kv_names(prefix: str, depth: int) -> list[str]:
    return [f"{prefix}.{i}.{part}" for i in range(depth) for part in ("key", "value")]


def _pairs(flat: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class ChunkEncoderGraph(nn.Module):
    def __init__(self, model: Mirasol) -> None:
        super().__init__()
        self.encoder = model.chunk_encoder
        self.use_audio = model.cfg.use_audio
        self.has_memory = self.encoder.combiner.has_memory

    def forward(self, video: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        rest = list(rest)
        mel = rest.pop(0) if self.use_audio else None
        memory = rest.pop(0) if self.has_memory else None
        latents, memory = self.encoder(video, mel, memory)
        return (latents, memory) if self.has_memory else (latents,)


class ARStepGraph(nn.Module):
    def __init__(self, model: Mirasol) -> None:
        super().__init__()
        self.ar = model.ar

    def forward(self, latents: Tensor, pos: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        *kv, context = state
        keys, values = list(kv[0::2]), list(kv[1::2])
        out, keys, values, context, pos = self.ar.step(latents, pos, keys, values, context)
        flat = [t for pair in zip(keys, values) for t in pair]
        return (out, pos, *flat, context)


class TextPrefillGraph(nn.Module):
    def __init__(self, model: Mirasol) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, context: Tensor, pos: Tensor) -> tuple[Tensor, ...]:
        cfg = self.model.cfg
        age, valid = self.model.ar.context_ages(pos, cfg.window_chunks, cfg.latents_per_chunk)
        memory, cross_bias = self.model.text.memory(context, age, valid)
        cross = self.model.text.cross_kv(memory)
        logits, presents = self.model.text(tokens, cross, cross_bias)
        flat = [t for kv in presents for t in kv]
        cross_flat = [t for kv in cross for t in kv]
        return (logits[:, -1], *flat, *cross_flat, cross_bias)


class TextDecodeGraph(nn.Module):
    def __init__(self, model: Mirasol) -> None:
        super().__init__()
        self.text = model.text
        self.depth = model.cfg.text_depth

    def forward(self, token: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        past = _pairs(rest[: 2 * self.depth])
        cross = _pairs(rest[2 * self.depth : 4 * self.depth])
        cross_bias = rest[-1]
        logits, presents = self.text(token, cross, cross_bias, past)
        return (logits[:, -1], *[t for kv in presents for t in kv])


def component_spec(model: Mirasol, name: str, batch: int, state: dict[str, Tensor]) -> ComponentSpec:
    """One graph with example inputs; ``state`` is a stream state (``model.init_state`` or real
    pushes). Needs only that component's part of the model to be real (see toolkit.source)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    if name == "chunk_encoder":
        inputs = {"video": torch.rand(batch, cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3, generator=g)}
        if cfg.use_audio:
            inputs["mel"] = torch.randn(batch, cfg.mel_frames_per_chunk, cfg.n_mels, generator=g) * 20 - 40
        outputs = ["latents"]
        if "memory" in state:
            inputs["past.memory"] = state["memory"]
            outputs.append("present.memory")
        return ComponentSpec(name, ChunkEncoderGraph(model), inputs, outputs)

    if name == "ar_step":
        inputs = {"latents": torch.randn(batch, cfg.latents_per_chunk, cfg.combiner_width, generator=g),
                  "past.pos": state["pos"]}
        for i in range(cfg.ar_depth):
            inputs[f"past.{i}.key"] = state[f"kv.{i}.key"]
            inputs[f"past.{i}.value"] = state[f"kv.{i}.value"]
        inputs["past.context"] = state["context"]
        outputs = ["outputs", "present.pos", *_kv_names("present", cfg.ar_depth), "present.context"]
        return ComponentSpec(name, ARStepGraph(model), inputs, outputs)

    depth = cfg.text_depth
    prompt = prompt_ids(model.tokenizer, "what colour was the first shape?", cfg.max_question_tokens)
    prefill_inputs = {"tokens": torch.tensor([prompt]), "context": state["context"][:1], "pos": state["pos"][:1]}
    if name == "text_prefill":
        outputs = ["logits", *_kv_names("present", depth), *_kv_names("cross", depth), "cross_bias"]
        return ComponentSpec(name, TextPrefillGraph(model), prefill_inputs, outputs,
                             {"tokens": {1: ("prompt_len", 2, cfg.max_question_tokens + 2)}})

    if name == "text_decode":
        with torch.no_grad():
            prefill = TextPrefillGraph(model)(*prefill_inputs.values())
        inputs = {"token": torch.tensor([[ord("r")]])}
        inputs.update(dict(zip(_kv_names("past", depth), prefill[1 : 1 + 2 * depth])))
        inputs.update(dict(zip(_kv_names("cross", depth), prefill[1 + 2 * depth : 1 + 4 * depth])))
        inputs["cross_bias"] = prefill[-1]
        past_len = ("past_len", 2, cfg.max_text_tokens - 1)
        return ComponentSpec(name, TextDecodeGraph(model), inputs, ["logits", *_kv_names("present", depth)],
                             {n: {2: past_len} for n in _kv_names("past", depth)})
    raise ValueError(f"unknown component {name!r}")


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
