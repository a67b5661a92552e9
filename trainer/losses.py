"""The student's training losses: SeMuL-PCD, TelME and SDT, each a small pure function.

Shapes used throughout:
    logits   (B, 4, L)  heads in HEADS order: fusion, text, audio, video (pre-sigmoid)
    targets  (B, L)     0/1 (multi-label; single-label corpora are one-hot)
    present  (B, 3)     float, 1 where text, audio, video were given to the model

Every loss works on logits, never on probabilities: the sigmoid lives inside
BCEWithLogits / logsigmoid, where it is numerically stable.  (SeMuL-PCD's public
code applies a sigmoid to its outputs and then feeds them to a loss that applies one
again; we do not.)  Every distillation target is detached: a target must teach, not
be pulled toward its pupil.

`total_loss` combines the terms with `LossWeights`; a weight of 0 drops a term
entirely (it is not even computed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.heads import HEADS

PEERS = HEADS[1:]


# --------------------------------------------------------------------------- helpers


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` over the entries where `mask` > 0; 0 when none are."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    # where(): an excluded entry that is inf or NaN must not poison the sum
    total = torch.where(mask > 0, values * mask, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1e-8)


def head_mask(present: Tensor, head: str) -> Tensor:
    """(B,) 1 where `head` saw input: a peer when its modality is present, the
    fusion when any modality is."""
    if head == "fusion":
        return present.amax(dim=1)
    return present[:, PEERS.index(head)]


def bernoulli_kl(target: Tensor, logits: Tensor) -> Tensor:
    """Elementwise KL( Bernoulli(target) || Bernoulli(sigmoid(logits)) ).

    = t log t + (1-t) log(1-t) - t log s(z) - (1-t) log s(-z),  with 0 log 0 = 0.
    Multi-label heads are independent Bernoullis per label, so this is the KL that
    replaces the softmax KL of single-label distillation.
    """
    return (
        torch.special.xlogy(target, target)
        + torch.special.xlogy(1 - target, 1 - target)
        - target * F.logsigmoid(logits)
        - (1 - target) * F.logsigmoid(-logits)
    )


def pearson_distance(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation of a and b along `dim` (TelME eq. 7)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    # clamp, not + eps: exact whenever neither vector is constant
    corr = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)
    return 1 - corr


# --------------------------------------------------------------------------- supervised


def bce(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of one head (SeMuL-PCD eq. 1, L_BCE).

    L = mean_j mean_c -[ y_jc log s(z_jc) + (1 - y_jc) log(1 - s(z_jc)) ],
    s = sigmoid, over the samples where `mask` (B,) is set (all when None).
    """
    per_sample = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
    return masked_mean(per_sample, mask)


def peer_bce(peer_logits: Tensor, targets: Tensor, present: Tensor) -> Tensor:
    """BCE on every peer head, only where that peer's modality is present.

    peer_logits (B, 3, L).  L = sum_{j,m} present_jm BCE(z^m_j, y_j) / sum_{j,m} present_jm.
    SeMuL-PCD's code gives the peers no supervised loss.  SDT (Ma et al. 2023) transfers
    "knowledge of hard and soft labels ... to each modality", i.e. trains every modality on
    the labels too; and an unsupervised peer would make the product target of `mdl` noise.
    """
    per = F.binary_cross_entropy_with_logits(
        peer_logits, targets[:, None, :].expand_as(peer_logits), reduction="none"
    ).mean(-1)
    return masked_mean(per, present)


def lcc(fusion_logits: Tensor, targets: Tensor) -> Tensor:
    """Label-consistency calibration loss, SeMuL-PCD sec. 3.2.

    L_LCC = -1/|D| sum_j 1/|C_j^P| sum_{c in C_j^P} log y^{p,f}_{j,c}

    C_j^P is the set of POSITIVE ground-truth labels of sample j and y^{p,f} the
    fusion branch's predicted confidence (sigmoid of its logit).  Only positives enter:
    the term raises the fusion's confidence on every true label, where BCE's average
    over all labels is dominated by the many absent ones; and each sample weighs the
    same however many labels it has.  A sample with no positive label (|C_j^P| = 0,
    e.g. a MOSEI clip with no emotion) is left out of the mean: its term is undefined.
    """
    n_pos = targets.sum(-1)
    per_sample = -(F.logsigmoid(fusion_logits) * targets).sum(-1) / n_pos.clamp_min(1e-8)
    return masked_mean(per_sample, (n_pos > 0).float())


