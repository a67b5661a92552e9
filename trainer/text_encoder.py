"""The text branch's encoder in PyTorch: a Hugging Face encoder and its pooling.

The trainer embeds text with it and exports it to ONNX for the bundle; the runtime
runs the exported graph.  Same weights, same pooling, same tokens.  Pooling is
Preprocessing.text_pooling: "mean" (of the token states; a sentence encoder) or
"mask" (the state of the prompt's mask token, TelME 3.2.2).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.offline import resolve_text_encoder
from engines.text import TextTokenizer

# Part of the key of cached embeddings (trainer.fit.embed_texts): raised when the same
# encoder and texts give other embeddings (2: mask pooling no longer L2-normalised).
EMBEDDING_VERSION = 2


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask -> pooled token states: the mean, L2-normalised (a sentence
    embedding), or the mask token's state as it is (what a `trainer teach` classifier reads)."""

    def __init__(self, name_or_path: str, pooling: str = "mean", mask_token: str = ""):
        super().__init__()
        from transformers import AutoModel

        self.path = Path(resolve_text_encoder(name_or_path))
        self.encoder = AutoModel.from_pretrained(str(self.path))
        self.encoder.eval()
        self.pooling = pooling
        self.mask_id = -1
        if pooling == "mask":
            # An empty mask_token: the encoder's own (trainer fit then records it).
            self.mask_id = TextTokenizer(self.tokenizer_json, 8).token_id(mask_token or self.special_tokens()[1])

    @classmethod
    def for_preprocessing(cls, name_or_path: str, pre) -> "SentenceEncoder":
        return cls(name_or_path, pre.text_pooling, pre.text_mask)

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def tokenizer_json(self) -> Path:
        return self.path / "tokenizer.json"

    def special_tokens(self) -> tuple[str, str]:
        """(separator, mask) of this encoder's tokenizer, for the dialogue prompt."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.path))
        if tok.mask_token is None or tok.sep_token is None:
            raise ValueError(f"text encoder {self.path}: its tokenizer has no mask or separator token, "
                             "so it cannot read the dialogue prompt (use text_pooling = \"mean\")")
        return tok.sep_token, tok.mask_token

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.to(hidden.dtype)
        if self.pooling == "mask":
            # The mask token's state; a row that lost it (cannot happen with left
            # truncation, but a graph must not divide by zero) falls back to the mean.
            is_mask = (input_ids == self.mask_id).to(hidden.dtype)
            weights = torch.where(is_mask.sum(1, keepdim=True) > 0, is_mask, weights)
        weights = weights.unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.pooling == "mask":  # raw: the teacher's head (StudentConfig.text_classes) reads it so
            return pooled
        return torch.nn.functional.normalize(pooled, dim=-1)
