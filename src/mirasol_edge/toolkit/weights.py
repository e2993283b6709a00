"""Checkpoints: safetensors with the config in the file's metadata. Never unpickles."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.files import atomic_path

FORMAT = "mirasol-edge/1"


class CheckpointError(MirasolError, ValueError):
    """A checkpoint file is missing, unsafe, corrupt, or does not match its config."""

    exit_code = 3


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save zips (PK..) or writes a raw pickle (protocol byte 0x80).
    return head.startswith(b"PK") or head[:1] == b"\x80"


def check_safetensors_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(9)
    if _looks_like_pickle(head) or path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise CheckpointError(
            f"{path}: looks like a pickle/torch.save file; mirasol-edge only loads safetensors "
            "(unpickling a file you were given can run arbitrary code)"
        )
    if len(head) < 9:
        raise CheckpointError(f"{path}: too short to be a safetensors file ({len(head)} bytes)")
    header_len = struct.unpack("<Q", head[:8])[0]
    if head[8:9] != b"{" or header_len > path.stat().st_size:
        raise CheckpointError(f"{path}: not a safetensors file (bad header)")


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Write atomically: a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.cfg.to_json()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_config(path: str | Path) -> MirasolConfig:
    path = Path(path)
    check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path}: no Mirasol config in its metadata (format {metadata.get('format')!r})")
    try:
        return MirasolConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad config in metadata: {exc}") from None


def check_checkpoint_tensors(path: Path, model: torch.nn.Module) -> None:
    """Names and shapes in the file's header against ``model`` (real or on meta), without reading
    the data; names the first tensor that is missing, extra or mis-shaped."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r} ({len(extra)} extra in all)")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(shapes[name])}, the config needs {list(shape)}")


def load_state_dict_checked(model: torch.nn.Module, path: Path) -> None:
    """Load tensors into ``model`` once their names and shapes are checked."""
    check_checkpoint_tensors(path, model)
    try:
        with safe_open(str(path), framework="pt") as f:
            loaded = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    model.load_state_dict(loaded)
