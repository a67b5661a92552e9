"""The student's architecture: text, audio and video peer branches and a fusion branch.

Each peer is a small transformer with its own aggregation token and its own
multi-label head (SeMuL-PCD's peer networks).  The fusion branch is a fusion
token that attends over the tokens of every present peer (cross-network
attention), plus TelME's attention-based modality shifting: the text token,
shifted by a displacement vector made from the audio and video tokens, is added
to the fusion token, so the fusion head always has the text's own view and the
non-verbal peers move it rather than replace it.  Presence masks let any
modality be missing, per sample.

Attention is written out (no nn.MultiheadAttention fast path) so that the graph
exports to ONNX plainly, and masks are per sample: attention never mixes the
samples of a batch.

It lives in `engines` (not the trainer) because the PyTorch backend rebuilds the
model from a bundle's weights; only that backend and the trainer import it, so
the runtime still runs without torch (engines/__init__ does not import this).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from engines.heads import HEADS
from engines.preprocess import Preprocessing

# Inputs of Student.forward and of the exported graph, in order.
INPUTS = ("text_emb", "mel", "audio_mask", "video", "video_mask", "present")
NEG = -1e4  # additive mask value; -inf would turn a fully masked row into NaN


@dataclass
class StudentConfig:
    n_labels: int
    text_dim: int = 384  # size of the text encoder's sentence embedding
    dim: int = 128
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    embed_dim: int = 64  # joint space of the NCE loss (training only; not in the exported graph)
    # Feature size of each teacher (name -> dims) for feature KD: one training-only
    # projection per teacher and head; empty = no KD projections.
    kd_dims: dict[str, int] = field(default_factory=dict)
    shift_threshold: float = 0.1  # TelME's theta (eq. 19): the shift is at most this share of |text|

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block with a key mask."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attend(self.norm1(x), key_mask))
        return x + self.drop(self.mlp(self.norm2(x)))

    def attend(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores + (1.0 - key_mask)[:, None, None, :] * NEG
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Peer(nn.Module):
    """Embedded tokens -> transformer -> aggregation token -> multi-label logits."""

    def __init__(self, cfg: StudentConfig, in_dim: int, n_tokens: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, cfg.dim) * 0.02)
        self.agg = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.n_labels)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        b = tokens.shape[0]
        x = torch.cat([self.agg.expand(b, -1, -1), self.embed(tokens) + self.pos], dim=1)
        key_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.norm(x)
        return x, key_mask, self.head(x[:, 0])


class ModalityShift(nn.Module):
    """TelME 3.2.4: Z = F_T + lambda * H.

    The present non-verbal tokens attend to each other (multi-head self-attention) and
    are averaged into F_att; a gate g = ReLU(W1 [F_T, F_att] + b1) picks what matters
    given the text; H = g * (W2 F_att + b2); lambda = min(theta * |F_T| / |H|, 1).
    Without audio and video H is 0 and Z is the text token itself.
    """

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.attend = Block(cfg.dim, cfg.heads, cfg.dropout)
        self.gate = nn.Linear(2 * cfg.dim, cfg.dim)
        self.displace = nn.Linear(cfg.dim, cfg.dim)
        self.theta = cfg.shift_threshold

    def forward(self, text: torch.Tensor, nonverbal: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """text (B, D); nonverbal (B, 2, D) audio and video tokens; present (B, 2)."""
        attended = self.attend(nonverbal, present)
        count = present.sum(1, keepdim=True)
        f_att = (attended * present[:, :, None]).sum(1) / count.clamp(min=1.0)
        h = torch.relu(self.gate(torch.cat([text, f_att], dim=-1))) * self.displace(f_att)
        h = h * (count > 0).to(h.dtype)
        scale = torch.clamp(self.theta * text.norm(dim=-1, keepdim=True) / (h.norm(dim=-1, keepdim=True) + 1e-6),
                            max=1.0)
        return text + scale * h


class Student(nn.Module):
    def __init__(self, cfg: StudentConfig, pre: Preprocessing):
        super().__init__()
        self.cfg, self.pre = cfg, pre
        t, h, w = pre.tubelet
        self.text = Peer(cfg, cfg.text_dim, 1)
        self.audio = Peer(cfg, pre.n_mels * pre.audio_patch, pre.audio_tokens)
        self.video = Peer(cfg, t * h * w, pre.video_tokens)
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.fusion = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.fusion_norm = nn.LayerNorm(cfg.dim)
        self.shift = ModalityShift(cfg)
        self.fusion_head = nn.Linear(cfg.dim, cfg.n_labels)
        # Training-only heads on each head's aggregation/fusion token: g_{m->c} into the
        # joint space of NCE, and projections to a teacher's feature size for feature KD.
        # forward() (and so the exported graph) never uses them.
        self.joint = nn.ModuleDict({h: nn.Linear(cfg.dim, cfg.embed_dim) for h in HEADS})
        self.kd = nn.ModuleDict(
            {f"{t}_{h}": nn.Linear(cfg.dim, d) for t, d in cfg.kd_dims.items() for h in HEADS}
        )

    def audio_tokens(self, mel: torch.Tensor) -> torch.Tensor:
        # (B, n_mels, frames) -> (B, tokens, n_mels * patch): one token per 80 ms
        b, m, f = mel.shape
        p = self.pre.audio_patch
        return mel.reshape(b, m, f // p, p).permute(0, 2, 1, 3).reshape(b, f // p, m * p)

    def video_tokens(self, video: torch.Tensor, frame_mask: torch.Tensor):
        # (B, frames, S, S) -> tubelets of t x h x w, SeMuL-PCD style
        b, n, s, _ = video.shape
        t, h, w = self.pre.tubelet
        x = video.reshape(b, n // t, t, s // h, h, s // w, w).permute(0, 1, 3, 5, 2, 4, 6)
        tokens = x.reshape(b, (n // t) * (s // h) * (s // w), t * h * w)
        # a tubelet counts as present when any of its frames had a face
        present = frame_mask.reshape(b, n // t, t).amax(-1)
        return tokens, present.repeat_interleave((s // h) * (s // w), dim=1)

    def encode(self, text_emb, mel, audio_mask, video, video_mask, present):
        """(logits (B, 4, L), tokens {head: (B, dim)}): the fusion token and each peer's
        aggregation token, after their final norms."""
        tokens_v, mask_v = self.video_tokens(video, video_mask)
        x_t, k_t, logit_t = self.text(text_emb[:, None, :], present[:, 0:1])
        x_a, k_a, logit_a = self.audio(self.audio_tokens(mel), audio_mask)
        x_v, k_v, logit_v = self.video(tokens_v, mask_v)
        # A peer that is absent contributes no keys to the fusion token.
        keys = torch.cat([x_t, x_a, x_v], dim=1)
        key_mask = torch.cat(
            [k_t * present[:, 0:1], k_a * present[:, 1:2], k_v * present[:, 2:3]], dim=1
        )
        b = keys.shape[0]
        x = torch.cat([self.fusion_token.expand(b, -1, -1), keys], dim=1)
        key_mask = torch.cat([torch.ones_like(key_mask[:, :1]), key_mask], dim=1)
        for block in self.fusion:
            x = block(x, key_mask)
        fused = self.fusion_norm(x[:, 0])
        shifted = self.shift(x_t[:, 0], torch.stack([x_a[:, 0], x_v[:, 0]], dim=1), present[:, 1:3])
        fused = fused + present[:, 0:1] * shifted  # no text: the fusion token alone
        logit_f = self.fusion_head(fused)
        tokens = {"fusion": fused, "text": x_t[:, 0], "audio": x_a[:, 0], "video": x_v[:, 0]}
        return torch.stack([logit_f, logit_t, logit_a, logit_v], dim=1), tokens

    def forward(self, text_emb, mel, audio_mask, video, video_mask, present):
        """present: (B, 3) float, 1 where text, audio, video are given.

        Returns logits (B, 4, L): fusion, text, audio, video.
        """
        return self.encode(text_emb, mel, audio_mask, video, video_mask, present)[0]

    def forward_train(self, text_emb, mel, audio_mask, video, video_mask, present) -> dict:
        """What the losses need (trainer.losses.total_loss's `outputs`):

        logits (B, 4, L); embeddings {head: (B, embed_dim)} in the joint space (NCE);
        kd_features {teacher: {head: (B, kd_dims[teacher])}} when cfg.kd_dims names
        teachers (feature KD).
        """
        logits, tokens = self.encode(text_emb, mel, audio_mask, video, video_mask, present)
        out = {"logits": logits, "embeddings": {h: self.joint[h](tokens[h]) for h in HEADS}}
        if self.cfg.kd_dims:
            out["kd_features"] = {t: {h: self.kd[f"{t}_{h}"](tokens[h]) for h in HEADS}
                                  for t in self.cfg.kd_dims}
        return out


class ExportedStudent(nn.Module):
    """The graph that ships: probabilities instead of logits."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, text_emb, mel, audio_mask, video, video_mask, present):
        return torch.sigmoid(self.student(text_emb, mel, audio_mask, video, video_mask, present))
