"""Backend options are typed and checked when the backend is created, and reach the backend."""

import pytest

from mirasol_edge.runtime.backends import BackendError, create_backend, open_engines
from mirasol_edge.runtime.backends import trt_backend as trt_module
from mirasol_edge.runtime.stream import MirasolStream


def test_an_option_the_backend_does_not_take_is_named(tiny_engines):
    engines = open_engines(tiny_engines, "onnxruntime")
    with pytest.raises(BackendError, match=r"backend 'onnxruntime' has no option 'cuda_graphs'; it takes threads"):
        create_backend(engines, "onnxruntime", cuda_graphs=False)
    with pytest.raises(BackendError, match=r"'onnxruntime' has no option 'thread'"):
        MirasolStream.open(tiny_engines, thread=2)


def test_an_option_of_the_wrong_kind_is_named(tiny_engines, tiny_rtx_engines):
    with pytest.raises(BackendError, match=r"option 'threads' must be a whole number >= 0, not '2'"):
        create_backend(open_engines(tiny_engines, "onnxruntime"), "onnxruntime", threads="2")
    with pytest.raises(BackendError, match=r"'tensorrt-rtx': option 'cuda_graphs' must be True or False, not 0"):
        create_backend(open_engines(tiny_rtx_engines), "auto", cuda_graphs=0)


def test_options_reach_the_tensorrt_backend(tiny_rtx_engines, tmp_path, monkeypatch):
    received = {}

    class Recorder:  # stands in for TrtBackend at the seam: no GPU here to create the real one
        def __init__(self, engines, device, **options):
            received.update(options, device=device)

    monkeypatch.setattr(trt_module, "TrtBackend", Recorder)
    cache = tmp_path / "rtx.cache"
    create_backend(open_engines(tiny_rtx_engines), "auto", "cuda", cuda_graphs=False, runtime_cache=cache)
    assert received == {"cuda_graphs": False, "runtime_cache": cache, "device": "cuda"}
    received.clear()
    create_backend(open_engines(tiny_rtx_engines), "tensorrt-rtx")
    assert received == {"cuda_graphs": True, "runtime_cache": None, "device": "auto"}  # the defaults, stated


def test_onnxruntime_takes_its_threads(tiny_engines):
    backend = create_backend(open_engines(tiny_engines, "onnxruntime"), "onnxruntime", threads=1)
    try:
        session = next(iter(backend.sessions.values()))
        assert session.get_session_options().intra_op_num_threads == 1
    finally:
        backend.close()


def test_the_pytorch_reference_is_found_without_an_entry_point(tiny_engines, monkeypatch):
    """A checkout run from PYTHONPATH (the GPU machine) has no dist-info, so no entry points."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    backend = create_backend(open_engines(tiny_engines, "torch"), "torch", "cpu")
    assert type(backend).__name__ == "TorchBackend" and backend.device == "cpu"
    with pytest.raises(BackendError, match=r"option 'precision' must be 'fp32' or 'fp16', not 'int8'"):
        create_backend(open_engines(tiny_engines, "torch"), "torch", "cpu", precision="int8")


def test_a_thousand_streams_opened_and_closed_leave_the_backend_holding_none(tiny_engines):
    from mirasol_edge.runtime.stream import MirasolEngines

    engines = MirasolEngines(tiny_engines, "onnxruntime")
    try:
        held = [engines.stream() for _ in range(3)]
        assert len(engines.backend.open_runners) == 3 * 4  # each stream: encoder, AR step, prefill, decode
        for stream in held:
            stream.close()
        for _ in range(1000):
            engines.stream().close()
        assert len(engines.backend.open_runners) == 0
    finally:
        engines.close()
