import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from mirasol_edge.toolkit import CheckpointError, Mirasol, MirasolConfig

from .test_model import random_clip, small_config


def test_save_load_round_trip(tmp_path):
    cfg = small_config()
    torch.manual_seed(3)
    model = Mirasol(cfg).eval()
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = Mirasol.load(path)
    assert loaded.cfg == cfg
    video, mel = random_clip(cfg, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_offline(video, mel), model.encode_offline(video, mel), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"


class _Trap:
    """Unpickling this creates ``marker``: a pickle that runs code, as a hostile checkpoint would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_torch_save_file_is_refused_without_unpickling(tmp_path):
    model = Mirasol(small_config())
    marker = tmp_path / "unpickled"
    path = tmp_path / "weights.pt"
    torch.save({**model.state_dict(), "trap": _Trap(marker)}, path)
    with pytest.raises(CheckpointError, match="pickle.*only loads safetensors"):
        Mirasol.load(path)
    assert not marker.exists(), "the checkpoint was unpickled"
    torch.load(path, weights_only=False)  # the trap is armed: unpickling it does run it
    assert marker.exists()


def test_raw_pickle_is_refused_whatever_its_name(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "innocent.safetensors"
    path.write_bytes(pickle.dumps({"a": 1, "trap": _Trap(marker)}))
    with pytest.raises(CheckpointError, match="pickle"):
        Mirasol.load(path)
    assert not marker.exists(), "the checkpoint was unpickled"
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_checkpoint_for_another_config_names_the_tensor(tmp_path):
    cfg = small_config()
    model = Mirasol(cfg)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["ar.input.weight"] = torch.zeros(7, 7)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata={"format": "mirasol-edge/1", "config": cfg.to_json()})
    with pytest.raises(CheckpointError, match=r"'ar.input.weight' has shape \[7, 7\]"):
        Mirasol.load(path)


def test_missing_tensor_is_named(tmp_path):
    cfg = small_config()
    tensors = {k: v.contiguous() for k, v in Mirasol(cfg).state_dict().items() if k != "text.null"}
    path = tmp_path / "short.safetensors"
    save_file(tensors, path, metadata={"format": "mirasol-edge/1", "config": cfg.to_json()})
    with pytest.raises(CheckpointError, match="'text.null' is missing"):
        Mirasol.load(path)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Mirasol.load(tmp_path / "nope.safetensors")
    truncated = tmp_path / "cut.safetensors"
    Mirasol(small_config()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        Mirasol.load(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="no Mirasol config"):
        Mirasol.load(foreign)


def test_preset_checkpoint_stores_its_config(tmp_path):
    cfg = MirasolConfig.preset("tiny")
    path = tmp_path / "tiny.safetensors"
    Mirasol(cfg).save(path)
    from mirasol_edge.toolkit.weights import read_config

    assert read_config(path) == cfg
