"""Fixtures shared by every test package, in one place: checkpoints and engines built once per session."""

import pytest
import torch

from mirasol_edge.runtime.cuda import gpu_problem
from mirasol_edge.toolkit import Mirasol, MirasolConfig
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe


def pytest_collection_modifyitems(config, items):
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
