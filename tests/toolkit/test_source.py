"""Part-by-part builds (how mirasol3b fits in 24 GiB), checked on tiny by forcing the mode."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file, save_file

from mirasol_edge.toolkit import Mirasol
from mirasol_edge.toolkit import source as source_module
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe
from mirasol_edge.toolkit.source import load_source
from mirasol_edge.toolkit.weights import CheckpointError


@pytest.fixture
def by_part(monkeypatch):
    monkeypatch.setattr(source_module, "WHOLE_MODEL_BYTES", 0)


def _materialized_parts(model) -> set[str]:
    return {name for name in ("chunk_encoder", "ar", "text")
            if not any(p.is_meta for p in getattr(model, name).parameters())}


def test_only_the_asked_part_is_in_memory(by_part, tiny_checkpoint):
    source = load_source(tiny_checkpoint, None)
    assert source.by_part and _materialized_parts(source.model) == set()
    model = source.materialize("ar_step")
    assert _materialized_parts(model) == {"ar"}
    model = source.materialize("text_prefill")
    assert _materialized_parts(model) == {"text"}, "the AR part went back to meta"
    whole = Mirasol.load(tiny_checkpoint)
    for name, tensor in model.text.state_dict().items():
        torch.testing.assert_close(tensor, whole.text.state_dict()[name], rtol=0, atol=0)


def test_preset_parts_are_reproducible_alone(by_part):
    first = load_source(None, "tiny", seed=3)
    text = {k: v.clone() for k, v in first.materialize("text_decode").text.state_dict().items()}
    second = load_source(None, "tiny", seed=3)
    second.materialize("ar_step")
    again = second.materialize("text_decode").text.state_dict()
    assert all(torch.equal(text[k], again[k]) for k in text)


def test_part_by_part_build_equals_whole_build(by_part, tiny_checkpoint, tmp_path, monkeypatch):
    lazy = build(load_recipe("cpu"), tmp_path / "lazy", checkpoint=tiny_checkpoint)
    assert lazy["model"]["loaded"] == "part by part"
    monkeypatch.setattr(source_module, "WHOLE_MODEL_BYTES", 2 << 30)
    whole = build(load_recipe("cpu"), tmp_path / "whole", checkpoint=tiny_checkpoint)
    assert "loaded" not in whole["model"]
    assert lazy["state"]["sha256"] == whole["state"]["sha256"], "same initial state (TTM memory)"
    for name, entry in lazy["components"].items():
        assert entry["parity"]["max_rel_error"] < 1e-4, name
        assert entry["peak_rss_mib"] > 0
        a = ort.InferenceSession(str(tmp_path / "lazy" / entry["onnx"]))
        b = ort.InferenceSession(str(tmp_path / "whole" / whole["components"][name]["onnx"]))
        rng = np.random.default_rng(0)
        feed = {}
        for i in a.get_inputs():
            shape = [d if isinstance(d, int) else 4 for d in i.shape]
            if i.type == "tensor(uint8)":  # frames, as decoded
                feed[i.name] = rng.integers(0, 256, shape).astype(np.uint8)
            elif i.name in ("row_stream", "score_at"):  # a stream of the batch; a position of the row
                feed[i.name] = np.zeros(shape, np.int64)
            else:
                feed[i.name] = (rng.integers(0, 5, shape) if "int" in i.type else rng.standard_normal(shape)).astype(
                    np.int64 if "int" in i.type else np.float32)
        for x, y in zip(a.run(None, feed), b.run(None, feed)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)


def test_part_by_part_checkpoint_mismatch_names_tensor(by_part, tiny_checkpoint, tmp_path):
    tensors = load_file(tiny_checkpoint)
    tensors["ar.input.weight"] = tensors["ar.input.weight"][:, :-1].contiguous()
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), framework="pt") as f:
        metadata = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata=metadata)
    with pytest.raises(CheckpointError, match="'ar.input.weight' has shape"):
        load_source(bad, None)
    del tensors["text.norm.weight"]
    save_file(tensors, bad, metadata=metadata)
    with pytest.raises(CheckpointError, match="'text.norm.weight' is missing"):
        load_source(bad, None)


def test_mirasol3b_is_built_part_by_part_and_sized_before_work():
    from mirasol_edge.toolkit.preflight import check_host_memory, estimated_host_memory_mib
    from mirasol_edge.toolkit.recipe import RecipeError

    source = load_source(None, "mirasol3b")
    assert source.by_part and all(p.is_meta for p in source.model.parameters()), "nothing allocated yet"
    fp16 = estimated_host_memory_mib(source, load_recipe("rtx"))
    assert 15_000 < fp16 < 20_000, "the AR step (2.0B params) dominates"
    check_host_memory(source, load_recipe("rtx"))
    with pytest.raises(RecipeError, match=r"max_host_memory_mib = 20000 but building this model .* needs about"):
        check_host_memory(source, load_recipe("cpu"))
