"""TensorRT-RTX engines in the stream: opened and checked here; run where there is a GPU."""

import json
import shutil

import numpy as np
import pytest

from mirasol_edge.runtime.backends import BackendError
from mirasol_edge.runtime.cuda import CudaError
from mirasol_edge.runtime.stream import MirasolStream

from .test_gpu_path import _rtx_here
from .test_stream import QUESTION, push_all

pytest.importorskip("tensorrt_rtx")


def _has_gpu() -> bool:
    try:
        from mirasol_edge.runtime.cuda import compute_capability

        compute_capability()
        return True
    except CudaError:
        return False


@pytest.mark.skipif(_has_gpu(), reason="checks the error on a machine without a GPU")
def test_without_a_gpu_the_error_says_so(tiny_rtx_engines):
    with pytest.raises(CudaError, match="cuda-python|CUDA error"):
        MirasolStream.open(tiny_rtx_engines)


def test_onnxruntime_runs_the_fp16_graphs_of_an_rtx_build(tiny_rtx_engines, tiny_engines):
    """Any build's ONNX runs on ONNX Runtime: the fp16 graphs track the fp32 engines."""
    with MirasolStream.open(tiny_rtx_engines, backend="onnxruntime") as fp16, MirasolStream.open(tiny_engines) as fp32:
        assert fp16.engines.dir.components["ar_step"].precision == "fp16"
        for a, b in zip(push_all(fp16, 6), push_all(fp32, 6)):
            rel = np.abs(a.outputs - b.outputs).max() / np.abs(b.outputs).max()
            assert rel < 1e-2
        assert fp16.ask(QUESTION).chunks_seen == 6


def test_tampered_plan_is_refused_before_tensorrt_sees_it(tiny_rtx_engines, tmp_path):
    from mirasol_edge.runtime.manifest import ManifestError

    copy = tmp_path / "rtx"
    shutil.copytree(tiny_rtx_engines, copy)
    plan = copy / "text_decode.plan"
    plan.write_bytes(plan.read_bytes()[:-100])
    with pytest.raises(ManifestError, match="text_decode.plan: text_decode engine sha256 mismatch"):
        MirasolStream.open(copy)


@pytest.mark.requires_cuda
def test_rtx_engines_on_the_gpu_match_onnxruntime(tiny_rtx_engines, tiny_engines):
    _rtx_here(tiny_rtx_engines)
    with MirasolStream.open(tiny_rtx_engines) as rtx, MirasolStream.open(tiny_engines) as ort:
        for a, b in zip(push_all(rtx, 12), push_all(ort, 12)):
            rel = np.abs(a.outputs - b.outputs).max() / np.abs(b.outputs).max()
            assert rel < 1e-2
        assert rtx.ask(QUESTION).chunks_seen == 12


@pytest.mark.requires_cuda
def test_engines_for_another_gpu_are_refused(tiny_rtx_engines, tmp_path):
    copy = tmp_path / "rtx"
    shutil.copytree(tiny_rtx_engines, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["compute_capabilities"] = ["1.0"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="engines target compute capability 1.0; this GPU"):
        MirasolStream.open(copy)
