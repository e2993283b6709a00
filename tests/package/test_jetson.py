"""The device side of a Jetson needs only JetPack: the engine step runs without torch, its
TensorRT calls hold on JetPack 6's TensorRT 10.3 as on 11 and TensorRT-RTX, and the runtime
with the ``jetson`` extra resolves to aarch64 wheels for JetPack 6's Python 3.10."""

import json
import re
import subprocess
import sys
import textwrap
import types

import pytest

from mirasol_edge.assets import BUNDLED_CHECKPOINT
from mirasol_edge.toolkit import engines
from mirasol_edge.toolkit.engines import EngineBuildError, build_tensorrt, network_flags
from mirasol_edge.toolkit.recipe import load_recipe

from .targets import AARCH64, JETPACK6, build_wheel, requirements

CHILD = textwrap.dedent('''
    import json, sys

    class NoTorch:  # any import of torch fails, as on a Jetson with only JetPack and the runtime
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed here")

    sys.meta_path.insert(0, NoTorch())
    from mirasol_edge.cli.build import main as mirasol_build
    from mirasol_edge.cli.run import main as mirasol_run
    from mirasol_edge.runtime.engine_dir import EngineDir

    bundle = sys.argv[1]
    for command, args in ((mirasol_build, ["engine", bundle, "--json"]),
                          # TensorRT-RTX plans need an RTX GPU to run: stream through the bundle's ONNX
                          (mirasol_run, ["--sample", "--engines", bundle, "--backend", "onnxruntime", "--json"])):
        try:
            command(args, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    opened = EngineDir.open(bundle)  # the plans, each checked against its sha256 in the manifest
    print(json.dumps({"event": "opened", "backend": opened.backend, "engines": sorted(
        opened.engine_file(n).name for n in opened.components),
        "torch": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
''')


@pytest.mark.slow
def test_the_engine_step_and_a_stream_run_where_torch_cannot_be_imported(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from mirasol_edge.toolkit.build import build

    bundle = tmp_path / "bundle"
    build(load_recipe("rtx"), bundle, checkpoint=BUNDLED_CHECKPOINT, stage="export")  # the workstation's half
    assert not list(bundle.glob("*.plan"))
    result = subprocess.run([sys.executable, "-c", CHILD, str(bundle)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    built = next(e for e in events if "components" in e)
    assert built["backend"]["name"] == "tensorrt-rtx" and built["backend"]["engines_built"] is True
    assert all(c["engine"].endswith(".plan") and c["engine_bytes"] > 10_000 for c in built["components"].values())
    graded = [e for e in events if e.get("event") == "answer"]
    assert len(graded) == 6 and all(e["correct"] for e in graded), graded
    opened = events[-1]
    assert opened["backend"] == "tensorrt-rtx" and opened["engines"] == sorted(
        c["engine"] for c in built["components"].values())
    assert opened["torch"] is False


# A TensorRT module with the names that JetPack 6's TensorRT 10.3 has (python/src/infer/pyCore.cpp at
# v10.3.0) for the calls the engine step makes, and nothing more: what 10.9 / 11 or TensorRT-RTX
# added (HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY, ComputeCapability, num_compute_capabilities)
# is absent, so touching it raises AttributeError as on a Jetson.
class Members(types.SimpleNamespace):
    pass


def fake_trt(version="10.3.0", flags=None, levels=("NONE", "AMPERE_PLUS"), dla_cores=0):
    seen: dict = {}

    class ILogger:
        Severity = Members(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class Cache:
        def serialize(self):
            return b"timings"

    class Config:
        __slots__ = ("builder_optimization_level", "hardware_compatibility_level", "default_device_type", "DLA_core",
                     "flags", "pools", "profiles", "cache")

        def __init__(self):
            self.flags, self.pools, self.profiles = set(), {}, []

        def set_memory_pool_limit(self, pool, pool_size):
            self.pools[pool] = pool_size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, serialized_timing_cache):
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

    class Profile:
        def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's keyword names
            pass

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            seen["network_flags"] = flags
            return object()

        def create_builder_config(self):
            seen["config"] = Config()
            return seen["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"plan"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = Members(**(flags if flags is not None else {"EXPLICIT_BATCH": 0,
                                                                                     "STRONGLY_TYPED": 1}))
    trt.HardwareCompatibilityLevel = Members(**{name: i for i, name in enumerate(levels)})
    trt.BuilderFlag = Members(FP16=0, BF16=1, INT8=2, GPU_FALLBACK=4, VERSION_COMPATIBLE=17)
    trt.MemoryPoolType = Members(WORKSPACE=0)
    trt.DeviceType = Members(GPU=0, DLA=1)
    return trt, seen


def _build(monkeypatch, tmp_path, trt, recipe):
    monkeypatch.setattr(engines, "lazy_import_trt", lambda backend: trt)
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"not read: the parser is fake")
    return build_tensorrt(graph, tmp_path / "g.plan", recipe, {}, tmp_path / "timing.cache")


