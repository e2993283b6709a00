"""Quantized builds end to end: the int8 cpu build of the bundled model, the orin-nano
int8/int4 bundle through TensorRT-RTX, and failures that leave nothing behind."""

import json

import onnx
import pytest

from mirasol_edge.assets import SAMPLE_CLIP, SAMPLE_QUESTIONS
from mirasol_edge.calib.quantize import QuantizationError
from mirasol_edge.cli.build import quantization_hooks
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.engines import Profile, build_engine
from mirasol_edge.toolkit.recipe import RecipeError, load_recipe

from .conftest import BUNDLED

pytestmark = pytest.mark.slow  # builds and answers through the real runtime: minutes

SMALL = ["calibration.clips=8", "calibration.eval_clips=12"]
ALL_INT8 = [f"precision.{c}=int8" for c in ("chunk_encoder", "ar_step", "text_prefill", "text_decode")]


def _ops(path):
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def int8_cpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8-cpu"
    return out, build(load_recipe("cpu", SMALL + ALL_INT8), out, checkpoint=BUNDLED, **quantization_hooks())


def test_int8_cpu_build_answers_like_fp32(int8_cpu):
    out, manifest = int8_cpu
    report = manifest["quantization"]
    assert report["exact_match"]["fp32"] >= 0.9, "the bundled model knows the task"
    assert report["ratio"] >= 0.85 and report["calibration"]["clips"] == 8
    for name, entry in manifest["components"].items():
        assert entry["precision"] == "int8"
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out / entry["onnx"]), name
        q = entry["quantization"]
        assert q["error"]["min_cosine"] >= 0.99 and q["quantized_bytes"] < q["fp32_bytes"], name
    assert not list(out.glob("*.fp32.onnx*")), "the fp32 graph is not shipped"
    # ONNX Runtime runs the quantized layers on integer kernels: only the tied logits projection
    # (a MatMul by the embedding, never quantized) stays float.
    for name, entry in manifest["components"].items():
        fusion = entry["fusion"]
        engine_ops = [n.op_type for n in onnx.load(str(out / entry["engine"])).graph.node]
        assert fusion["integer_kernels"] == engine_ops.count("MatMulIntegerToFloat") > 0, name
        assert len(fusion["float_linear_layers"]) == (1 if name.startswith("text") else 0), (name, fusion)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["quantization"]["ratio"] == report["ratio"]


def test_int8_build_twice_into_the_same_folder_reuses_everything(int8_cpu):
    out, first = int8_cpu
    again = build(load_recipe("cpu", SMALL + ALL_INT8), out, checkpoint=BUNDLED, **quantization_hooks())
    assert all(c["reused"] for c in again["components"].values())
    assert again["quantization"] == first["quantization"], "the answer report of an unchanged build stands"


def test_int8_engines_answer_the_bundled_sample(int8_cpu):
    out, _ = int8_cpu
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks

    sample = json.loads(SAMPLE_QUESTIONS.read_text())
    with MirasolStream.open(out, backend="onnxruntime") as stream:
        for chunk in chunks(SAMPLE_CLIP, ChunkSpec.from_config(stream.engines.dir.config)):
            stream.push(chunk)
        right = sum(stream.ask(qa["question"]).text == qa["answer"] for qa in sample["qa"])
    assert right == len(sample["qa"])


