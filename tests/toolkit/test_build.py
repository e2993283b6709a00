import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mirasol_edge.runtime.files import sha256_file
from mirasol_edge.toolkit import Mirasol, MirasolConfig
from mirasol_edge.toolkit.build import ParityError, build
from mirasol_edge.toolkit.engines import EngineBuildError, build_tensorrt
from mirasol_edge.toolkit.preflight import OutputDirError
from mirasol_edge.toolkit.recipe import RecipeError, load_recipe

COMPONENTS = ["chunk_encoder", "ar_step", "text_prefill", "text_decode", "text_score"]


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("eng") / "tiny-cpu"
    return out, build(load_recipe("cpu"), out, checkpoint=tiny_checkpoint)


def test_cpu_build_writes_every_component_with_true_hashes(cpu_build):
    out, manifest = cpu_build
    assert set(manifest["components"]) == set(COMPONENTS)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["model"]["config_hash"] == MirasolConfig.preset("tiny").hash()
    assert on_disk["backend"]["name"] == "onnxruntime"
    for name, entry in on_disk["components"].items():
        assert sha256_file(out / entry["onnx"]) == entry["onnx_sha256"]
        assert sha256_file(out / entry["engine"]) == entry["engine_sha256"]
        assert entry["parity"]["max_rel_error"] < 1e-4, name
    decode_inputs = {i["name"]: i for i in on_disk["components"]["text_decode"]["inputs"]}
    assert decode_inputs["past.0.key"]["shape"][2] == "past_len"
    assert "present.0.key" in {o["name"] for o in on_disk["components"]["text_decode"]["outputs"]}
    assert not list(out.parent.glob(".*staging*")), "no staging directory left behind"


def test_ort_engine_matches_pytorch_mid_stream(cpu_build, tiny_checkpoint):
    """Run the built AR-step engine against the PyTorch step on a real (non-zero) state."""
    out, manifest = cpu_build
    model = Mirasol.load(tiny_checkpoint)
    cfg = model.cfg
    g = torch.Generator().manual_seed(2)
    state = model.init_state(1)
    session = ort.InferenceSession(str(out / manifest["components"]["ar_step"]["engine"]))
    with torch.no_grad():
        for _ in range(3):
            video = torch.rand(1, cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3, generator=g)
            mel = torch.randn(1, cfg.mel_frames_per_chunk, cfg.n_mels, generator=g) * 20 - 40
            latents, memory = model.chunk_encoder(video, mel, state["memory"])
            expected, next_state = model.encode_chunk(video, mel, state)
            feed = {"latents": latents.numpy(), "past.pos": state["pos"].numpy(), "past.context": state["context"].numpy()}
            for i in range(cfg.ar_depth):
                feed[f"past.{i}.key"] = state[f"kv.{i}.key"].numpy()
                feed[f"past.{i}.value"] = state[f"kv.{i}.value"].numpy()
            outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
            np.testing.assert_allclose(outputs["outputs"], expected.numpy(), atol=1e-5)
            np.testing.assert_allclose(outputs["present.context"], next_state["context"].numpy(), atol=1e-5)
            assert outputs["present.pos"].tolist() == [state["pos"].item() + 1]
            state = next_state


def test_rebuild_is_incremental(cpu_build, tiny_checkpoint):
    out, first = cpu_build
    again = build(load_recipe("cpu"), out, checkpoint=tiny_checkpoint)
    assert all(c.get("reused") for c in again["components"].values())
    assert {n: c["engine_sha256"] for n, c in again["components"].items()} == {
        n: c["engine_sha256"] for n, c in first["components"].items()}


def test_changed_code_rebuilds_instead_of_reusing(cpu_build, tiny_checkpoint, monkeypatch):
    from mirasol_edge.toolkit import cache

    out, first = cpu_build
    monkeypatch.setattr(cache, "code_hash", lambda: "an edited exporter")
    again = build(load_recipe("cpu"), out, checkpoint=tiny_checkpoint)
    assert not any(c.get("reused") for c in again["components"].values())
    assert all(again["components"][n]["build_key"] != first["components"][n]["build_key"] for n in COMPONENTS)