def test_tensorrt_10_3_builds_a_strongly_typed_plan_with_a_timing_cache(monkeypatch, tmp_path):
    trt, seen = fake_trt()
    _build(monkeypatch, tmp_path, trt, load_recipe("agx-orin"))
    assert seen["network_flags"] == 1 << 1  # STRONGLY_TYPED; EXPLICIT_BATCH is ignored since 10.0: not set
    config = seen["config"]
    assert config.pools == {trt.MemoryPoolType.WORKSPACE: 4096 << 20} and config.flags == set()
    assert (tmp_path / "g.plan").read_bytes() == b"plan" and (tmp_path / "timing.cache").read_bytes() == b"timings"


def test_same_compute_capability_on_10_3_says_it_needs_10_9(monkeypatch, tmp_path):
    recipe = load_recipe("h100", ["build.hardware_compatibility=same_compute_capability"])
    trt, _ = fake_trt()
    with pytest.raises(EngineBuildError, match=r"\(10\.3\.0\) has no HardwareCompatibilityLevel\.SAME_COMPUTE_CAPABILITY"
                                               r".*10\.9"):
        _build(monkeypatch, tmp_path, trt, recipe)
    newer, seen = fake_trt("10.9.0", levels=("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"))
    _build(monkeypatch, tmp_path, newer, recipe)
    assert seen["config"].hardware_compatibility_level == newer.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    ampere, seen = fake_trt()
    _build(monkeypatch, tmp_path, ampere, load_recipe("h100", ["build.hardware_compatibility=ampere_plus"]))
    assert seen["config"].hardware_compatibility_level == ampere.HardwareCompatibilityLevel.AMPERE_PLUS


def test_a_dla_core_the_builder_does_not_see_is_refused_by_name(monkeypatch, tmp_path):
    recipe = load_recipe("agx-orin", ["build.dla_core=1"])
    with pytest.raises(EngineBuildError, match=r"build\.dla_core = 1, but this tensorrt \(10\.3\.0\) sees 0 DLA"):
        _build(monkeypatch, tmp_path, fake_trt(dla_cores=0)[0], recipe)
    trt, seen = fake_trt(dla_cores=2)  # an AGX Orin
    _build(monkeypatch, tmp_path, trt, recipe)
    config = seen["config"]
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert config.flags == {trt.BuilderFlag.GPU_FALLBACK}


@pytest.mark.parametrize(("backend", "version", "flags", "expected"), [
    ("tensorrt", "9.3.0", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 2}, (1 << 2) | 1),  # 9.x needs explicit batch
    ("tensorrt", "10.3.0", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, 1 << 1),  # JetPack 6.1 / 6.2
    ("tensorrt", "11.1.0", {"STRONGLY_TYPED": 1}, 1 << 1),  # deprecated, ignored, still accepted
    ("tensorrt", "12.0.0", {}, 0),  # always strongly typed, the flag gone
    ("tensorrt-rtx", "1.7.1", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, 1 << 1),
    ("tensorrt-rtx", "2.0.0", {}, 0),
])
def test_network_flags_follow_the_version(backend, version, flags, expected):
    assert network_flags(fake_trt(version, flags)[0], backend) == expected


def test_tensorrt_8_6_without_strong_typing_is_refused_not_built_weakly():
    with pytest.raises(EngineBuildError, match=r"tensorrt 8\.6\.2 has no strongly typed networks.*TensorRT 10"):
        network_flags(fake_trt("8.6.2", {"EXPLICIT_BATCH": 0})[0], "tensorrt")


@pytest.mark.slow  # asks the package registry
def test_the_runtime_and_the_jetson_extra_resolve_for_jetpack_6(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    wanted = requirements(wheel, JETPACK6, ("jetson",))
    assert any(r.startswith("tomli") for r in wanted) and any(r.startswith("cuda-python") for r in wanted), wanted
    out = tmp_path / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", *AARCH64, "--python-version", "3.10",
                             "-d", str(out), f"{wheel}[jetson]", *wanted],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p.name for p in out.glob("*.whl"))
    names = {re.sub(r"[-_.]+", "-", f.split("-")[0]).lower() for f in files}
    for req in wanted:
        assert re.split(r"[<>=!~\[; ]", req)[0].lower().replace("_", "-") in names, (req, files)
    native = [f for f in files if not f.endswith("-any.whl")]
    assert native and all("aarch64" in f and re.search(r"-(cp310|abi3)-", f) for f in native), native
    (bindings,) = [f for f in files if f.startswith("cuda_bindings-")]
    assert bindings.split("-")[1].startswith("12."), bindings  # 13 needs a CUDA 13 driver; JetPack 6 is 12.6
    assert not any(f.startswith(("nvidia_dali", "torch-")) for f in files), files
