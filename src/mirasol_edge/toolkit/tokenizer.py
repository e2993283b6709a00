"""The tokenizers live in the runtime (a device needs them without torch); re-exported here."""

from mirasol_edge.runtime.tokenizer import ByteTokenizer, Tokenizer, prompt_ids

__all__ = ["ByteTokenizer", "Tokenizer", "prompt_ids"]
