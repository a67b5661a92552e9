"""Each loss against a value worked out by hand (plain math / numpy on a tiny batch),
plus the properties the trainer relies on: masks, detached targets, zero weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer import losses as L


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# --------------------------------------------------------------------------- BCE / LCC


def test_bce_by_hand():
    z, y = [[0.5, -1.0], [2.0, 0.0]], [[1, 0], [0, 1]]
    hand = -(math.log(sig(0.5)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(2.0)) + math.log(sig(0.0))) / 4
    assert L.bce(t(z), t(y)).item() == pytest.approx(hand, rel=1e-9)
    # a mask keeps only the first sample
    first = -(math.log(sig(0.5)) + math.log(1 - sig(-1.0))) / 2
    assert L.bce(t(z), t(y), t([1.0, 0.0])).item() == pytest.approx(first, rel=1e-9)


def test_peer_bce_by_hand_and_masked():
    peers = [[[1.0, -2.0], [9.0, 9.0], [0.0, 3.0]],
             [[9.0, 9.0], [-1.0, 1.0], [9.0, 9.0]]]
    y = [[1, 0], [0, 1]]
    present = [[1, 0, 1], [0, 1, 0]]
    # present (sample, peer) pairs: (0, text), (0, video), (1, audio)
    pairs = [((1.0, -2.0), (1, 0)), ((0.0, 3.0), (1, 0)), ((-1.0, 1.0), (0, 1))]
    per = [-sum(yc * math.log(sig(zc)) + (1 - yc) * math.log(1 - sig(zc)) for zc, yc in zip(z, yy)) / 2
           for z, yy in pairs]
    assert L.peer_bce(t(peers), t(y), t(present)).item() == pytest.approx(sum(per) / 3, rel=1e-9)


def test_lcc_by_hand_counts_only_positive_labels():
    z = [[0.5, -1.0, 3.0], [2.0, 0.0, 1.0]]
    y = [[1, 1, 0], [0, 0, 0]]  # the second sample has no positive label: left out
    hand = -(math.log(sig(0.5)) + math.log(sig(-1.0))) / 2
    assert L.lcc(t(z), t(y)).item() == pytest.approx(hand, rel=1e-9)
    # the negative label's logit (3.0) does not matter at all
    z2 = [[0.5, -1.0, -7.0], [2.0, 0.0, 1.0]]
    assert L.lcc(t(z2), t(y)).item() == pytest.approx(hand, rel=1e-9)


def test_lcc_weighs_each_sample_equally():
    z = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    y = [[1, 1, 1], [1, 0, 0]]
    hand = (-(3 * math.log(sig(0.0))) / 3 - math.log(sig(1.0))) / 2
    assert L.lcc(t(z), t(y)).item() == pytest.approx(hand, rel=1e-9)


# --------------------------------------------------------------------------- MDL


def bern_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_mdl_by_hand():
    peers = [[[1.0, -0.5], [2.0, 0.3], [50.0, -50.0]],  # video absent in sample 0
             [[0.2, 0.4], [-1.0, 1.5], [0.7, -0.2]]]
    fusion = [[1.5, -1.0], [0.1, 0.6]]
    present = [[1, 1, 0], [1, 1, 1]]
    tau = 2.0
    kl = []
    for j in range(2):
        per_label = []
        for c in range(2):
            target = 1.0
            for m in range(3):
                if present[j][m]:
                    target *= sig(peers[j][m][c])
            per_label.append(bern_kl(target, sig(fusion[j][c] / tau)))
        kl.append(sum(per_label) / 2)
    hand = sum(kl) / 2
    assert L.mdl(t(peers), t(fusion), t(present), tau).item() == pytest.approx(hand, rel=1e-9)


def test_mdl_target_is_detached_and_temperature_learns():
    peers = t([[[1.0, -0.5], [2.0, 0.3], [0.1, 0.2]]], grad=True)
    fusion = t([[1.5, -1.0]], grad=True)
    temp = L.LearnableTemperature(1.5).double()
    L.mdl(peers, fusion, t([[1, 1, 1]]), temp()).backward()
    assert peers.grad is None  # no gradient into the distillation target
    assert fusion.grad is not None and fusion.grad.abs().sum() > 0
    assert temp.log_tau.grad is not None and temp.log_tau.grad.abs() > 0


def test_mdl_ignores_absent_peers_and_samples_without_peers():
    peers = torch.randn(3, 3, 4, dtype=torch.float64)
    fusion = torch.randn(3, 4, dtype=torch.float64)
    present = t([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    a = L.mdl(peers, fusion, present, 1.0)
    peers2 = peers.clone()
    peers2[0, 1] += 5  # absent audio of sample 0
    peers2[1] -= 3  # sample 1 has no peer at all
    fusion2 = fusion.clone()
    fusion2[1] += 4
    assert L.mdl(peers2, fusion2, present, 1.0).item() == pytest.approx(a.item(), rel=1e-12)


# --------------------------------------------------------------------------- NCE


def info_nce(a, b, temp):
    """-mean_i log softmax_k(a_i . b_k / temp)[i], rows L2-normalised, written out."""
    a = [np.array(v) / np.linalg.norm(v) for v in a]
    b = [np.array(v) / np.linalg.norm(v) for v in b]
    total = 0.0
    for i in range(len(a)):
        scores = [float(a[i] @ b[k]) / temp for k in range(len(b))]
        total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    return total / len(a)


def test_nce_by_hand_only_over_samples_with_both_modalities():
    emb = {
        "text": [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]],
        "audio": [[0.8, 0.6], [0.0, 1.0], [5.0, -3.0]],
    }
    present = [[1, 1, 0], [1, 1, 0], [1, 0, 0]]  # sample 2 has no audio
    temp = 0.5
    ta = info_nce(emb["text"][:2], emb["audio"][:2], temp)
    at = info_nce(emb["audio"][:2], emb["text"][:2], temp)
    hand = (ta + at) / 2
    got = L.nce({k: t(v) for k, v in emb.items()}, t(present), temp)
    assert got.item() == pytest.approx(hand, rel=1e-9)
    # the absent audio embedding changes nothing
    emb2 = {k: t(v) for k, v in emb.items()}
    emb2["audio"][2] = t([-1.0, 7.0])
    assert L.nce(emb2, t(present), temp).item() == pytest.approx(hand, rel=1e-9)


def test_nce_averages_every_pair_including_fusion():
    torch.manual_seed(0)
    emb = {h: torch.randn(4, 3, dtype=torch.float64) for h in L.HEADS}
    present = t([[1, 1, 1]] * 4)
    pairs = [(a, b) for i, a in enumerate(L.HEADS) for b in L.HEADS[i + 1:]]
    assert len(pairs) == 6
    hand = np.mean([(info_nce(emb[a].tolist(), emb[b].tolist(), 0.1)
                     + info_nce(emb[b].tolist(), emb[a].tolist(), 0.1)) / 2 for a, b in pairs])
    assert L.nce(emb, present, 0.1).item() == pytest.approx(hand, rel=1e-9)


# --------------------------------------------------------------------------- TelME


def softmax_rows(z, tau):
    e = np.exp(np.asarray(z) / tau)
    return e / e.sum(1, keepdims=True)


def pearson(u, v):
    u, v = np.asarray(u) - np.mean(u), np.asarray(v) - np.mean(v)
    return float((u * v).sum() / math.sqrt((u * u).sum() * (v * v).sum()))


def test_dist_response_kd_by_hand():
    zs = [[1.0, 0.2, -0.5], [0.0, 2.0, 0.3], [-1.0, 0.5, 1.5]]
    zt = [[2.0, -0.3, 0.1], [0.4, 1.0, -1.0], [0.2, 0.1, 2.5]]
    tau = 2.0
    ys, yt = softmax_rows(zs, tau), softmax_rows(zt, tau)
    inter = np.mean([1 - pearson(ys[i], yt[i]) for i in range(3)])
    intra = np.mean([1 - pearson(ys[:, c], yt[:, c]) for c in range(3)])
    hand = tau**2 * (inter + intra)
    teacher = t(zt, grad=True)
    got = L.dist_response_kd(t(zs), teacher, tau)
    assert got.item() == pytest.approx(hand, rel=1e-6)
    assert L.dist_response_kd(t(zt), t(zt), tau).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_kd_by_hand_and_teacher_detached():
    s = [[1.0, 1.0], [0.0, 2.0]]
    tf = [[3.0, 0.0], [1.0, 1.0]]
    tau = 0.5
    sn = [np.array(v) / np.linalg.norm(v) for v in s]
    tn = [np.array(v) / np.linalg.norm(v) for v in tf]
    hand = 0.0
    for i in range(2):
        m = [float(tn[i] @ tn[j]) / tau for j in range(2)]
        mp = [float(sn[i] @ tn[j]) / tau for j in range(2)]
        p = [math.exp(x) / sum(math.exp(y) for y in m) for x in m]
        q = [math.exp(x) / sum(math.exp(y) for y in mp) for x in mp]
        hand += sum(p[j] * math.log(p[j] / q[j]) for j in range(2))
    hand /= 2
    student, teacher = t(s, grad=True), t(tf, grad=True)
    got = L.feature_kd(student, teacher, tau)
    assert got.item() == pytest.approx(hand, rel=1e-9)
    got.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="project"):
        L.feature_kd(t([[1.0, 2.0, 3.0]]), t([[1.0, 2.0]]))


# --------------------------------------------------------------------------- SDT


def test_self_distillation_by_hand_masked_and_detached():
    fusion = t([[1.0, -2.0], [0.5, 0.5]], grad=True)
    peers = t([[[0.0, 1.0], [2.0, -1.0], [9.0, 9.0]],
               [[9.0, 9.0], [9.0, 9.0], [-0.5, 0.3]]], grad=True)
    present = t([[1, 1, 0], [0, 0, 1]])
    tau = 2.0
    rows = [(0, 0), (0, 1), (1, 2)]
    kl = [sum(bern_kl(sig(fusion[j, c].item() / tau), sig(peers[j, m, c].item() / tau)) for c in range(2)) / 2
          for j, m in rows]
    hand = tau**2 * sum(kl) / 3
    got = L.self_distillation(fusion, peers, present, tau)
    assert got.item() == pytest.approx(hand, rel=1e-9)
    got.backward()
    assert fusion.grad is None  # the soft labels are a detached target
    assert peers.grad[0, 2].abs().sum() == 0 and peers.grad[1, :2].abs().sum() == 0  # absent peers
    assert peers.grad[0, 0].abs().sum() > 0


# --------------------------------------------------------------------------- total_loss


def _outputs(b=4, n_labels=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(b, 4, n_labels, generator=g, dtype=torch.float64, requires_grad=True),
        "embeddings": {h: torch.randn(b, d, generator=g, dtype=torch.float64) for h in L.HEADS},
    }


def test_total_loss_is_the_weighted_sum_and_zero_weight_removes_a_term():
    out = _outputs()
    y = t([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]])
    present = t([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]])
    w = L.LossWeights()
    loss, parts = L.total_loss(out, y, present, w)
    assert set(parts) == {"bce", "peer_bce", "lcc", "mdl", "nce", "sdt"}
    weighted = sum(getattr(w, k) * v for k, v in parts.items())
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-12)

    no_nce = L.LossWeights(nce=0.0)
    out_no_emb = {"logits": out["logits"]}  # nce off: embeddings are not even needed
    loss2, parts2 = L.total_loss(out_no_emb, y, present, no_nce)
    assert "nce" not in parts2
    assert loss2.item() == pytest.approx(loss.item() - w.nce * parts["nce"].item(), rel=1e-12)

    only_bce = L.LossWeights(peer_bce=0, lcc=0, mdl=0, nce=0, sdt=0)
    loss3, parts3 = L.total_loss(out_no_emb, y, present, only_bce)
    assert set(parts3) == {"bce"}
    assert loss3.item() == pytest.approx(parts["bce"].item(), rel=1e-12)


def test_total_loss_with_teacher_detaches_it_and_respects_masks():
    out = _outputs(b=5)
    teacher = {
        "name": "text", "heads": ("audio",),
        "logits": torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
        "features": torch.randn(5, 5, dtype=torch.float64, requires_grad=True),
    }
    y = t([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    present = t([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1]])
    w = L.LossWeights()
    loss, parts = L.total_loss(out, y, present, w, teachers=[teacher])
    assert {"response_kd", "feature_kd"} <= set(parts)
    rows = present[:, 1] > 0
    expected = L.dist_response_kd(out["logits"][rows, 2], teacher["logits"][rows], w.response_tau)
    assert parts["response_kd"].item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert teacher["logits"].grad is None and teacher["features"].grad is None
    # the audio head gets no KD gradient from sample 3, whose audio is absent: compare
    # with and without the KD terms
    out2 = {"logits": out["logits"].detach().clone().requires_grad_(), "embeddings": out["embeddings"]}
    L.total_loss(out2, y, present, L.LossWeights(response_kd=0, feature_kd=0), teachers=[teacher])[0].backward()
    assert torch.allclose(out["logits"].grad[3, 2], out2["logits"].grad[3, 2])
    assert not torch.allclose(out["logits"].grad[0, 2], out2["logits"].grad[0, 2])


def test_total_loss_with_a_teacher_of_other_classes_uses_the_shared_ones():
    out = _outputs(b=4)
    teacher = {"name": "face", "heads": ("video",), "logits": torch.randn(4, 7, dtype=torch.float64),
               "features": torch.randn(4, 5, dtype=torch.float64),
               "label_map": {3: 0, 0: 2}}  # teacher class 3 is label 0, class 0 is label 2
    y = t([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    present = t([[1, 1, 1]] * 4)
    w = L.LossWeights()
    _, parts = L.total_loss(out, y, present, w, teachers=[teacher])
    video = out["logits"][:, 3]
    expected = L.dist_response_kd(video[:, [2, 0]], teacher["logits"][:, [0, 3]], w.response_tau)
    assert parts["response_kd"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_total_loss_averages_the_kd_terms_of_several_teachers():
    out = _outputs(b=4)
    out["kd_features"] = {"face": {h: torch.randn(4, 6, dtype=torch.float64) for h in L.HEADS},
                          "text": {h: torch.randn(4, 5, dtype=torch.float64) for h in L.HEADS}}
    y = t([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    present = t([[1, 1, 1]] * 4)
    face = {"name": "face", "heads": ("video",), "logits": torch.randn(4, 3, dtype=torch.float64),
            "features": torch.randn(4, 6, dtype=torch.float64)}
    text = {"name": "text", "heads": ("audio", "video"), "logits": torch.randn(4, 3, dtype=torch.float64),
            "features": torch.randn(4, 5, dtype=torch.float64)}
    w = L.LossWeights()
    _, parts = L.total_loss(out, y, present, w, teachers=[face, text])
    f = lambda teacher, head: L.feature_kd(out["kd_features"][teacher["name"]][head], teacher["features"],
                                           w.feature_tau)
    expected = (f(face, "video") + (f(text, "audio") + f(text, "video")) / 2) / 2
    assert parts["feature_kd"].item() == pytest.approx(expected.item(), rel=1e-12)
