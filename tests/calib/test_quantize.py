import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mirasol_edge.calib.awq import best_scale, fake_int4
from mirasol_edge.calib.collect import collect
from mirasol_edge.calib.quantize import QuantizationError, linear_layers, quantize_component
from mirasol_edge.demo.hooks import synthetic_media
from mirasol_edge.demo.synthetic import QUESTIONS
from mirasol_edge.toolkit.export import component_spec, export_onnx


@pytest.fixture(scope="module")
def encoder_fp32(bundled_model, tmp_path_factory):
    """The bundled model's chunk encoder exported in fp32, and real calibration inputs for it."""
    path = tmp_path_factory.mktemp("graphs") / "chunk_encoder.onnx"
    export_onnx(component_spec(bundled_model, "chunk_encoder", 1, bundled_model.init_state(1)), path)
    data = collect(bundled_model, "synthetic", 4, max_samples=64, min_samples=4, held_out=0.25, weights_hash="t",
                   questions=list(QUESTIONS.values()), synthetic=synthetic_media)
    return path, data.fit["chunk_encoder"], data.held_out["chunk_encoder"]


def _initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_int8_is_qdq_with_per_channel_symmetric_weights(encoder_fp32, tmp_path):
    src, fit, held = encoder_fp32
    report = quantize_component("chunk_encoder", src, tmp_path / "q.onnx", "int8", fit, held, {}, 0.99)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    consts = _initializers(tmp_path / "q.onnx")
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and consts.get(n.input[0]) is not None
               and consts[n.input[0]].ndim == 2]
    assert len(weights) == report.quantized_layers == len(linear_layers(onnx.load(str(src)))) > 0
    for node in weights:
        q, scale = consts[node.input[0]], consts[node.input[1]]
        assert q.dtype == np.int8 and scale.shape == (q.shape[1],), "one scale per output channel"
        assert not np.any(consts[node.input[2]]), "symmetric: zero points are 0"
    activations = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(consts[n.input[1]].ndim == 0 for n in activations), "per-tensor activations"
    assert report.error["min_cosine"] > 0.99 and report.quantized_bytes < report.fp32_bytes / 2


def test_sensitivity_keeps_the_worst_groups_in_fp32(encoder_fp32, tmp_path):
    src, fit, held = encoder_fp32
    pinned_fp32, pinned_int8 = "chunk_encoder.video.embed", "chunk_encoder.audio_proj"
    pins = {pinned_fp32: "fp32", pinned_int8: "int8"}
    everything = quantize_component("chunk_encoder", src, tmp_path / "q.onnx", "int8", fit, held, pins, 0.5)
    assert not everything.sensitivity and everything.kept_fp32 == [pinned_fp32]
    # Ask for half the error that quantizing every group gives.
    target = 1 - 0.5 * (1 - everything.error["min_cosine"])
    report = quantize_component("chunk_encoder", src, tmp_path / "q.onnx", "int8", fit, held, pins, target)
    assert set(report.sensitivity) == set(report.groups) - {pinned_fp32}
    assert pinned_fp32 in report.kept_fp32 and pinned_int8 not in report.kept_fp32
    chosen = [g for g in report.kept_fp32 if g != pinned_fp32]
    ranked = sorted((g for g in report.sensitivity if g != pinned_int8), key=report.sensitivity.get, reverse=True)
    assert chosen and set(chosen) == set(ranked[: len(chosen)]), "the most sensitive groups stay fp32"
    assert report.error["min_cosine"] >= target
    assert report.quantized_layers < everything.quantized_layers


def test_impossible_threshold_fails_with_the_report(encoder_fp32, tmp_path):
    src, fit, held = encoder_fp32
    groups = {layer.group for layer in linear_layers(onnx.load(str(src)))}
    with pytest.raises(QuantizationError, match=r"int4 breaks this component: held-out cosine .* < accuracy") as info:
        quantize_component("chunk_encoder", src, tmp_path / "q.onnx", "int4", fit, held,
                           {g: "int4" for g in groups}, 0.999999)
    assert info.value.report["passed"] is False and info.value.report["kept_fp32"] == []


def test_awq_scale_beats_plain_rounding_on_outlier_channels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64))
    x[:, :4] *= 30  # a few input channels carry large activations, as after LayerNorm gains
    w = rng.standard_normal((64, 32)) * 0.05
    alpha, s = best_scale(x, w, 32)
    plain = np.mean((x @ fake_int4(w, 32) - x @ w) ** 2)
    scaled = np.mean(((x / s) @ fake_int4(w * s[:, None], 32) - x @ w) ** 2)
    assert alpha > 0 and scaled < 0.7 * plain
