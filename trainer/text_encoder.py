"""The text branch's sentence encoder in PyTorch: a Hugging Face encoder, mean-pooled.

The trainer embeds transcripts with it and exports it to ONNX for the bundle;
the runtime runs the exported graph.  Same weights, same pooling, same tokens.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask -> L2-normalised mean of the token embeddings."""

    def __init__(self, name_or_path: str):
        super().__init__()
        from transformers import AutoModel

        from engines.offline import resolve_text_encoder

        self.path = Path(resolve_text_encoder(name_or_path))
        self.encoder = AutoModel.from_pretrained(str(self.path))
        self.encoder.eval()

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def tokenizer_json(self) -> Path:
        return self.path / "tokenizer.json"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)
