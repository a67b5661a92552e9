"""Fit a bundle's per-label calibration (engines.calibration) on its run's dev split.

`trainer export` calls `calibrate_run` after it has written the graphs: the run's student
scores the dev split (the utterances `trainer fit` selected the epoch and tuned thresholds
on; never test), one Platt scaling per head and label is fitted on those probabilities, and
the thresholds are tuned again on the calibrated fused probabilities, since the old ones
were tuned on the old scale.

Why Platt (scale and bias on the logit) and not isotonic regression: it is two numbers per
label, keeps each label's order (so mAP is unchanged), and holds up on a few dozen positives
(MELD dev has 40 of fear); isotonic regression is a step function with a free value per
step, which over-fits labels that rare and ties probabilities at the steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from engines.calibration import METHODS, Calibration, logit, sigmoid
from engines.heads import HEADS

# A head with fewer dev utterances (a peer: where its modality is present) keeps the identity:
# too few to fit two numbers per label.  With fewer for the fusion, export calibrates nothing.
MIN_ROWS = 20
LOG_SCALE_BOUND = 5.0  # scale within [e^-5, e^5]: a label whose logit says nothing is flattened, not inverted


def platt_targets(y: np.ndarray) -> np.ndarray:
    """Platt's (1999) smoothed targets: (N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for
    negatives, so a label with no positives (or no negatives) on dev gets a finite bias."""
    pos = float(y.sum())
    return np.where(y > 0, (pos + 1) / (pos + 2), 1 / (len(y) - pos + 2))


def fit_label(z: np.ndarray, y: np.ndarray, method: str = "platt") -> tuple[float, float]:
    """(scale, bias) minimising the log loss of sigmoid(scale * z + bias) on (z, y)."""
    t = platt_targets(np.asarray(y, np.float64))
    z = np.asarray(z, np.float64)
    with_bias = method == "platt"

    def loss(params):
        log_scale, bias = params[0], (params[1] if with_bias else 0.0)
        scale = np.exp(log_scale)
        u = scale * z + bias
        # log loss with softplus written stably: log(1 + e^u) = logaddexp(0, u)
        value = np.sum(t * np.logaddexp(0, -u) + (1 - t) * np.logaddexp(0, u))
        d = sigmoid(u) - t
        grad = [np.sum(d * scale * z)] + ([np.sum(d)] if with_bias else [])
        return value, np.array(grad)

    start = np.zeros(2 if with_bias else 1)
    bounds = [(-LOG_SCALE_BOUND, LOG_SCALE_BOUND)] + ([(None, None)] if with_bias else [])
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(result.x[0])), float(result.x[1]) if with_bias else 0.0


def fit_calibration(probs: np.ndarray, present: np.ndarray, y: np.ndarray, method: str = "platt",
                    modalities=("text", "audio", "video"), peer_base: bool = False) -> Calibration:
    """The calibration of every head and label from dev probabilities (N, 4, L), presence
    (N, 3) and targets (N, L).  The fusion is fitted on every row (peer_base: on the rows
    where more or fewer than one modality is present, since a lone modality's fused output
    is its peer's and takes the peer's calibration, Calibration.apply); a peer on the rows
    where its modality is present, and only when the bundle reads that modality (the engine
    publishes no other peer)."""
    if method not in METHODS:
        raise ValueError(f"calibration {method!r}: expected one of {', '.join(METHODS)} (or none)")
    probs, y = np.asarray(probs), np.asarray(y)
    identity = Calibration.identity(y.shape[1])
    scale, bias = identity.scale.copy(), identity.bias.copy()
    z = logit(probs)
    for h, head in enumerate(HEADS):
        if head == "fusion":
            rows = (np.asarray(present) > 0).sum(1) != 1 if peer_base else np.ones(len(y), bool)
        else:
            rows = np.asarray(present)[:, h - 1] > 0
        if (head != "fusion" and head not in modalities) or rows.sum() < MIN_ROWS:
            continue
        for j in range(y.shape[1]):
            scale[h, j], bias[h, j] = fit_label(z[rows, h, j], y[rows, j], method)
    return Calibration(method, scale, bias)


def calibrate_run(run: Path, info: dict, method: str = "platt", progress: bool = False) -> dict:
    """Fit the calibration of `run` on its dev split: {"calibration": Calibration (None: too
    few dev utterances),
    "thresholds": re-tuned on the calibrated fused probabilities, "summary": what the
    manifest and the card record (method, dev utterances, dev ECEs and weighted F1 before and
    after)}."""
    from trainer.evaluate import run_outputs, score, top_label_calibration, per_label_calibration
    from trainer.metrics import tune_thresholds

    probs, present, y, single_label = run_outputs(run, info["data"], "dev", info.get("media"), progress=progress)
    if len(y) < MIN_ROWS:
        return {"calibration": None, "thresholds": list(info["thresholds"]),
                "summary": {"method": "none", "why": f"{len(y)} dev utterances, fewer than {MIN_ROWS} to fit on"}}
    modalities = (info.get("student") or {}).get("modalities", HEADS[1:])
    peer_base = bool((info.get("student") or {}).get("peer_base", False))
    cal = fit_calibration(probs, present, y, method, modalities, peer_base)
    before, after = probs[:, 0], cal.apply(probs, present if peer_base else None)[:, 0]
    thresholds = tune_thresholds(after, y)

    def scores(p, th):
        return {"per_label_ece": per_label_calibration(p, y)["ece"], "top_label_ece": top_label_calibration(p, y)["ece"],
                "weighted_f1": score(p, y, info["labels"], th, single_label)["weighted_f1"]}

    summary = {"method": method, "file": "calibration.json", "fitted_on": "dev", "dev_utterances": int(len(y)),
               "uncalibrated_thresholds": [float(t) for t in info["thresholds"]],
               "dev": {"before": scores(before, info["thresholds"]), "after": scores(after, thresholds)}}
    return {"calibration": cal, "thresholds": [float(t) for t in thresholds], "summary": summary}
