"""Fixtures shared by every test package, in one place: checkpoints and engines built once per session."""

import pytest
import torch

from mirasol_edge.runtime.cuda import gpu_problem
from mirasol_edge.toolkit import Mirasol, MirasolConfig
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe


def pytest_collection_modifyitems(config, items):
    # GStreamer's plugins, once loaded, crashed later native code in the same process (TensorRT-RTX's
    # ONNX parser, matplotlib's FreeType): its tests go last.
    items.sort(key=lambda item: "gstreamer" in item.keywords)
    # The runtime's own probe, not torch's: the project installs CPU torch, which sees no GPU even on one.
    problem = gpu_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU (requires_cuda): {problem}")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


def lively_model(seed: int = 1) -> Mirasol:
    """A tiny model whose answers depend on what it has seen.

    Default initialization makes the untrained text decoder say the same thing whatever the
    state; unit-variance weights make its answers change from chunk to chunk, so a test that
    compares answers can tell one state from another.
    """
    torch.manual_seed(seed)
    model = Mirasol(MirasolConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny model with its default random initialization, saved as a checkpoint."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    Mirasol(MirasolConfig.preset("tiny")).save(path)
    return path


@pytest.fixture(scope="session")
def lively_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-lively.safetensors"
    lively_model().save(path)
    return path


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory, lively_checkpoint):
    """A real cpu build (ONNX Runtime) of the lively tiny checkpoint."""
    out = tmp_path_factory.mktemp("engines") / "tiny-cpu"
    build(load_recipe("cpu"), out, checkpoint=lively_checkpoint)
    return out


@pytest.fixture(scope="session")
def tiny_rtx_engines(tmp_path_factory, lively_checkpoint):
    """Real TensorRT-RTX engines (built ahead of time on this CPU), fp16 in the graph."""
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path_factory.mktemp("engines") / "tiny-rtx"
    build(load_recipe("rtx"), out, checkpoint=lively_checkpoint)
    return out


def triton_python():
    """The Triton server's environment (make triton-venv); CI sets MIRASOL_REQUIRE_TRITON so its
    absence fails the tests that need it instead of skipping them."""
    import os

    from mirasol_edge.serve.local_server import server_python

    python = server_python()
    if python is None:
        reason = "no Triton server environment: make triton-venv (or set MIRASOL_TRITON_PYTHON)"
        if os.environ.get("MIRASOL_REQUIRE_TRITON"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


@pytest.fixture(scope="session")
def twin_repository(tmp_path_factory, tiny_engines):
    """The CPU twin of the tiny engines' Triton repository, with a short idle timeout."""
    from mirasol_edge.serve.repository import ServeOptions, write_repository

    out = tmp_path_factory.mktemp("triton") / "repo"
    return write_repository(tiny_engines, out, ServeOptions(idle_seconds=3.0, max_streams=64), twin=True)


@pytest.fixture(scope="session")
def triton_server(twin_repository):
    """A real tritonserver serving the twin on free localhost ports, stopped at the end."""
    from mirasol_edge.serve.local_server import LocalTriton

    with LocalTriton(twin_repository, triton_python()) as server:
        yield server
