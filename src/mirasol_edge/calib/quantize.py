"""Explicit quantization of an exported fp32 graph, with ONNX Runtime's quantization tools.

- int8 / fp8: Q/DQ before each linear layer's MatMul: weights per output channel, activations
  per tensor, symmetric (what TensorRT's explicit quantization takes), ranges from the
  calibration set (``onnxruntime.quantization.quantize_static``, QDQ format).
- int4: weight-only, block-wise symmetric int4 weights behind DequantizeLinear (opset 21), the
  activations stay fp32 (``MatMulNBitsQuantizer``, QDQ format). Before rounding, AWQ's
  activation-aware scale search (``awq.py``) protects the input channels with large activations.

Only linear layers (a MatMul with a constant weight) are quantized; LayerNorm, softmax, the
attention matmuls and residual sums stay fp32. Layers are grouped by transformer block
(``ar.blocks.3``) or by module (``ar.input``, ``text.context_proj``), the names the recipe's
``precision.pin`` uses. A sensitivity pass quantizes one group at a time, ranks the groups by the
error they cause alone, and keeps the worst in fp32 until the component meets the recipe's
``accuracy.min_quantized_cosine`` on held-out calibration data.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mirasol_edge.errors import MirasolError
from mirasol_edge.toolkit.parity import Parity, onnx_outputs, onnx_parity

from .collect import Sample

QDQ_TYPES = {"int8": "QInt8", "fp8": "QFLOAT8E4M3FN"}
TARGETS = ("tensorrt", "onnxruntime")  # whose fusions the quantized graph is written for
INT4_BLOCK = 32  # input channels per int4 scale; tiny's narrowest layer has 64


class QuantizationError(MirasolError, ValueError):
    """Quantization can't be done as asked, or it breaks the model beyond the recipe's thresholds."""

    exit_code = 7

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report  # what was measured, for the CLI's --json and for the manifest


@dataclass(frozen=True)
class Linear:
    node: str  # the MatMul node
    module: str  # e.g. ar.blocks.0.mlp.fc1
    group: str  # e.g. ar.blocks.0


def _module_of(node: onnx.NodeProto) -> str:
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        scopes = []
    # ['', 'model.text.blocks.0.mlp.fc1', 'linear']: the innermost module, before the op itself.
    modules = [s for s in scopes[:-1] if s]
    name = modules[-1] if modules else node.name
    # The export wrappers hold the parts as .model / .encoder; name them as the Mirasol model does.
    name = name.removeprefix("model.")
    return "chunk_encoder." + name.removeprefix("encoder.") if name.startswith("encoder.") else name


def group_of(module: str) -> str:
    parts = module.split(".")
    if "blocks" in parts:
        i = parts.index("blocks")
        return ".".join(parts[: i + 2])
    return module


def linear_layers(model: onnx.ModelProto) -> list[Linear]:
    """MatMuls whose second input is a constant weight: the model's linear layers. (The tied
    text output projection multiplies by a transposed embedding, not a constant: it stays fp32.)"""
    constants = {i.name for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in constants:
            module = _module_of(node)
            found.append(Linear(node.name, module, group_of(module)))
    return found


def model_groups(model) -> set[str]:
    """The layer groups of a torch Mirasol, named as ``linear_layers`` names them in the graphs."""
    from torch import nn

    return {group_of(name) for name, module in model.named_modules() if isinstance(module, nn.Linear)}


class _Reader:
    """ONNX Runtime's CalibrationDataReader over recorded samples, tiled to the engine's batch."""

    def __init__(self, samples: list[Sample]) -> None:
        self._it = iter(samples)

    def get_next(self) -> Sample | None:
        return next(self._it, None)


def tile_to_batch(samples: list[Sample], inputs: dict[str, list]) -> list[Sample]:
    """Recorded at batch 1; a graph built for batch B gets each sample repeated B times."""
    out = []
    for sample in samples:
        tiled = {}
        for name, array in sample.items():
            want = inputs[name][0]
            tiled[name] = np.repeat(array, want, axis=0) if isinstance(want, int) and want > 1 else array
        out.append(tiled)
    return out


def quantize_graph(src: Path, dst: Path, precision: str, fit: list[Sample], nodes: list[str],
                   ranges_cache: Path, calibrate_method: str = "MinMax", target: str = "tensorrt") -> None:
    """Write ``dst``: ``src`` with ``nodes`` (MatMul names) quantized to ``precision``, in the form
    ``target``'s fusions take. ``tensorrt``: symmetric int8 activations and weights, int4 as
    DequantizeLinear on INT4 weights. ``onnxruntime``: uint8 activations with a zero point
    (its x86 integer MatMuls are U8S8: symmetric int8 activations left the layers whose input
    comes from a LayerNorm unfused, dequantizing their weights on every call), int4 as
    MatMulNBits with int8 activations on the CPU (accuracy_level 4)."""
    if target not in TARGETS:
        raise QuantizationError(f"quantization target {target!r}; expected one of {', '.join(TARGETS)}")
    with _quiet():
        _quantize_graph(src, dst, precision, fit, nodes, ranges_cache, calibrate_method, target)


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer warns on the root logger and prints progress; the build has its own."""
    root_level = logging.getLogger().level
    # Importing it calls logging.basicConfig(level=INFO): the root level is taken before.
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                      if n.startswith("onnxruntime"))]
    levels = [root_level, *(lg.level for lg in loggers[1:])]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _quantize_graph(src: Path, dst: Path, precision: str, fit: list[Sample], nodes: list[str],
                    ranges_cache: Path, calibrate_method: str, target: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if precision in QDQ_TYPES:
        kind = getattr(QuantType, QDQ_TYPES[precision])
        u8 = precision == "int8" and target == "onnxruntime"
        method = getattr(CalibrationMethod, calibrate_method)
        if precision == "fp8":
            method = CalibrationMethod.Distribution  # ORT computes fp8 scales from the distribution
        quantize_static(
            str(src), str(dst), _Reader(fit), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8 if u8 else kind, weight_type=kind, nodes_to_quantize=list(nodes) or ["<none>"],
            op_types_to_quantize=["MatMul"], calibrate_method=method,
            calibration_cache_path=ranges_cache.with_suffix(f".{method.name}.json"),
            extra_options={"ActivationSymmetric": not u8, "WeightSymmetric": True,
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                           "OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )
    elif precision == "int4":
        from .awq import apply_awq

        model = onnx.load(str(src))
        if nodes:
            apply_awq(model, src, fit, set(nodes), INT4_BLOCK)
        quantized = _int4_weights(model, nodes, target)
        if target == "tensorrt":
            fp16_activations(quantized.model)
        quantized.save_model_to_file(str(dst), use_external_data_format=False)
    else:
        raise QuantizationError(f"precision {precision!r} is not a quantized precision")


def _int4_weights(model: onnx.ModelProto, nodes: list[str], target: str = "tensorrt"):
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    qformat = QuantFormat.QDQ if target == "tensorrt" else QuantFormat.QOperator
    level = None if target == "tensorrt" else 4  # MatMulNBits with int8 activations (VNNI on x86)
    config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=level,
                                          quant_format=qformat)
    include = list(nodes) or ["<none>"]
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=level,
                                     nodes_to_include=include, quant_format=qformat, algo_config=config)
    quantizer.process()
    return quantizer.model


def fp16_activations(model: onnx.ModelProto) -> int:
    """TensorRT's weight-only int4 GEMMs take fp16 activations: around each MatMul whose weights
    come from an INT4 DequantizeLinear, dequantize to fp16 (fp16 scales), cast the activation to
    fp16 in and the product back to fp32 out. LayerNorm, softmax and the residual stream stay fp32.
    Returns how many MatMuls were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    rewritten, nodes = 0, []
    for node in graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        weights = inits.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if weights is None or weights.data_type != TensorProto.INT4 or len(dq.input) < 2 or dq.input[1] not in inits:
            nodes.append(node)
            continue
        scale = inits[dq.input[1]]
        if scale.data_type == TensorProto.FLOAT:
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale).astype(np.float16), scale.name))
        a16, y16 = f"{node.name}.a_fp16", f"{node.name}.y_fp16"
        nodes.append(helper.make_node("Cast", [node.input[0]], [a16], name=f"{node.name}.cast_in", to=TensorProto.FLOAT16))
        out = node.output[0]
        node.input[0], node.output[0] = a16, y16
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [y16], [out], name=f"{node.name}.cast_out", to=TensorProto.FLOAT))
        rewritten += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    # The dequantized weights' value_info (fp32) would now lie: drop it, shapes are re-inferred.
    keep = [v for v in graph.value_info if v.name not in {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}]
    graph.ClearField("value_info")
    graph.value_info.extend(keep)
    return rewritten


@dataclass
class QuantReport:
    precision: str
    groups: list[str]
    quantized_layers: int
    kept_fp32: list[str]  # groups left in fp32 (pinned or by sensitivity)
    pinned: dict[str, str]
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> 1 - cosine when quantized alone
    error: dict = field(default_factory=dict)  # quantized vs fp32 on held-out calibration data
    fp32_bytes: int = 0
    quantized_bytes: int = 0
    passed: bool = True

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _graph_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


MAX_FP32_FRACTION = 0.5  # a component needing more of its groups in fp32 than this is not quantized


def quantize_component(name: str, src: Path, dst: Path, precision: str, fit: list[Sample], held_out: list[Sample],
                       pins: dict[str, str], min_cosine: float, calibrate_method: str = "MinMax",
                       progress=lambda msg: None, target: str = "tensorrt") -> QuantReport:
    """Quantize ``src`` (fp32) into ``dst``; keep the most sensitive groups in fp32 until the
    held-out cosine reaches ``min_cosine``. Raises QuantizationError (with the report) when that
    takes more than half the groups, or pins forbid it."""
    layers = linear_layers(onnx.load(str(src), load_external_data=False))
    groups = list(dict.fromkeys(layer.group for layer in layers))
    # The build checked every pin names a group of the model; a part's pins reach all its graphs
    # (text.context_proj is in text_prefill only), so each graph takes the ones it has.
    pins = {g: p for g, p in pins.items() if g in groups}
    pinned_fp32 = {g for g in groups if pins.get(g) == "fp32"}
    forced = {g for g in groups if pins.get(g) not in (None, "fp32")}
    reference = onnx_outputs(src, *held_out)

    with tempfile.TemporaryDirectory(prefix=f"mirasol-quant-{name}-") as tmp:
        tmp = Path(tmp)
        ranges = tmp / "ranges"

        def trial(quantized: set[str], out: Path) -> Parity:
            nodes = [layer.node for layer in layers if layer.group in quantized]
            quantize_graph(src, out, precision, fit, nodes, ranges, calibrate_method, target)
            return onnx_parity(out, held_out, reference)

        candidates = [g for g in groups if g not in pinned_fp32]
        kept = set(pinned_fp32)
        progress(f"{name}: quantizing {len(candidates)} layer groups to {precision}")
        error = trial(set(candidates), dst)
        report = QuantReport(precision, groups, sum(layer.group in candidates for layer in layers),
                             sorted(kept), dict(pins))
        if error.min_cosine < min_cosine:
            progress(f"{name}: cosine {error.min_cosine:.5f} < {min_cosine}: sensitivity pass over {len(candidates)} groups")
            for g in candidates:
                report.sensitivity[g] = 1.0 - trial({g}, tmp / "one.onnx").min_cosine
            budget = int(len(groups) * MAX_FP32_FRACTION) - len(kept)
            for g in sorted((g for g in candidates if g not in forced), key=report.sensitivity.get,
                            reverse=True)[:max(budget, 0)]:
                kept.add(g)
                error = trial(set(candidates) - kept, dst)
                if error.min_cosine >= min_cosine:
                    break
        report.kept_fp32 = sorted(kept)
        report.quantized_layers = sum(layer.group not in kept for layer in layers)
        report.error = error.to_dict()
        report.fp32_bytes, report.quantized_bytes = _graph_bytes(src), _graph_bytes(dst)
        report.passed = error.min_cosine >= min_cosine
    if not report.passed:
        raise QuantizationError(
            f"{name}: {precision} breaks this component: held-out cosine {error.min_cosine:.5f} (largest error on "
            f"{error.worst_output!r}) < accuracy.min_quantized_cosine {min_cosine}, even with "
            f"{len(kept)} of {len(groups)} layer groups in fp32 ({', '.join(sorted(kept)) or 'none'}); "
            f"pinned to {precision}: {', '.join(sorted(forced)) or 'none'}", report.to_dict())
    return report
