"""The student's architecture: text, audio and video peer branches and a fusion branch.

Each peer is a small transformer with its own aggregation token and its own
multi-label head (SeMuL-PCD's peer networks).  The fusion branch is a fusion
token that attends over the tokens of every present peer (cross-network
attention), plus TelME's attention-based modality shifting: the text token,
shifted by a displacement vector made from the audio and video tokens, is added
to the fusion token, so the fusion head always has the text's own view and the
non-verbal peers move it rather than replace it.  Presence masks let any
modality be missing, per sample.  With StudentConfig.peer_base the fused prediction
is the present peers' own (Student.fuse) and the fusion head adds a residual to it
only where several modalities are present: a lone modality leads.

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
from typing import cast

import torch
from torch import nn

from engines.face_net import FER_FEATURES, FER_LABELS, MiniXception
from engines.heads import HEADS, MODALITIES
from engines.preprocess import Preprocessing

# Inputs of Student.forward and of the exported graph, in order.
INPUTS = ("text_emb", "mel", "audio_mask", "video", "video_mask", "present")
NEG = -1e4  # additive mask value; -inf would turn a fully masked row into NaN
VIDEO_ENCODERS = ("tubelets", "fer")


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
    # What the video peer reads.  "tubelets": 2x16x16 tubelets of the face crops (SeMuL-PCD),
    # learnt from scratch.  "fer": every crop goes through the frozen FER2013 mini-XCEPTION
    # (engines.face_net, inside the graph); the peer reads each frame's pooled features and
    # class probabilities, and for the labels FER knows the video head's logit IS FER's
    # (the logit of its probability averaged over the frames with a face), so the branch
    # keeps what FER2013's real faces taught it instead of re-learning it from few faces.
    video_encoder: str = "tubelets"
    # With video_encoder "fer": for each label, the index of its FER class (-1: none).
    fer_classes: list[int] = field(default_factory=list)
    # With a text teacher's classifier (`trainer teach`; its encoder is the text branch, and
    # text_emb is its raw mask-token state): for each label, the index of its class in that
    # head (-1: none).  The text head's logit for those labels IS the teacher's (the log-odds of
    # its softmax probability), and the fusion head adds its logits to that prediction instead
    # of learning the text anew: the fused prediction of a transcript alone starts as the
    # teacher's, and faces (and voices) move it.  Empty: the text head is learnt.
    text_classes: list[int] = field(default_factory=list)
    text_teacher_classes: int = 0  # the teacher head's number of classes
    # The branches that are built.  A modality the model never reads (audio in the real
    # recipe) gets no peer: no weights, no compute; its token is zero and always masked.
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    # What the fused prediction is built on.  False (every bundle trained before this field): the
    # fusion head's logits are the prediction, plus the text teacher's where it is the text head.
    # True: the present peers' own predictions are the base (Student.fuse) -- the lone peer's where
    # one modality is present, a learnt mix where several are -- and the fusion head only adds a
    # residual, which starts at zero and applies only where two or more modalities are present.
    peer_base: bool = False

    def __post_init__(self):
        if not self.modalities or set(self.modalities) - set(MODALITIES):
            raise ValueError(f"modalities must be a non-empty subset of {list(MODALITIES)}, got {self.modalities}")
        if self.video_encoder not in VIDEO_ENCODERS:
            raise ValueError(f"video_encoder must be one of {', '.join(VIDEO_ENCODERS)}, got {self.video_encoder!r}")
        if self.video_encoder == "fer" and len(self.fer_classes) != self.n_labels:
            raise ValueError(f"video_encoder 'fer' needs fer_classes for each of the {self.n_labels} labels")
        if self.text_classes and (len(self.text_classes) != self.n_labels or self.text_teacher_classes < 1
                                  or max(self.text_classes) >= self.text_teacher_classes):
            raise ValueError(f"text_classes needs a class of the text teacher's {self.text_teacher_classes} "
                             f"(or -1) for each of the {self.n_labels} labels, got {self.text_classes}")

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
        # Fewer tokens than n_tokens: the runtime cuts trailing padding off (engines.backends.
        # trim_audio); the masked tokens it drops changed nothing, as attention gives them weight 0.
        x = torch.cat([self.agg.expand(b, -1, -1), self.embed(tokens) + self.pos[:, : tokens.shape[1]]], dim=1)
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
    # Buffers (register_buffer below, when the config has them), typed for nn.Module's __getattr__.
    text_classes: torch.Tensor
    fer_classes: torch.Tensor

    def __init__(self, cfg: StudentConfig, pre: Preprocessing):
        super().__init__()
        self.cfg, self.pre = cfg, pre
        t, h, w = pre.tubelet
        self.text = Peer(cfg, cfg.text_dim, 1) if "text" in cfg.modalities else None
        if cfg.text_classes:
            self.text_teacher = nn.Linear(cfg.text_dim, cfg.text_teacher_classes).requires_grad_(False)  # weights: fit
            self.register_buffer("text_classes", torch.tensor(cfg.text_classes, dtype=torch.long), persistent=False)
        self.audio = Peer(cfg, pre.n_mels * pre.audio_patch, pre.audio_tokens) if "audio" in cfg.modalities else None
        if "video" not in cfg.modalities:
            self.video = None
        elif cfg.video_encoder == "fer":
            self.face_net = MiniXception().requires_grad_(False)  # weights: trainer.teachers
            self.register_buffer("fer_classes", torch.tensor(cfg.fer_classes, dtype=torch.long), persistent=False)
            self.video = Peer(cfg, FER_FEATURES + len(FER_LABELS), pre.video_frames)
        else:
            self.video = Peer(cfg, t * h * w, pre.video_tokens)
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.fusion = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.fusion_norm = nn.LayerNorm(cfg.dim)
        self.shift = ModalityShift(cfg)
        self.fusion_head = nn.Linear(cfg.dim, cfg.n_labels)
        if cfg.peer_base:
            # The residual starts at zero, so the fused prediction starts as the peers' own.
            nn.init.zeros_(self.fusion_head.weight)
            nn.init.zeros_(self.fusion_head.bias)
            # Each peer's share of the base where several are present (a softmax over the present
            # ones; equal shares at the start).  Only with peer_base: older bundles' weights lack it.
            self.peer_weight = nn.Parameter(torch.zeros(len(MODALITIES)))
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

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.video_encoder == "fer":
            self.face_net.eval()  # frozen: its batch norms keep FER2013's statistics
        return self

    def fer_frames(self, video: torch.Tensor, video_mask: torch.Tensor):
        """The FER network on every crop: tokens (B, frames, 128 + 7) of pooled features
        and class probabilities, and FER's logits for the labels (B, L), from its
        probabilities averaged over the frames with a face."""
        b, n, s, _ = video.shape
        # The student's crops are (x / 255 - 0.5) / 0.25; FER wants (x / 255 - 0.5) * 2.
        trunk = self.face_net.trunk((video * 0.5).reshape(b * n, 1, s, s))
        feats = trunk.mean(dim=(-2, -1)).reshape(b, n, FER_FEATURES)
        probs = self.face_net.head(trunk).mean(dim=(-2, -1)).softmax(-1).reshape(b, n, len(FER_LABELS))
        w = video_mask[..., None]
        logits = self.log_odds((probs * w).sum(1) / w.sum(1).clamp(min=1.0), self.fer_classes)
        return torch.cat([feats, probs], dim=-1), logits

    @staticmethod
    def log_odds(probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, L) logits whose sigmoid is each label's class probability (classes: its index)."""
        p = probs.clamp(1e-4, 1 - 1e-4)
        return (torch.log(p) - torch.log1p(-p))[:, classes.clamp(min=0)]

    def unbuilt(self, *inputs: torch.Tensor):
        """What a branch that is not built gives: a zero token, masked, and zero logits.
        Computed from its inputs times 0, so the exported graph keeps them as inputs."""
        b = inputs[0].shape[0]
        # sum starts from the int 0, which its first tensor turns into a tensor.
        zero = cast(torch.Tensor, sum(x.reshape(b, -1)[:, :1] for x in inputs)) * 0.0  # (B, 1)
        return zero[:, :, None].expand(b, 1, self.cfg.dim), zero, zero.expand(b, self.cfg.n_labels)

    def encode(self, text_emb, mel, audio_mask, video, video_mask, present, fer=None):
        """(logits (B, 4, L), tokens {head: (B, dim)}): the fusion token and each peer's
        aggregation token, after their final norms.  fer: fer_frames' outputs when the
        trainer computed them once (the network is frozen, so they never change)."""
        if self.text is None:
            x_t, k_t, logit_t = self.unbuilt(text_emb)
        else:
            x_t, k_t, logit_t = self.text(text_emb[:, None, :], present[:, 0:1])
        told = None  # the text teacher's logits, for the labels it knows (0 for the others)
        if self.cfg.text_classes:
            knows = self.text_classes >= 0
            told = torch.where(knows, self.log_odds(self.text_teacher(text_emb).softmax(-1), self.text_classes), 0.0)
            logit_t = torch.where(knows, told, logit_t)
        if self.audio is None:
            x_a, k_a, logit_a = self.unbuilt(mel, audio_mask)
        else:
            x_a, k_a, logit_a = self.audio(self.audio_tokens(mel), audio_mask)
        if self.video is None:
            x_v, k_v, logit_v = self.unbuilt(video, video_mask)
        elif self.cfg.video_encoder == "fer":
            tokens_v, fer_logits = fer if fer is not None else self.fer_frames(video, video_mask)
            x_v, k_v, logit_v = self.video(tokens_v, video_mask)
            logit_v = torch.where(self.fer_classes >= 0, fer_logits, logit_v)
        else:
            x_v, k_v, logit_v = self.video(*self.video_tokens(video, video_mask))
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
        if self.cfg.peer_base:
            logit_f = self.fuse(logit_f, torch.stack([logit_t, logit_a, logit_v], dim=1), present)
        elif told is not None:
            logit_f = logit_f + present[:, 0:1] * told
        tokens = {"fusion": fused, "text": x_t[:, 0], "audio": x_a[:, 0], "video": x_v[:, 0]}
        return torch.stack([logit_f, logit_t, logit_a, logit_v], dim=1), tokens

    def fuse(self, residual: torch.Tensor, peer_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The fused logits with peer_base: residual (B, L) from the fusion head, peer_logits
        (B, 3, L) in MODALITIES order, present (B, 3).

        base = sum_m w_m z_m over the present peers, w = softmax of peer_weight over them; with
        one modality present w is 1 for it, and the fused logits ARE that peer's.  The fusion
        head has nothing to fuse there, and what it would learn is a second copy of that
        modality's head trained on whatever data had it alone: in the real recipe the only
        aligned video is synthetic faces, and such a copy overrode the FER network on real faces
        (issue 23: 91 of 129 video-only windows of a real face disagreed with the face peer).  So
        each present modality leads where the others are absent, and the residual only says how
        modalities combine where there are several.  With none present (never in training) the
        fused logits are the residual alone, the fusion token's prior."""
        weights = (self.peer_weight + (1.0 - present) * NEG).softmax(-1) * present.amax(1, keepdim=True)
        base = (weights[:, :, None] * peer_logits).sum(1)
        solo = (present.sum(1, keepdim=True) == 1.0).to(residual.dtype)
        return base + (1.0 - solo) * residual

    def forward(self, text_emb, mel, audio_mask, video, video_mask, present):
        """present: (B, 3) float, 1 where text, audio, video are given.

        Returns logits (B, 4, L): fusion, text, audio, video.
        """
        return self.encode(text_emb, mel, audio_mask, video, video_mask, present)[0]

    def forward_train(self, text_emb, mel, audio_mask, video, video_mask, present, fer=None) -> dict:
        """What the losses need (trainer.losses.total_loss's `outputs`):

        logits (B, 4, L); embeddings {head: (B, embed_dim)} in the joint space (NCE);
        kd_features {teacher: {head: (B, kd_dims[teacher])}} when cfg.kd_dims names
        teachers (feature KD).
        """
        logits, tokens = self.encode(text_emb, mel, audio_mask, video, video_mask, present, fer)
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
