"""The tokenizers live in the runtime (a device needs them without torch); re-exported here."""

from mirasol_edge.runtime.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer, prompt_ids

__all__ = ["ByteTokenizer", "SentencePieceTokenizer", "Tokenizer", "prompt_ids"]
