"""Greedy decoding, once for every caller: the stream's ``ask``, the PyTorch model's ``answer``
and calibration's recording of the decode step all run this loop."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def greedy(first_logits, step: Callable[[int], object], eos_id: int, limit: int,
           on_token: Callable[[int], None] | None = None) -> list[int]:
    """Token ids, up to ``limit``, from the prompt's logits: ``step(token)`` feeds a chosen token
    and returns the next logits. ``step`` is not called after the last token (nothing would read it)."""
    tokens: list[int] = []
    logits = first_logits
    for _ in range(limit):
        token = int(np.argmax(np.asarray(logits).reshape(-1)))
        if token == eos_id:
            break
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if len(tokens) == limit:
            break
        logits = step(token)
    return tokens
