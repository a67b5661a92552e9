"""Tokenization for the text branch, shared by the trainer and the runtime.

The `tokenizers` library reads the tokenizer.json that every bundle carries, so
serving needs neither transformers nor a hub.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TextTokenizer:
    def __init__(self, tokenizer_json: str | Path, max_tokens: int):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.enable_truncation(max_length=max_tokens)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids and attention_mask, int64, padded to the longest text."""
        encodings = self._tok.encode_batch([t if t.strip() else "." for t in texts])
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