# --------------------------------------------------------------------------- SeMuL-PCD distillation


class LearnableTemperature(nn.Module):
    """tau_k of SeMuL-PCD's L_MDL, held as log tau so it stays positive.

    Register it with the optimizer alongside the student.  Clamped to [lo, hi]: a
    temperature near 0 would make every fusion probability 0 or 1.
    """

    def __init__(self, init: float = 1.0, lo: float = 0.05, hi: float = 20.0):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)))
        self.lo, self.hi = lo, hi

    def forward(self) -> Tensor:
        return self.log_tau.exp().clamp(self.lo, self.hi)


def mdl(peer_logits: Tensor, fusion_logits: Tensor, present: Tensor,
        temperature: float | Tensor = 1.0) -> Tensor:
    """Multimodal distillation loss, SeMuL-PCD sec. 3.2.

    Target (the chain rule over independent peers): T_jc = prod_{m present} s(z^m_jc),
    the probability that every present peer says "label c".  Fusion prediction:
    P_jc = s(z^f_jc / tau), tau learnable.  Per label both are Bernoulli distributions:

        L_MDL = 1/|D'| sum_j 1/|C| sum_c KL( Bern(T_jc) || Bern(P_jc) )

    over the samples D' with at least one peer present (an absent peer is left out of
    the product; with none the target is undefined).

    Where we differ from the paper, and why:
    - The paper writes 1/(tau_k |C|) KL(T || P^f): a learnable tau that only divides a
      non-negative loss is minimised by tau -> infinity, which switches the term off.
      We put tau where a temperature acts, on the fusion logits: it then calibrates the
      fusion's confidence to the peers' joint prediction, and cannot zero the loss.
    - T is detached.  SeMuL-PCD's code lets the gradient flow into the peers too, so a
      peer can lower this loss by moving its own prediction toward the fusion's instead
      of toward the labels: target and pupil chase each other.  The peers keep their
      own supervision (peer_bce); the fusion -> peer direction is SDT's
      `self_distillation`, weighted on its own.
    """
    # log T = sum of log-probabilities of the present peers; an absent peer adds log 1 = 0
    log_target = (F.logsigmoid(peer_logits) * present[..., None]).sum(1)
    target = log_target.exp().detach()
    kl = bernoulli_kl(target, fusion_logits / temperature).mean(-1)
    return masked_mean(kl, present.amax(dim=1))


def nce(embeddings: dict[str, Tensor], present: Tensor, temperature: float | Tensor = 0.1) -> Tensor:
    """Contrastive alignment in the joint space, SeMuL-PCD sec. 3.2 (L_NCE, eq. 2).

    For every unordered pair (m, n) of the heads in `embeddings` (fusion, text, audio,
    video: each (B, D), already projected to the joint space by g_{m->c}), over the
    samples j where both m and n are present, with f = L2-normalised embeddings:

        l(m, n) = -1/|J| sum_j log( exp(f^m_j.f^n_j / t) / sum_{k in J} exp(f^m_j.f^n_k / t) )
        L_NCE   = mean over pairs of ( l(m, n) + l(n, m) ) / 2

    i.e. symmetric InfoNCE with the other samples of the batch as negatives.  The paper
    averages its pairwise terms with a fixed 1/4 and a uniformly sampled negative set; we
    use in-batch negatives and a plain mean over the pairs that have >= 2 samples (with
    one sample there is no negative and the term is identically 0).
    """
    terms = []
    for a, b in combinations([h for h in HEADS if h in embeddings], 2):
        both = (head_mask(present, a) * head_mask(present, b)) > 0
        if int(both.sum()) < 2:
            continue
        fa = F.normalize(embeddings[a][both], dim=-1)
        fb = F.normalize(embeddings[b][both], dim=-1)
        sim = fa @ fb.T / temperature
        match = torch.arange(sim.shape[0], device=sim.device)
        terms.append((F.cross_entropy(sim, match) + F.cross_entropy(sim.T, match)) / 2)
    if not terms:
        return present.new_zeros(())
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------- TelME distillation


