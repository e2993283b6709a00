"""The bundled demo: a synthetic audio-video QA task with exact answers, and its evaluation (no torch needed)."""
