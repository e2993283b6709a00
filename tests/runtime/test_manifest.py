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


def _resolve(shape, dims):
    """A contract shape with its named axes (``past_len``, ``past_len+1``) at the given sizes."""
    def size(d):
        if isinstance(d, int):
            return d
        name, _, extra = d.partition("+")
        return dims[name] + int(extra or 0)
    return tuple(size(d) for d in shape)


def _build_contracts(manifest):
    """The contracts the build exported with: its model, batch and recipe's text lengths."""
    text = manifest.recipe.get("text", {})
    return contracts(MirasolConfig.from_dict(manifest.model["config"]), manifest.batch,
                     text.get("max_question_tokens"), text.get("max_answer_tokens"))


def test_the_contract_names_every_graph_tensor(tiny_engines):
    """Every built graph takes exactly the contract's inputs and gives exactly its outputs: the
    contract's dummy inputs (dynamic axes at their maximum) run through the real engines, and
    what comes back has the names, dtypes and shapes the contract states."""
    manifest = load_manifest(tiny_engines)
    engines = EngineDir.open(tiny_engines)
    backend = create_backend(engines, "onnxruntime", "cpu")
    try:
        specs = _build_contracts(manifest)
        assert sorted(specs) == sorted(manifest.components)
        for name, contract in specs.items():
            component = manifest.components[name]
            assert [t.name for t in component.inputs.values()] == contract.input_names, name
            assert [t.name for t in component.outputs.values()] == contract.output_names, name
            dims = {d: hi for d, (_, hi) in contract.dynamic.items()}
            dummy = contract.dummy_inputs()
            for entry in component.inputs.values():  # what the build recorded, not what the contract says
                assert dummy[entry.name].dtype == np.dtype(entry.dtype), (name, entry.name)
                assert dummy[entry.name].shape == _resolve(entry.shape, dims), (name, entry.name)
            runner = backend.runner(name)
            try:
                outputs = runner.run({k: backend.upload(v) for k, v in dummy.items()})
                assert list(outputs) == contract.output_names, name
                for spec in contract.outputs:
                    got = backend.download(outputs[spec.name])
                    assert got.dtype == np.dtype(spec.dtype), (name, spec.name)
                    assert got.shape == _resolve(spec.shape, dims), (name, spec.name, got.shape)
                    assert not np.isnan(got).any(), (name, spec.name)  # (-inf: a masked slot of cross_bias)
            finally:
                runner.close()
    finally:
        backend.close()


def test_the_contracts_dynamic_ranges_are_the_built_profiles(tiny_engines):
    """The engines' optimization profiles come from the contract's dynamic axes (ComponentContract.dynamic),
    so the contract's dummy inputs, at those axes' maximum, are exactly the profiles' maximum shapes
    (inputs a TensorRT engine of this build takes)."""
    manifest = load_manifest(tiny_engines)
    specs = _build_contracts(manifest)
    profiled = [(name, entry) for name, c in manifest.components.items() for entry in c.inputs.values()
                if entry.name in c.profiles]
    assert {name for name, _ in profiled} == {"text_prefill", "text_decode", "text_score"}
    for name, entry in profiled:
        profile = manifest.components[name].profiles[entry.name]
        dummy = specs[name].dummy_inputs()[entry.name]
        assert dummy.shape == tuple(profile["max"]), (name, entry.name, profile)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_missing_feed_is_named_by_every_backend(tiny_engines, backend):
    engines = EngineDir.open(tiny_engines, use_onnx=backend != "onnxruntime")
    runner = create_backend(engines, backend, "cpu").runner("ar_step")
    with pytest.raises(BackendError, match=r"ar_step: input 'past\.pos' not given"):
        runner.run({"latents": None})
