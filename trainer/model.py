"""The training loss of the student; the architecture is in `engines.student`."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """BCE on the fusion output and on each peer that was present."""
    fused = F.binary_cross_entropy_with_logits(logits[:, 0], targets)
    per_peer = F.binary_cross_entropy_with_logits(
        logits[:, 1:], targets[:, None, :].expand_as(logits[:, 1:]), reduction="none"
    ).mean(-1)
    peers = (per_peer * present).sum() / present.sum().clamp(min=1.0)
    return fused + peers
