"""What ships inside the package: the bundled trained model, its card, and a sample clip with
its questions. Found beside this file, so an installed wheel has them wherever it lives."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLED_CHECKPOINT = HERE / "tiny-synthetic.safetensors"  # the tiny preset, trained on the synthetic task
BUNDLED_CARD = HERE / "tiny-synthetic.json"  # how it was trained, and its held-out accuracy
SAMPLE_CLIP = HERE / "sample.mp4"  # H.264 + AAC, 6 s, made by mirasol_edge.demo.synthetic
SAMPLE_QUESTIONS = HERE / "sample.json"  # its six questions and their answers
