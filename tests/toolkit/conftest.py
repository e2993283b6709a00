import pytest
import torch

from mirasol_edge.toolkit import Mirasol, MirasolConfig


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny model with random weights, saved as a checkpoint (one for the toolkit tests)."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    Mirasol(MirasolConfig.preset("tiny")).save(path)
    return path
