"""The GPU path's logic that needs no GPU: which buffer set a TensorRT step writes, which GPUs
accept which engines, how the GPU tests are gated, and batched streams driven from threads."""

import threading

import numpy as np
import pytest

from mirasol_edge.runtime.backends import BackendError
from mirasol_edge.runtime.backends.trt_backend import gpu_accepts, output_set_for
from mirasol_edge.runtime.cuda import gpu_problem
from mirasol_edge.runtime.stream import MirasolEngines
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe


def test_a_step_never_writes_a_buffer_it_reads():
    sets = [{10, 11}, {20, 21}]
    assert output_set_for(sets, {10, 11}) == 1  # the usual swap
    assert output_set_for(sets, {20, 21}) == 0
    assert output_set_for(sets, {1, 2}) == 0  # fresh uploads: either will do
    # after a failed step the next inputs may sit in set 1 though "the turn" says 1: still not 1
    assert output_set_for(sets, {21, 5}) == 0
    with pytest.raises(BackendError, match="every output buffer set holds one of this step's inputs"):
        output_set_for(sets, {10, 21})


@pytest.mark.parametrize("targets, found, level, ok", [
    (["8.6", "8.9"], "8.9", "none", True),
    (["8.6", "8.9"], "9.0", "none", False),
    (["8.0"], "9.0", "ampere_plus", True),  # an ampere_plus engine runs on any Ampere or newer GPU
    (["8.0"], "7.5", "ampere_plus", False),
    ([], "12.0", "none", True),
])
def test_which_gpus_accept_which_engines(targets, found, level, ok):
    assert gpu_accepts(targets, found, level) is ok


def test_gpu_tests_are_gated_on_the_runtimes_own_probe(request):
    problem = gpu_problem()
    if problem is None:
        pytest.skip("a GPU is here: the gate lets the requires_cuda tests run")
    assert "cuda-python" in problem or "GPU" in problem
    gated = [i for i in request.session.items if "requires_cuda" in i.keywords]
    assert gated and all(any(m.name == "skip" for m in i.iter_markers()) for i in gated)


@pytest.fixture(scope="module")
def batch2(tmp_path_factory, lively_checkpoint):
    out = tmp_path_factory.mktemp("engines") / "tiny-cpu-batch2"
    build(load_recipe("cpu", ["build.batch=2"]), out, checkpoint=lively_checkpoint)
    return out