def dist_response_kd(student_logits: Tensor, teacher_logits: Tensor, tau: float = 2.0) -> Tensor:
    """TelME's response KD (DIST), sec. 3.2.3, eqs. 7-12.

    Y^s = softmax(Z^s / tau), Y^t = softmax(Z^t / tau) row-wise, (B, C);
    d(u, v) = 1 - pearson(u, v);
    L_inter = tau^2 / B sum_i d(Y^s_i,:, Y^t_i,:)   (each sample's ranking of classes)
    L_intra = tau^2 / C sum_c d(Y^s_:,c, Y^t_:,c)   (each class's ranking of samples)
    L = L_inter + L_intra.   The teacher side is detached.

    Softmax as in the paper even for multi-label heads: DIST transfers relative rankings,
    which the softmax of the logits preserves.  Needs B >= 2 for L_intra.
    """
    y_s = F.softmax(student_logits / tau, dim=-1)
    y_t = F.softmax(teacher_logits.detach() / tau, dim=-1)
    inter = pearson_distance(y_s, y_t, dim=1).mean()
    intra = pearson_distance(y_s, y_t, dim=0).mean()
    return tau**2 * (inter + intra)


def feature_kd(student_feat: Tensor, teacher_feat: Tensor, tau: float = 1.0) -> Tensor:
    """TelME's feature KD, sec. 3.2.3, eqs. 13-15.

    With L2-normalised rows t_i (teacher) and s_i (student), both (B, D):
        M_ij  = t_i . t_j   (the teacher's batch self-similarity: the target)
        M'_ij = s_i . t_j   (the student-teacher similarity)
        P_i = softmax_j(M_i / tau),  Q_i = softmax_j(M'_i / tau)
        L = 1/B sum_i KL(P_i || Q_i).   The teacher side is detached.

    The paper does not say which side indexes the rows of M'; we let row i be student i
    against every teacher, so the loss asks s_i to relate to the batch as t_i does.
    The student features must already be in the teacher's dimension (a projection head).
    """
    if student_feat.shape[-1] != teacher_feat.shape[-1]:
        raise ValueError(
            f"feature_kd: student features have {student_feat.shape[-1]} dims, the teacher's "
            f"{teacher_feat.shape[-1]}; project the student to the teacher's size first"
        )
    t = F.normalize(teacher_feat.detach(), dim=-1)
    s = F.normalize(student_feat, dim=-1)
    log_p = F.log_softmax(t @ t.T / tau, dim=-1)
    log_q = F.log_softmax(s @ t.T / tau, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


# --------------------------------------------------------------------------- SDT


def self_distillation(fusion_logits: Tensor, peer_logits: Tensor, present: Tensor,
                      tau: float = 1.0) -> Tensor:
    """SDT's soft-label self-distillation (Ma et al. 2023, IEEE TMM), multi-label form.

    The fusion's soft labels q = s(z^f / tau), detached, teach each present peer m:
        L = tau^2 * sum_{j,m} present_jm (1/|C|) sum_c KL(Bern(q_jc) || Bern(s(z^m_jc / tau)))
            / sum_{j,m} present_jm
    SDT uses softmax + KL over single-label classes; our heads are per-label sigmoids, so
    the KL is per label between Bernoullis.  tau^2 keeps the gradient scale independent of
    tau (Hinton et al. 2015).
    """
    soft = torch.sigmoid(fusion_logits.detach() / tau)[:, None, :].expand_as(peer_logits)
    kl = bernoulli_kl(soft, peer_logits / tau).mean(-1)
    return tau**2 * masked_mean(kl, present)


# --------------------------------------------------------------------------- combination


@dataclass
class LossWeights:
    """Weight of every term of `total_loss` (0 removes the term) and its temperature.

    Defaults: SeMuL-PCD's best setting (sec. 4.4: lambda_C = 1, lambda_K = 0.5,
    lambda_S = 1) and TelME's MELD setting (alpha = beta = 1, appendix A.3).
    """

    bce: float = 1.0  # BCE on the fusion head (SeMuL-PCD eq. 1)
    peer_bce: float = 1.0  # BCE on each peer head whose modality is present (SDT's hard-label term)
    lcc: float = 1.0  # lambda_C: label-consistency calibration of the fusion (SeMuL-PCD 3.2)
    mdl: float = 0.5  # lambda_K: KL from the peers' product to the fusion, learnable temperature
    nce: float = 1.0  # lambda_S: contrastive alignment of every head pair in the joint space
    response_kd: float = 1.0  # TelME alpha: DIST response KD from a teacher (TelME: MELD 1, IEMOCAP 0.1)
    feature_kd: float = 1.0  # TelME beta: feature KD from a teacher (only with a teacher)
    sdt: float = 1.0  # SDT: the fusion's soft labels teach each peer (not tuned)
    mdl_temperature: float = 1.0  # MDL's temperature: the learnable one's start (fixed when none is passed)
    nce_temperature: float = 0.5  # InfoNCE temperature, chosen on synthetic dev (docs/BENCHMARKS.md)
    response_tau: float = 2.0  # DIST temperature; TelME uses 2 and 4 (appendix A.3 swaps which is which)
    feature_tau: float = 1.0  # feature KD temperature (TelME appendix A.3)
    sdt_tau: float = 1.0  # softness of the fusion's soft labels in SDT
    kd_heads: tuple[str, ...] = ("audio", "video")  # heads the text teacher teaches (TelME: the non-verbal
    # ones); the face teacher teaches video only


def total_loss(
    outputs: dict,
    targets: Tensor,
    present: Tensor,
    weights: LossWeights,
    teachers: list[dict] | None = None,
    mdl_temperature: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = sum_k w_k L_k over the terms with w_k != 0 (SeMuL-PCD eq. 1 + TelME eq. 6 + SDT).

    outputs: "logits" (B, 4, L) in HEADS order; "embeddings" {head: (B, D)} in the joint
        space (needed when nce != 0); optional "kd_features" {teacher: {head: (B, D_teacher)}},
        the student's features projected to each teacher's size (else "embeddings" is used).
    teachers: each {"name", "heads": heads it teaches, "logits": (B, C), "features":
        (B, D_teacher), optional "present": (B,), optional "label_map": {teacher class:
        label index}}; "present" marks the samples the teacher saw (all when absent);
        "label_map" (from teachers.map_teacher_labels) is for a teacher with classes of
        its own, e.g. the FER face teacher: DIST then compares only the shared classes.
        Each KD term is the mean over the teachers.
    mdl_temperature: a `LearnableTemperature()` output; weights.mdl_temperature otherwise.

    Returns the loss and the unweighted value of each computed term (detached), for logs.
    """
    logits = outputs["logits"]
    fusion, peers = logits[:, 0], logits[:, 1:]
    tau_k = weights.mdl_temperature if mdl_temperature is None else mdl_temperature
    terms = {
        "bce": (weights.bce, lambda: bce(fusion, targets, head_mask(present, "fusion"))),
        "peer_bce": (weights.peer_bce, lambda: peer_bce(peers, targets, present)),
        "lcc": (weights.lcc, lambda: lcc(fusion, targets)),
        "mdl": (weights.mdl, lambda: mdl(peers, fusion, present, tau_k)),
        "nce": (weights.nce, lambda: nce(outputs["embeddings"], present, weights.nce_temperature)),
        "sdt": (weights.sdt, lambda: self_distillation(fusion, peers, present, weights.sdt_tau)),
    }
    if teachers:
        mean_over = lambda kind: torch.stack(
            [_teacher_term(kind, outputs, t, present, weights) for t in teachers]).mean()
        terms["response_kd"] = (weights.response_kd, lambda: mean_over("response"))
        terms["feature_kd"] = (weights.feature_kd, lambda: mean_over("feature"))
    loss, parts = logits.new_zeros(()), {}
    for name, (weight, compute) in terms.items():
        if weight == 0:
            continue  # removed, not multiplied by 0: its inputs need not even exist
        value = compute()
        loss = loss + weight * value
        parts[name] = value.detach()
    return loss, parts


def _teacher_term(kind: str, outputs: dict, teacher: dict, present: Tensor,
                  weights: LossWeights) -> Tensor:
    """Mean over the teacher's heads of the TelME KD term, each over the samples where both
    that head and the teacher saw input (both terms compare rows across the batch, so a
    head with fewer than 2 such samples is skipped)."""
    logits = outputs["logits"]
    seen = teacher.get("present")
    values = []
    for head in teacher["heads"]:
        rows = head_mask(present, head)
        if seen is not None:
            rows = rows * seen
        rows = rows > 0
        if int(rows.sum()) < 2:
            continue
        if kind == "response":
            student, taught = logits[:, HEADS.index(head)], teacher["logits"]
            if "label_map" in teacher:  # a teacher with its own classes: compare the shared ones
                t_cols, s_cols = zip(*sorted(teacher["label_map"].items()))
                student, taught = student[:, list(s_cols)], taught[:, list(t_cols)]
            values.append(dist_response_kd(student[rows], taught[rows], weights.response_tau))
        else:
            projected = outputs.get("kd_features", {}).get(teacher.get("name"))
            student = (projected if projected is not None else outputs["embeddings"])[head]
            values.append(feature_kd(student[rows], teacher["features"][rows], weights.feature_tau))
    if not values:
        return logits.new_zeros(())
    return torch.stack(values).mean()
