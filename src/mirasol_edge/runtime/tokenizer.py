"""Tokenizers. The presets use bytes (256 ids and four specials); a learned vocabulary for
mirasol3b is a later step: the build records the tokenizer's name and the runtime refuses one it lacks.

A prompt is ``[BOS] question [SEP]``; the decoder then writes the answer and ``EOS``.
"""

from __future__ import annotations

from typing import Protocol


class Tokenizer(Protocol):
    bos_id: int
    sep_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0..255, then BOS, SEP, EOS, PAD. Any string encodes, so any question gets an answer."""

    bos_id, sep_id, eos_id, pad_id = 256, 257, 258, 259
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def prompt_ids(tokenizer: Tokenizer, question: str, max_question_tokens: int) -> list[int]:
    """``[BOS] question [SEP]``, the question cut to ``max_question_tokens``."""
    return [tokenizer.bos_id, *tokenizer.encode(question)[:max_question_tokens], tokenizer.sep_id]
