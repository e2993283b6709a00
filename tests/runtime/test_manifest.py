"""The typed manifest: what the build writes opens, an older or broken one is refused by name,
and engines that disagree with the component contract are refused before they run."""

import json
import shutil

import numpy as np
import pytest

from mirasol_edge.runtime.backends import BackendError, create_backend
from mirasol_edge.runtime.components import contracts
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.manifest import FORMAT, Manifest, ManifestError, load_manifest


@pytest.fixture
def copy(tiny_engines, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, out)
    return out


def _edit(path, change):
    data = json.loads((path / "manifest.json").read_text())
    change(data)
    (path / "manifest.json").write_text(json.dumps(data))


def test_the_build_writes_what_the_schema_reads(tiny_engines):
    raw = json.loads((tiny_engines / "manifest.json").read_text())
    manifest = load_manifest(tiny_engines)
    assert isinstance(manifest, Manifest) and manifest.format == FORMAT
    assert manifest.to_dict() == raw, "reading and writing the schema loses nothing"
    assert manifest.backend.engines_built and manifest.components["ar_step"].engine.endswith(".ort.onnx")
    assert manifest.components["chunk_encoder"].report["parity"]["max_rel_error"] < 1e-4


def test_another_format_is_refused_naming_both_versions(copy):
    _edit(copy, lambda d: d.update(format="mirasol-engines/0"))
    with pytest.raises(ManifestError, match=r"format 'mirasol-engines/0'; this mirasol-edge reads 'mirasol-engines/1'"):
        EngineDir.open(copy)


def test_a_missing_field_is_named(copy):
    _edit(copy, lambda d: d["components"]["ar_step"].pop("build_key"))
    with pytest.raises(ManifestError, match=r"no 'build_key' entry in components\.ar_step.*mirasol-engines/1"):
        EngineDir.open(copy)


def test_engines_that_break_the_contract_are_refused(copy):
    def drop_context(d):
        d["components"]["ar_step"]["inputs"] = [t for t in d["components"]["ar_step"]["inputs"]
                                                if t["name"] != "past.context"]
    _edit(copy, drop_context)
    with pytest.raises(ManifestError, match=r"components\.ar_step\.inputs differ.*missing \['past\.context'\]"):
        EngineDir.open(copy)


def test_the_contract_names_every_graph_tensor(tiny_engines):
    manifest = load_manifest(tiny_engines)
    for name, contract in contracts(MirasolConfig.from_dict(manifest.model["config"])).items():
        assert [t.name for t in manifest.components[name].inputs] == contract.input_names, name
        assert [t.name for t in manifest.components[name].outputs] == contract.output_names, name
        dummy = contract.dummy_inputs()
        assert list(dummy) == contract.input_names and all(isinstance(v, np.ndarray) for v in dummy.values())


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_missing_feed_is_named_by_every_backend(tiny_engines, backend):
    engines = EngineDir.open(tiny_engines, use_onnx=backend != "onnxruntime")
    runner = create_backend(engines, backend, "cpu").runner("ar_step")
    with pytest.raises(BackendError, match=r"ar_step: input 'past\.pos' not given"):
        runner.run({"latents": None})
