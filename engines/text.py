"""Tokenization for the text branch, shared by the trainer and the runtime.

The `tokenizers` library reads the tokenizer.json that every bundle carries, so
serving needs neither transformers nor a hub.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TextTokenizer:
    """keep_end: truncate from the left, so a prompt's end (the current utterance and
    its mask token) survives and the oldest context goes; special tokens are added
    after truncation either way."""

    def __init__(self, tokenizer_json: str | Path, max_tokens: int, keep_end: bool = False):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.enable_truncation(max_length=max_tokens, direction="left" if keep_end else "right")
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")

    @classmethod
    def for_preprocessing(cls, tokenizer_json: str | Path, pre) -> "TextTokenizer":
        """The tokenizer as a bundle's preprocessing wants it (prompts keep their end)."""
        return cls(tokenizer_json, pre.text_max_tokens, keep_end=pre.text_pooling == "mask")

    def token_id(self, token: str) -> int:
        found = self._tok.token_to_id(token)
        if found is None:
            raise ValueError(f"the tokenizer has no token {token!r}")
        return found

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids and attention_mask, int64, padded to the longest text."""
        encodings = self._tok.encode_batch([t if t.strip() else "." for t in texts])
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
