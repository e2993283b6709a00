"""Tokenizers: bytes for the small presets, SentencePiece for the large one.

A prompt is ``[BOS] question [SEP]``; the decoder then writes the answer and ``EOS``.
"""

from __future__ import annotations

from pathlib import Path
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


class SentencePieceTokenizer:
    """Wraps a SentencePiece model file; its own BOS/EOS/PAD ids are used, SEP is appended after them."""

    def __init__(self, model_file: str | Path) -> None:
        try:
            import sentencepiece
        except ImportError as exc:
            raise ImportError("SentencePiece tokenizers need `pip install sentencepiece`") from exc
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else size
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else size + 1
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else size + 2
        self.sep_id = size + 3
        self.vocab_size = size + 4

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i < self.sp.get_piece_size()])


def prompt_ids(tokenizer: Tokenizer, question: str, max_question_tokens: int) -> list[int]:
    """``[BOS] question [SEP]``, the question cut to ``max_question_tokens``."""
    return [tokenizer.bos_id, *tokenizer.encode(question)[:max_question_tokens], tokenizer.sep_id]
