"""mirasol-edge: deploy the Mirasol3B audio-video-text model to robots, cameras and GPU servers.

What robot and camera software embeds (no torch needed)::

    from mirasol_edge import MirasolStream, Stream, chunks   # serve.RemoteStream is a Stream too

Packages, with dependencies pointing one way: ``runtime`` (decode, backends, stream; no torch)
<- ``toolkit`` (model, export, build; torch) <- ``calib`` (calibration, quantization); ``demo``,
``bench`` and ``cli`` sit on top.
"""

from __future__ import annotations

from importlib import import_module

# name -> module; imported on first use, so `import mirasol_edge` stays cheap.
_EXPORTS = {
    "MirasolStream": "mirasol_edge.runtime.stream",
    "MirasolEngines": "mirasol_edge.runtime.engines",
    "Stream": "mirasol_edge.runtime.stream_protocol",
    "ChunkResult": "mirasol_edge.runtime.stream",
    "Answer": "mirasol_edge.runtime.stream",
    "chunks": "mirasol_edge.runtime.decode.chunks",
    "Chunk": "mirasol_edge.runtime.decode.chunks",
    "ChunkSpec": "mirasol_edge.runtime.decode.chunks",
    "DecodeError": "mirasol_edge.runtime.decode.chunks",
    "LiveSource": "mirasol_edge.runtime.decode.live",
    "decode_ahead": "mirasol_edge.runtime.decode.live",
    "MirasolError": "mirasol_edge.errors",
    "SnapshotError": "mirasol_edge.runtime.snapshot",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mirasol_edge' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
