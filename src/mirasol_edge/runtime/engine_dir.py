"""An opened engine directory: the manifest, checked, and what the runtime needs from it.

Opening checks what can be checked without a backend: the format, that the engines were
built (a Jetson bundle is not), and the sha256 of every file the runtime will read. The
backends add their own checks (library version, GPU compute capability).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .components import COMPONENTS, contracts
from .config import MirasolConfig
from .files import sha256_file
from .manifest import MANIFEST, Component, Manifest, ManifestError, load_manifest, model_identity, verify_file
from .tokenizer import ByteTokenizer, Tokenizer


def verify_onnx(path: Path, name: str, entry: Component) -> Path:
    """A component's graph and, for one over 2 GB, its external data, against their sha256."""
    if entry.onnx_data:
        verify_file(path, entry.onnx_data.file, entry.onnx_data.sha256, f"{name} ONNX external data")
    return verify_file(path, entry.onnx, entry.onnx_sha256, f"{name} ONNX")


def _check_contract(manifest: Manifest, where: Path) -> None:
    """The engines take and give the tensors this runtime's component contract names."""
    try:
        cfg = MirasolConfig.from_dict(manifest.model["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: model.config is not a Mirasol config ({exc})") from None
    text = manifest.recipe.get("text", {})
    for name, contract in contracts(cfg, manifest.batch, text.get("max_question_tokens"),
                                    text.get("max_answer_tokens")).items():
        entry = manifest.components[name]
        for kind, have, want in (("inputs", entry.inputs, contract.input_names),
                                 ("outputs", entry.outputs, contract.output_names)):
            found = list(have)
            if sorted(found) != sorted(want):
                missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
                raise ManifestError(f"{where}: components.{name}.{kind} differ from this runtime's contract "
                                    f"(missing {missing}, unexpected {extra}); rebuild with this version")


@dataclass(frozen=True)
class EngineDir:
    path: Path
    manifest: Manifest
    manifest_sha256: str  # identifies these engines: snapshots carry it
    engine_files: dict[str, Path | None]  # each component's engine, its sha256 checked (None: ONNX only)

    @property
    def components(self) -> dict[str, Component]:
        return self.manifest.components

    def engine_file(self, name: str) -> Path | None:
        return self.engine_files[name]

    def onnx_file(self, name: str) -> Path:
        return self.path / self.manifest.components[name].onnx

    @property
    def backend(self) -> str:
        return self.manifest.backend.name

    @property
    def backend_version(self) -> str | None:
        return self.manifest.backend.version

    @property
    def config(self) -> dict:
        return self.manifest.model["config"]

    @property
    def model_identity(self) -> str:
        """The model this build runs (``manifest.model_identity``), worked out from what the manifest
        records (the build writes it too, for people): a recorded copy could disagree with its inputs."""
        return model_identity(self.manifest.model, self.manifest.state.tensors)

    @property
    def batch(self) -> int:
        return self.manifest.batch

    @property
    def max_question_tokens(self) -> int:
        return int(self.manifest.recipe["text"]["max_question_tokens"])

    @property
    def max_answer_tokens(self) -> int:
        return int(self.manifest.recipe["text"]["max_answer_tokens"])

    @property
    def compute_capabilities(self) -> list[str]:
        return list(self.manifest.target.compute_capabilities)

    def tokenizer(self) -> Tokenizer:
        name = self.manifest.model.get("tokenizer", "ByteTokenizer")
        if name != "ByteTokenizer":
            raise ManifestError(f"{self.path / MANIFEST}: tokenizer {name!r} is not supported by the runtime yet")
        return ByteTokenizer()

    def initial_state(self) -> dict[str, np.ndarray]:
        """The state of a fresh stream (batch 1), checked against its sha256."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        entry = self.manifest.state
        path = verify_file(self.path, entry.file, entry.sha256, "initial state")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ManifestError(f"{path}: the initial state is not a safetensors file ({exc})") from None

    @classmethod
    def open(cls, path: str | Path, use_onnx: bool = False, component_files: bool = True) -> EngineDir:
        """Load and verify; ``use_onnx`` checks the ONNX graphs instead of the engines. Without
        ``component_files`` only the manifest and the initial state are needed: a Triton stream
        model runs the components as other models, whose files live in their own folders."""
        path = Path(path)
        manifest = load_manifest(path)
        where = path / MANIFEST
        if not use_onnx and not manifest.backend.engines_built:
            raise ManifestError(
                f"{path}: a bundle without engines; compile it on the target with `mirasol-build engine {path}`"
            )
        missing = [c for c in COMPONENTS if c not in manifest.components]
        if missing:
            raise ManifestError(f"{where}: components {missing} are missing (built by an older version? rebuild: "
                                "mirasol-build reuses the components that did not change)")
        _check_contract(manifest, where)
        engine_files = {}
        for name in COMPONENTS:
            entry = manifest.components[name]
            engine = None
            if not component_files:
                pass
            elif use_onnx:
                verify_onnx(path, name, entry)
            else:
                if entry.engine_data:
                    verify_file(path, entry.engine_data.file, entry.engine_data.sha256, f"{name} engine external data")
                if not entry.engine or not entry.engine_sha256:
                    raise ManifestError(f"{where}: components.{name} has no engine")
                engine = verify_file(path, entry.engine, entry.engine_sha256, f"{name} engine")
            engine_files[name] = engine
        return cls(path, manifest, sha256_file(where), engine_files)