def test_orin_nano_bundle_is_int8_int4_and_tensorrt_rtx_builds_it(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "orin-nano-bundle"
    manifest = build(load_recipe("orin-nano", SMALL), out, checkpoint=BUNDLED, stage="export", **quantization_hooks())
    assert manifest["backend"]["engines_built"] is False
    assert {c: e["precision"] for c, e in manifest["components"].items()} == {
        "chunk_encoder": "int8", "ar_step": "int4", "text_prefill": "int4", "text_decode": "int4",
        "text_score": "int4"}
    ar = onnx.load(str(out / manifest["components"]["ar_step"]["onnx"]))
    int4 = [i for i in ar.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert int4, "AR weights are int4 behind DequantizeLinear"
    # TensorRT's int4 GEMMs take fp16 activations: every int4 MatMul is cast to fp16 in and out.
    producer = {o: n for n in ar.graph.node for o in n.output}
    int4_matmuls = [n for n in ar.graph.node if n.op_type == "MatMul" and n.input[1] in producer
                    and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert int4_matmuls and all(producer[n.input[0]].op_type == "Cast" for n in int4_matmuls)
    assert all(any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in producer[n.input[0]].attribute)
               for n in int4_matmuls)
    assert manifest["quantization"]["ratio"] >= 0.85
    again = build(load_recipe("orin-nano", SMALL), out, checkpoint=BUNDLED, stage="export", **quantization_hooks())
    assert all(c["reused"] for c in again["components"].values()), "an int8 + int4 bundle, twice"
    assert again["quantization"] == manifest["quantization"]
    rtx = load_recipe("rtx")
    for name, entry in manifest["components"].items():
        profiles = {n: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for n, p in entry["profiles"].items()}
        built = build_engine(out / entry["onnx"], name, rtx, profiles)
        assert built["engine_bytes"] > 100_000, name


def test_quantization_that_breaks_the_model_fails_and_leaves_nothing(tmp_path):
    recipe = load_recipe("cpu", SMALL + ["precision.ar_step=int8", 'precision.pin={"ar.blocks.0" = "int8", '
                                         '"ar.blocks.1" = "int8", "ar.input" = "int8"}',
                                         "accuracy.min_quantized_cosine=0.9999999"])
    with pytest.raises(QuantizationError, match=r"ar_step: int8 breaks this component.*min_quantized_cosine"):
        build(recipe, tmp_path / "q", checkpoint=BUNDLED, **quantization_hooks())
    assert not list(tmp_path.iterdir()), "no output, no staging directory"


def test_pin_naming_a_group_the_model_lacks_fails_before_work(tmp_path, tiny_checkpoint):
    recipe = load_recipe("cpu", ["precision.ar_step=int8", 'precision.pin={"ar.blocks.9" = "fp32"}'])
    with pytest.raises(RecipeError, match=r"precision\.pin\.ar\.blocks\.9: no such layer group.*ar\.blocks\.0"):
        build(recipe, tmp_path / "q", checkpoint=tiny_checkpoint, **quantization_hooks())
    assert not (tmp_path / "q").exists()


def test_int4_on_the_cpu_runs_matmulnbits_and_keeps_the_answers(tmp_path):
    """ONNX Runtime's own weight-only int4 (MatMulNBits, int8 activations) for the memory-bound parts."""
    out = tmp_path / "tiny-int4-cpu"
    manifest = build(load_recipe("cpu", SMALL + ["precision.ar_step=int4", "precision.text_decode=int4"]), out,
                     checkpoint=BUNDLED, **quantization_hooks())
    for name in ("ar_step", "text_decode"):
        ops = _ops(out / manifest["components"][name]["onnx"])
        assert "MatMulNBits" in ops and "DequantizeLinear" not in ops, (name, ops)
    assert manifest["quantization"]["ratio"] >= 0.85


def test_cpu_fast_keeps_the_fastest_candidate_that_passes_and_says_why(tmp_path):
    out = tmp_path / "tiny-cpu-fast"
    manifest = build(load_recipe("cpu-fast", SMALL), out, checkpoint=BUNDLED, **quantization_hooks())
    for name, entry in manifest["components"].items():
        auto = entry["quantization"]["auto"]
        timed = {c: m["ms"] for c, m in auto["candidates"].items() if "ms" in m}
        assert set(auto["candidates"]) == {"fp32", "int8", "int4"} and "fp32" in timed, name
        assert auto["chosen"] == entry["precision"] == min(timed, key=timed.get), (name, auto)
        assert "fastest here of" in auto["why"]
        ops = _ops(out / entry["onnx"])
        assert ("MatMulNBits" in ops) == (entry["precision"] == "int4"), (name, ops)
    assert manifest["quantization"]["ratio"] >= 0.85


def test_a_snapshot_of_the_int8_build_continues_on_the_fp32_and_rtx_builds(int8_cpu, tmp_path):
    """Portable snapshots: a stream half-way through a held-out clip on the int8 build is restored on
    the fp32 build and on the rtx build's graphs (through ONNX Runtime), and answers each clip's
    questions as an uninterrupted stream on that build does; another model's snapshot is refused."""
    from mirasol_edge.demo.synthetic import HELDOUT_SEED, QUESTIONS, make_clip
    from mirasol_edge.runtime.decode.chunks import chunks
    from mirasol_edge.runtime.snapshot import SnapshotError

    fp32, rtx = tmp_path / "fp32", tmp_path / "rtx"
    build(load_recipe("cpu"), fp32, checkpoint=BUNDLED)
    build(load_recipe("rtx"), rtx, checkpoint=BUNDLED)
    targets = {"fp32": (fp32, "auto"), "rtx graphs": (rtx, "onnxruntime")}
    int8 = int8_cpu[0]
    matched = 0
    for seed in range(HELDOUT_SEED + 500, HELDOUT_SEED + 503):  # seeds no training run used
        clip, facts = make_clip(seed, tmp_path)
        with MirasolStream.open(int8) as source:
            decoded = list(chunks(clip, source.spec))
            half = len(decoded) // 2
            for c in decoded[:half]:
                source.push(c)
            source.snapshot(tmp_path / f"{seed}.state")
        for name, (engines, backend) in targets.items():
            with MirasolStream.open(engines, backend) as whole:
                for c in decoded:
                    whole.push(c)
                want = {q: whole.ask(q).text for q in QUESTIONS.values()}
            with MirasolStream.restore(tmp_path / f"{seed}.state", engines, backend) as moved:
                assert moved.chunks_seen == half
                for c in decoded[half:]:
                    moved.push(c)
                got = {q: moved.ask(q).text for q in QUESTIONS.values()}
            assert got == want, (seed, name)
            matched += sum(got[QUESTIONS[kind]] == answer for kind, answer in facts.answers().items())
    assert matched >= 0.9 * 3 * len(targets) * len(QUESTIONS)  # and they are the clips' right answers
    manifest = json.loads((fp32 / "manifest.json").read_text())
    manifest["model"]["sha256"] = "0" * 64  # another model's weights
    (fp32 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="taken with another model"):
        MirasolStream.restore(tmp_path / f"{seed}.state", fp32)
