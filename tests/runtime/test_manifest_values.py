"""Every manifest field is typed and ranged when the engines are opened, and every file it lists
stays inside the engine folder: '..', absolute paths and links out are refused even when the
sha256 matches, before anything is read."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.manifest import ManifestError
from mirasol_edge.runtime.stream import MirasolStream

OUTSIDE = Path("/etc/passwd")


@pytest.fixture
def copy(tiny_engines, tmp_path):
    out = tmp_path / "deep" / "er" / "engines"
    shutil.copytree(tiny_engines, out)
    return out


def _edit(path, change):
    data = json.loads((path / "manifest.json").read_text())
    change(data)
    (path / "manifest.json").write_text(json.dumps(data))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _engine(name: str, sha: str):
    def change(d):
        d["components"]["ar_step"].update(engine=name, engine_sha256=sha)
    return change


@pytest.mark.parametrize("name", ["../" * 12 + "etc/passwd", str(OUTSIDE), "sub/../../engines/x", "C:\\x.onnx", ""])
def test_an_engine_file_outside_the_folder_is_refused_even_with_its_sha256(copy, name):
    _edit(copy, _engine(name, _sha(OUTSIDE)))
    with pytest.raises(ManifestError, match=r"components\.ar_step\.engine: .* is not a file inside the engine folder"):
        EngineDir.open(copy)
    with pytest.raises(ManifestError, match="not a file inside the engine folder"):
        MirasolStream.open(copy)


def test_a_link_out_of_the_folder_is_refused(copy):
    (copy / "link.onnx").symlink_to(OUTSIDE)
    _edit(copy, _engine("link.onnx", _sha(OUTSIDE)))
    with pytest.raises(ManifestError, match=r"link\.onnx: ar_step engine .* outside the engine folder"):
        EngineDir.open(copy)


def test_a_link_inside_the_folder_is_fine(copy):
    (copy / "again.ort.onnx").symlink_to(copy / "ar_step.ort.onnx")
    _edit(copy, _engine("again.ort.onnx", _sha(copy / "ar_step.ort.onnx")))
    assert EngineDir.open(copy).engine_file("ar_step").name == "again.ort.onnx"


@pytest.mark.parametrize("where, value", [
    (lambda d: d["state"], {"file": "../initial_state.safetensors"}),
    (lambda d: d["state"], {"file": "/tmp/initial_state.safetensors"}),
    (lambda d: d["components"]["text_decode"], {"onnx": "../../text_decode.onnx"}),
    (lambda d: d["components"]["text_decode"], {"onnx_data": {"file": "/etc/shadow", "sha256": "0" * 64}}),
])
def test_other_listed_files_are_confined_too(copy, where, value):
    _edit(copy, lambda d: where(d).update(value))
    with pytest.raises(ManifestError, match="is not a file inside the engine folder"):
        EngineDir.open(copy)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(batch=0), r"the manifest\.batch must be from 1 to 1024, got 0"),
    (lambda d: d.update(batch=-3), "batch must be from 1 to 1024, got -3"),
    (lambda d: d.update(batch=True), "batch must be int, got bool"),
    (lambda d: d.update(batch="2"), "batch must be int, got str"),
    (lambda d: d.update(batch=1.5), "batch must be int, got float"),
    (lambda d: d["recipe"]["text"].update(max_answer_tokens=-5),
     r"recipe\.text\.max_answer_tokens must be from 1 to 65536, got -5"),
    (lambda d: d["recipe"]["text"].update(max_question_tokens=10**9), "max_question_tokens must be from 1"),
    (lambda d: d["recipe"]["text"].update(max_answer_tokens="16"), "max_answer_tokens must be int, got str"),
    (lambda d: d["recipe"].pop("text"), r"no 'text' entry in recipe"),
    (lambda d: d["components"]["ar_step"]["inputs"][0].update(dtype="evil"),
     r"components\.ar_step\.inputs\[0\]\.dtype 'evil' is not one of float32"),
    (lambda d: d["components"]["ar_step"]["inputs"][0].update(shape=[1, -8, 64]), r"inputs\[0\]\.shape \[1, -8, 64\]"),
    (lambda d: d["components"]["ar_step"]["inputs"][0].update(shape=[1, 8.0, 64]), r"each axis is a size from 1"),
    (lambda d: d["components"]["ar_step"].update(inputs={"latents": 1}), r"inputs must be a list of tensors"),
    (lambda d: d["components"]["ar_step"].update(profiles={"x": {"min": [0], "opt": [1], "max": [1]}}),
     r"profiles\.x\.min must be sizes from 1"),
    (lambda d: d["components"]["ar_step"].update(engine_sha256="not-a-hash"), "engine_sha256 must be a sha256"),
    (lambda d: d["state"].update(sha256=12), r"state\.sha256 must be str, got int"),
    (lambda d: d.update(components=[1, 2]), r"the manifest\.components must be dict, got list"),
    (lambda d: d.update(backend=["onnxruntime"]), r"the manifest\.backend must be dict, got list"),
    (lambda d: d["backend"].update(engines_built="yes"), r"backend\.engines_built must be bool, got str"),
    (lambda d: d["target"].update(compute_capabilities=[8.7]), "compute_capabilities must be strings"),
    (lambda d: d["model"].update(config=[]), r"model\.config must be dict, got list"),
    (lambda d: d.update(quantization="int8"), r"quantization must be dict, got str"),
])
def test_fields_of_the_wrong_type_or_range_are_named(copy, change, message):
    _edit(copy, change)
    with pytest.raises(ManifestError, match=message):
        EngineDir.open(copy)


@pytest.mark.parametrize("content, message", [
    (b"[1, 2, 3]", r"not a manifest \(a JSON object expected\)"),
    (b'"engines"', r"not a manifest \(a JSON object expected\)"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b" " * (17 << 20) + b"{}", "a manifest is at most"),
])
def test_manifests_that_are_not_objects_or_not_json(copy, content, message):
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=message):
        EngineDir.open(copy)


def test_an_initial_state_that_is_not_safetensors_is_named(copy):
    junk = copy / "initial_state.safetensors"
    junk.write_bytes(b"not safetensors at all")
    _edit(copy, lambda d: d["state"].update(sha256=_sha(junk)))
    with pytest.raises(ManifestError, match="initial state"):
        MirasolStream.open(copy)
