"""Parameter counts per component, computed on the meta device (no memory)."""

from __future__ import annotations

import torch

from mirasol_edge.runtime.config import MirasolConfig

from .model import Mirasol


def on_meta(factory, *args):
    """``factory(*args)`` with every parameter on PyTorch's meta device: shapes, no memory."""
    with torch.device("meta"):
        return factory(*args).eval()


def meta_model(cfg: MirasolConfig) -> Mirasol:
    return on_meta(Mirasol, cfg)


def parameter_counts(cfg: MirasolConfig) -> dict[str, int]:
    """{component: parameters} plus ``total``; components as they become engines."""
    model = meta_model(cfg)
    enc = model.chunk_encoder
    parts = {
        "video_encoder": enc.video,
        "audio_encoder": enc.audio,
        "combiner": enc.combiner,
        "projections": torch.nn.ModuleList([m for m in (enc.video_proj, enc.audio_proj) if m is not None]),
        "autoregressive": model.ar,
        "text_decoder": model.text,
    }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items() if part is not None}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def print_table(names: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from mirasol_edge.runtime.config import PRESETS

    names = names or list(PRESETS)
    configs = [MirasolConfig.preset(n) for n in names]
    counts = [parameter_counts(c) for c in configs]
    table = Table(title="Mirasol parameters per component (millions)")
    table.add_column("component")
    for name in names:
        table.add_column(name, justify="right")
    for part in counts[0]:
        table.add_row(part, *(f"{c.get(part, 0) / 1e6:,.2f}" for c in counts))
    geometry = Table(title="Chunk geometry")
    for col in ("preset", "fps", "frames/chunk", "H x W", "chunks/128 frames", "samples/chunk", "mel T x n", "window W",
                "latents m"):
        geometry.add_column(col, justify="right")
    for c in configs:
        geometry.add_row(c.name, f"{c.fps:g}", str(c.frames_per_chunk), f"{c.image_size}x{c.image_size}",
                         f"{c.chunks_per_128_frames:g}", str(c.audio_samples_per_chunk),
                         f"{c.mel_frames_per_chunk}x{c.n_mels}", str(c.window_chunks), str(c.latents_per_chunk))
    console = Console()
    console.print(table)
    console.print(geometry)


if __name__ == "__main__":
    print_table()
