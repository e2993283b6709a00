"""The Triton model repository: configs Triton's own protobuf parses, that agree with the manifest."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mirasol_edge.cli.build import main as build_main
from mirasol_edge.runtime.components import COMPONENTS
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.repository import MARKER, RepositoryError, ServeOptions, read_config, write_repository

pytest.importorskip("tritonclient.grpc")


def _io(config):
    from tritonclient.grpc import model_config_pb2 as mc

    def entries(items):
        return {t.name: (mc.DataType.Name(t.data_type), list(t.dims), getattr(t, "optional", False)) for t in items}

    return entries(config.input), entries(config.output)


def _expected_dims(shape):
    return [d if isinstance(d, int) else -1 for d in shape]


def test_configs_parse_and_agree_with_the_manifest(tiny_engines, tmp_path):
    repo = write_repository(tiny_engines, tmp_path / "repo")
    engines = EngineDir.open(tiny_engines)
    for name in COMPONENTS:
        config = read_config(repo / name / "config.pbtxt")
        assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
        inputs, outputs = _io(config)
        info = engines.components[name]
        for have, want in ((inputs, info.inputs), (outputs, info.outputs)):
            assert set(have) == set(want), name
            for tensor in want.values():
                dtype, dims, _ = have[tensor.name]
                assert dtype == "TYPE_" + {"float32": "FP32", "int64": "INT64", "uint8": "UINT8"}[tensor.dtype]
                assert dims == _expected_dims(tensor.shape), (name, tensor.name)
        assert (repo / name / "1" / config.default_model_filename).is_file()

    stream = read_config(repo / p.STREAM_MODEL / "config.pbtxt")
    assert stream.backend == "python" and stream.max_batch_size == ServeOptions().max_batch
    seq = stream.sequence_batching
    assert seq.HasField("oldest") and seq.max_sequence_idle_microseconds == 60_000_000
    assert sorted(c.name for c in seq.control_input) == [p.END, p.START]
    inputs, outputs = _io(stream)
    video = engines.components["chunk_encoder"].inputs["video"]
    assert inputs[p.VIDEO] == ("TYPE_UINT8", list(video.shape[1:]), True)
    assert inputs[p.OP] == ("TYPE_STRING", [1], False)
    ar_out = engines.components["ar_step"].outputs["outputs"]
    assert outputs[p.OUTPUTS][1] == list(ar_out.shape[1:])
    assert set(outputs) == {n for names in p.OUTPUTS_OF.values() for n in names}
    # The stream model's copy of the manifest is byte for byte the engines' (snapshots name its hash).
    assert EngineDir.open(repo / p.STREAM_MODEL / "1" / "engines", component_files=False).manifest_sha256 == \
        engines.manifest_sha256
    assert json.loads(stream.parameters[p.MODEL_CONFIG].string_value) == engines.config


def test_the_twin_has_the_same_interface(tiny_engines, tmp_path):
    prod = write_repository(tiny_engines, tmp_path / "prod")
    twin = write_repository(tiny_engines, tmp_path / "twin", twin=True)
    for name in (*COMPONENTS, p.STREAM_MODEL):
        a, b = read_config(prod / name / "config.pbtxt"), read_config(twin / name / "config.pbtxt")
        assert _io(a) == _io(b) and a.max_batch_size == b.max_batch_size, name
    config = read_config(twin / "ar_step" / "config.pbtxt")
    assert config.backend == "python" and (twin / "ar_step" / "1" / "model.py").is_file()
    assert (twin / "ar_step" / "1" / config.parameters["graph"].string_value).is_file()


def test_a_typo_in_a_config_is_named(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "x"\nmax_batch_sise: 4\n')
    with pytest.raises(RepositoryError, match="config.pbtxt.*max_batch_sise"):
        read_config(bad)


def test_rewrites_its_own_models_and_keeps_everything_else(tiny_engines, tmp_path):
    repo = write_repository(tiny_engines, tmp_path / "repo")
    first = json.loads((repo / MARKER).read_text())["files"]
    assert "ar_step/config.pbtxt" in first and "mirasol/config.pbtxt" in first
    (repo / "README.md").write_text("the operator's notes")
    (repo / "detector" / "1").mkdir(parents=True)
    (repo / "detector" / "config.pbtxt").write_text('name: "detector"')
    (repo / "ar_step" / "config.pbtxt").write_text("edited")
    write_repository(tiny_engines, repo)
    assert (repo / "README.md").read_text() == "the operator's notes"
    assert (repo / "detector" / "config.pbtxt").read_text() == 'name: "detector"'
    assert read_config(repo / "ar_step" / "config.pbtxt").name == "ar_step"
    (repo / "ar_step" / "mine.txt").write_text("put here by the operator")
    with pytest.raises(RepositoryError, match="mine.txt: not written by mirasol-build"):
        write_repository(tiny_engines, repo)
    assert (repo / "ar_step" / "mine.txt").read_text() == "put here by the operator"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(RepositoryError, match="not a model repository"):
        write_repository(tiny_engines, other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no half-written folder left


def test_tensorrt_rtx_engines_are_refused_by_name(tiny_rtx_engines, tmp_path):
    with pytest.raises(RepositoryError, match="tensorrt-rtx.*--twin"):
        write_repository(tiny_rtx_engines, tmp_path / "repo")


def test_the_command(tiny_engines, tmp_path):
    runner = CliRunner()
    result = runner.invoke(build_main, ["triton", str(tiny_engines), "--out", str(tmp_path / "repo"),
                                        "--idle-seconds", "5", "--max-streams", "8"])
    assert result.exit_code == 0, result.output
    seq = read_config(tmp_path / "repo" / p.STREAM_MODEL / "config.pbtxt").sequence_batching
    assert seq.max_sequence_idle_microseconds == 5_000_000 and seq.oldest.max_candidate_sequences == 2 * 8 + 16
    missing = runner.invoke(build_main, ["triton", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and "nowhere" in missing.output


def test_sequence_ids_are_stable_and_in_range():
    assert p.sequence_id("cam-7") == p.sequence_id("cam-7") != p.sequence_id("cam-8")
    assert 0 < p.sequence_id("cam-7") < 2**63 and p.sequence_id(42) == 42
    with pytest.raises(ValueError, match="out of range"):
        p.sequence_id(0)
    assert p.strings("push").dtype == np.object_
