"""Real inputs for every parity check: a real encoded clip, decoded and streamed through the
PyTorch reference under ``MirasolStream`` (``reference.record_stream``), and a real question
asked at its end, so each component is checked where a stream will use it.

The clip is the first of the recipe's calibration media when that is a directory, else the
bundled sample (H.264 + AAC, made by PyAV's encoders). A model built part by part is made
whole for the recording (12 GB in fp32 for mirasol3b, below the export's own peak) and
released before the first export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirasol_edge.assets import SAMPLE_CLIP
from mirasol_edge.runtime.decode.types import MEDIA_SUFFIXES

from .recipe import Recipe
from .reference import record_stream
from .source import ModelSource

PARITY_QUESTION = "what colour is the square?"
# The components whose batch is the recipe's, and the inputs of text_score that are the group's state.
BATCHED = ("chunk_encoder", "ar_step", ("text_score", "context"), ("text_score", "pos"))


@dataclass(frozen=True)
class RealInputs:
    per_component: dict[str, dict[str, np.ndarray]]  # absent where the stream gave none
    clip: str
    chunks: int

    def describe(self, component: str) -> str:
        if component not in self.per_component:
            return "random only (the reference answered with no decode step)"
        return f"random; and a real encoded clip ({self.clip}) decoded and streamed {self.chunks} chunks deep"


def parity_clip(recipe: Recipe) -> Path:
    media = Path(recipe.calibration.media)
    if media.is_dir():
        clips = sorted(p for p in media.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES)
        if clips:
            return clips[0]
    return SAMPLE_CLIP


def real_inputs(source: ModelSource, recipe: Recipe) -> RealInputs:
    """Each component's inputs at the clip's last chunk (the text: the question's first steps),
    tiled to the recipe's batch."""
    clip = parity_clip(recipe)
    try:
        records = record_stream(source.whole(), clip, [PARITY_QUESTION], recipe.text.max_question_tokens,
                                recipe.text.max_answer_tokens)
    finally:
        source.release_all()
    chosen = {"chunk_encoder": records["chunk_encoder"][-1:], "ar_step": records["ar_step"][-1:],
              "text_prefill": records["text_prefill"][:1], "text_decode": records["text_decode"][:1],
              "text_score": records["text_score"][-1:]}
    batch = recipe.build.batch
    per_component = {name: {k: np.repeat(v, batch, axis=0) if (name, k) in BATCHED or name in BATCHED else v
                            for k, v in feeds[0].items()}
                     for name, feeds in chosen.items() if feeds}
    return RealInputs(per_component, clip.name, len(records["ar_step"]) - 1)