def test_batched_pushes_from_many_threads_keep_every_state_apart(batch2):
    """Four cameras in two pairs, pushed from two threads through one batched engine's shared
    runners: each camera's state equals the same camera pushed alone, in order."""
    engines = MirasolEngines(batch2)
    rng = np.random.default_rng(3)
    shape, mel = engines.video_shape, engines.mel_shape
    chunks = [[(rng.integers(0, 255, shape, dtype=np.uint8), rng.normal(-40, 10, mel).astype(np.float32))
               for _ in range(6)] for _ in range(4)]
    cams = [engines.stream() for _ in range(4)]

    def drive(pair):
        for k in range(6):
            engines.push_many([cams[i] for i in pair], [chunks[i][k] for i in pair])

    from mirasol_edge.runtime.results import RawChunk

    chunks = [[RawChunk(f, m) for f, m in cam] for cam in chunks]
    threads = [threading.Thread(target=drive, args=(pair,)) for pair in ((0, 1), (2, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, cam in enumerate(cams):
        alone = engines.stream()
        for chunk in chunks[i]:
            engines.push_many([alone], [chunk])
        assert cam.chunks_seen == 6
        np.testing.assert_allclose(cam.state()["context"], alone.state()["context"], atol=1e-5)
    engines.close()


def _rtx_here(engines_dir):
    """Skip (saying why) where this GPU is not one the CI-built TensorRT-RTX engines target."""
    pytest.importorskip("tensorrt_rtx")
    from mirasol_edge.runtime.cuda import compute_capability
    from mirasol_edge.runtime.engine_dir import EngineDir

    targets = EngineDir.open(engines_dir).compute_capabilities
    found = compute_capability()
    if targets and found not in targets:
        pytest.skip(f"TensorRT-RTX engines target {', '.join(targets)}; this GPU is {found}")


@pytest.mark.requires_cuda
def test_cuda_graphs_on_and_off_give_the_same_stream(tiny_rtx_engines):
    _rtx_here(tiny_rtx_engines)
    from mirasol_edge.runtime.stream import MirasolStream

    from .test_stream import QUESTION, push_all

    with MirasolStream.open(tiny_rtx_engines) as on, MirasolStream.open(tiny_rtx_engines, cuda_graphs=False) as off:
        for a, b in zip(push_all(on, 10), push_all(off, 10)):
            np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-3)
        assert on.ask(QUESTION).text == off.ask(QUESTION).text
        graphs_on = on.engines.backend.describe()["cuda_graphs"]
        graphs_off = off.engines.backend.describe()["cuda_graphs"]
        strategy = on.engines.backend.trt.CudaGraphStrategy
        # What each execution context was created with (the runtime configs TensorRT-RTX was given):
        strategies_on = {c.cuda_graph_strategy for c in on.engines.backend._configs.values()}
        strategies_off = {c.cuda_graph_strategy for c in off.engines.backend._configs.values()}
    assert strategies_on == {strategy.WHOLE_GRAPH_CAPTURE}
    assert strategies_off and strategy.WHOLE_GRAPH_CAPTURE not in strategies_off
    # Every runner of the one stream ran under TensorRT-RTX's own whole-graph capture, every runner
    # of the other without it: the two streams above really were "on" and "off".
    assert graphs_on and set(graphs_on.values()) == {"TensorRT-RTX captures (runtime cuda_graph_strategy)"}, graphs_on
    assert set(graphs_off) == set(graphs_on) and set(graphs_off.values()) == {"CUDA graphs off"}, graphs_off


@pytest.mark.requires_cuda
def test_state_stays_on_the_device_between_pushes(tiny_rtx_engines, monkeypatch):
    """Counting host <-> device copies: a push uploads its chunk and downloads its outputs, nothing else."""
    _rtx_here(tiny_rtx_engines)
    from mirasol_edge.runtime import cuda
    from mirasol_edge.runtime.stream import MirasolStream

    from .test_stream import push_all

    with MirasolStream.open(tiny_rtx_engines) as stream:
        push_all(stream, 3)
        copies = {"up": 0, "down": 0}
        up, down = cuda.DeviceBuffer.upload, cuda.DeviceBuffer.download
        monkeypatch.setattr(cuda.DeviceBuffer, "upload", lambda *a: (copies.__setitem__("up", copies["up"] + 1), up(*a))[1])
        monkeypatch.setattr(cuda.DeviceBuffer, "download",
                            lambda *a: (copies.__setitem__("down", copies["down"] + 1), down(*a))[1])
        push_all(stream, 5)
        per_push = 2 if "mel" in stream.engines.dir.components["chunk_encoder"].inputs else 1
        assert copies == {"up": 5 * per_push, "down": 5}


@pytest.mark.requires_cuda
def test_onnxruntime_cuda_answers_like_the_cpu(tiny_engines):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (the CPU wheel has no CUDA provider)")
    from mirasol_edge.runtime.stream import MirasolStream

    from .test_stream import QUESTION, push_all

    with MirasolStream.open(tiny_engines, "onnxruntime", "cuda") as gpu, MirasolStream.open(tiny_engines) as cpu:
        for a, b in zip(push_all(gpu, 8), push_all(cpu, 8)):
            np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-4)
        assert gpu.ask(QUESTION).text == cpu.ask(QUESTION).text


@pytest.mark.requires_cuda
def test_the_pytorch_reference_runs_on_cuda(tiny_engines):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA (the project installs the CPU wheel)")
    from mirasol_edge.runtime.stream import MirasolStream

    from .test_stream import QUESTION, push_all

    with MirasolStream.open(tiny_engines, "torch", "cuda") as gpu, MirasolStream.open(tiny_engines) as cpu:
        for a, b in zip(push_all(gpu, 8), push_all(cpu, 8)):
            np.testing.assert_allclose(a.outputs, b.outputs, atol=1e-4)
        assert gpu.ask(QUESTION).text == cpu.ask(QUESTION).text


@pytest.mark.requires_cuda
def test_nvdec_frames_go_device_to_device_into_the_engine(tiny_rtx_engines, tmp_path, monkeypatch):
    """DALI NVDEC's frames stay on the GPU: the same chunks as through the host, and a push
    uploads only the mel from the host."""
    _rtx_here(tiny_rtx_engines)
    from mirasol_edge.runtime import cuda
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
    from mirasol_edge.runtime.decode.device_frames import DeviceFrames
    from mirasol_edge.runtime.stream import MirasolStream
    from tests.media import write_clip

    with MirasolStream.open(tiny_rtx_engines) as host_path, MirasolStream.open(tiny_rtx_engines) as device_path:
        spec = ChunkSpec.from_config(host_path.engines.dir.config)
        clip = write_clip(tmp_path / "c.mp4", seconds=4.0, size=(160, 120), beeps=(1.5,), bframes=False)
        on_host = list(chunks(str(clip), spec, decoder="dali-gpu"))
        on_gpu = list(chunks(str(clip), spec, decoder="dali-gpu", device_frames=True))
        assert len(on_host) == len(on_gpu) and isinstance(on_gpu[0].frames, DeviceFrames)
        for a, b in zip(on_host, on_gpu):
            np.testing.assert_array_equal(a.frames, np.asarray(b.frames))
        uploads = {"n": 0}
        upload = cuda.DeviceBuffer.upload
        monkeypatch.setattr(cuda.DeviceBuffer, "upload", lambda *a: (uploads.__setitem__("n", uploads["n"] + 1),
                                                                     upload(*a))[1])
        results = [(host_path.push(a).outputs, device_path.push(b).outputs) for a, b in zip(on_host, on_gpu)]
        for a, b in results:
            np.testing.assert_allclose(a, b, atol=1e-3)
        # host path: frames + mel per push; device path: the mel only
        assert uploads["n"] == len(results) * 2 + len(results) * 1