def test_code_hash_follows_the_content_of_the_code(tmp_path, monkeypatch):
    import shutil

    from mirasol_edge.toolkit import cache

    copy = tmp_path / "mirasol_edge"
    shutil.copytree(cache.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    monkeypatch.setattr(cache, "PACKAGE", copy)
    cache.code_hash.cache_clear()
    try:
        before = cache.code_hash()
        export = copy / "toolkit" / "export.py"
        export.write_text(export.read_text() + "\n# an edit\n")
        cache.code_hash.cache_clear()
        assert cache.code_hash() != before
    finally:
        cache.code_hash.cache_clear()


def test_rtx_build_makes_real_engines(tmp_path, tiny_checkpoint):
    trt = pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "tiny-rtx"
    manifest = build(load_recipe("rtx"), out, checkpoint=tiny_checkpoint)
    assert manifest["backend"]["version"] == trt.__version__
    for name in COMPONENTS:
        entry = manifest["components"][name]
        plan = out / entry["engine"]
        assert plan.suffix == ".plan" and plan.stat().st_size > 100_000, name
        assert sha256_file(plan) == entry["engine_sha256"]
        assert entry["precision"] == "fp16"
        assert entry["parity"]["min_cosine"] > 0.999
    # fp16 is in the graph: low-precision weights and explicit casts
    graph = onnx.load(str(out / "ar_step.onnx")).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert any(n.op_type == "Cast" for n in graph.node)
    assert manifest["components"]["text_prefill"]["profiles"]["tokens"]["max"] == [1, 50]
    again = build(load_recipe("rtx"), out, checkpoint=tiny_checkpoint)  # fp16, twice into the same folder
    assert all(c["reused"] for c in again["components"].values())
    assert {n: c["engine_sha256"] for n, c in again["components"].items()} == {
        n: c["engine_sha256"] for n, c in manifest["components"].items()}


def test_bundle_then_engine_on_device(tmp_path, tiny_checkpoint):
    pytest.importorskip("tensorrt_rtx")
    bundle = tmp_path / "bundle"
    manifest = build(load_recipe("rtx"), bundle, checkpoint=tiny_checkpoint, stage="export")
    assert all(c["engine"] is None for c in manifest["components"].values())
    assert not list(bundle.glob("*.plan"))
    from mirasol_edge.toolkit.engines import build_engines_from_bundle

    done = build_engines_from_bundle(bundle)
    assert all((bundle / c["engine"]).is_file() for c in done["components"].values())
    assert json.loads((bundle / "manifest.json").read_text())["backend"]["engines_built"] is True


def test_failed_parity_leaves_nothing_behind(tmp_path, tiny_checkpoint):
    out = tmp_path / "strict"
    recipe = load_recipe("cpu", ["accuracy.max_rel_error=1e-15"])
    with pytest.raises(ParityError, match=r"chunk_encoder: ONNX disagrees with PyTorch"):
        build(recipe, out, checkpoint=tiny_checkpoint)
    assert not out.exists()
    assert not list(tmp_path.glob(".*"))


def test_a_quantized_recipe_without_a_quantizer_is_refused_before_work(tmp_path, tiny_checkpoint):
    recipe = load_recipe("cpu", ["precision.ar_step=int8"])
    with pytest.raises(RecipeError, match=r"precision\.ar_step = 'int8' needs calibration: pass quantizer="):
        build(recipe, tmp_path / "q", checkpoint=tiny_checkpoint)
    assert not (tmp_path / "q").exists()


def test_unwritable_or_foreign_output_dirs(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="cannot write here"):
        build(load_recipe("cpu"), blocker / "out", checkpoint=tiny_checkpoint)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("x")
    with pytest.raises(OutputDirError, match="not empty and not an earlier build"):
        build(load_recipe("cpu"), foreign, checkpoint=tiny_checkpoint)
    assert (foreign / "cat.jpg").read_text() == "x"


def test_a_folder_with_someone_elses_manifest_json_is_not_replaced(tmp_path, tiny_checkpoint):
    extension = tmp_path / "web-extension"
    extension.mkdir()
    (extension / "manifest.json").write_text('{"manifest_version": 3, "name": "my extension"}')
    (extension / "background.js").write_text("// mine")
    with pytest.raises(OutputDirError, match="not empty and not an earlier build"):
        build(load_recipe("cpu"), extension, checkpoint=tiny_checkpoint)
    assert sorted(f.name for f in extension.iterdir()) == ["background.js", "manifest.json"]
    assert "my extension" in (extension / "manifest.json").read_text()


def test_a_rebuild_refuses_to_replace_a_build_holding_the_users_files(cpu_build, tiny_checkpoint, tmp_path):
    out = tmp_path / "build"
    shutil.copytree(cpu_build[0], out)
    (out / "NOTES.md").write_text("my notes")
    (out / "cam-7.state").write_bytes(b"state")
    result = run_cli("--recipe", "cpu", "--checkpoint", str(tiny_checkpoint), "--out", str(out))
    assert result.returncode == 6, result.stderr
    assert "NOTES.md" in result.stderr and "cam-7.state" in result.stderr
    assert (out / "NOTES.md").read_text() == "my notes" and (out / "cam-7.state").read_bytes() == b"state"
    (out / "NOTES.md").unlink()
    (out / "cam-7.state").unlink()
    build(load_recipe("cpu"), out, checkpoint=tiny_checkpoint)  # only its own files: replaced
    assert (out / "manifest.json").is_file() and not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_recipe_contradicting_the_checkpoint_is_named(tmp_path, tiny_checkpoint):
    from mirasol_edge.toolkit.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"chunking\.image_size = 64 contradicts the checkpoint's image_size = 32"):
        build(load_recipe("cpu", ["chunking.image_size=64"]), tmp_path / "o", checkpoint=tiny_checkpoint)


def test_op_the_backend_cannot_take_names_node_and_op(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    node = onnx.helper.make_node("FancyWarp", ["x"], ["y"], name="warp_7", domain="com.example")
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 18),
                                                  onnx.helper.make_opsetid("com.example", 1)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    with pytest.raises(EngineBuildError, match=r"odd\.onnx: .*warp_7.*FancyWarp"):
        build_tensorrt(path, tmp_path / "odd.plan", load_recipe("rtx"), {}, None)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mirasol_edge.cli.build", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_exit_codes_and_messages(tmp_path, tiny_checkpoint):
    assert run_cli("--help").returncode == 0
    refused = run_cli("--recipe", "orin-nano", "--set", "precision.ar_step=fp8", "--preset", "tiny",
                      "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "has no FP8" in refused.stderr
    missing = run_cli("--recipe", "cpu", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "y"))
    assert missing.returncode == 3 and "no such checkpoint" in missing.stderr
    (tmp_path / "no-clips").mkdir()
    no_media = run_cli("--recipe", "cpu", "--set", "precision.ar_step=int8", "--set",
                       f'calibration.media="{tmp_path / "no-clips"}"', "--checkpoint", str(tiny_checkpoint),
                       "--out", str(tmp_path / "z"))
    assert no_media.returncode == 7 and "no-clips: no video files" in no_media.stderr, no_media.stderr
    ok = run_cli("--recipe", "cpu", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "ok"), "--json")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert set(summary["components"]) == set(COMPONENTS)
