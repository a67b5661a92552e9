"""Scores for multi-label emotion predictions, in percent as the papers print them."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def is_single_label(corpus) -> bool:
    """Every utterance has exactly one label: scored with argmax, as their papers do."""
    return all(len(u.labels) == 1 for u in corpus.utterances)


def argmax_onehot(probs: np.ndarray) -> np.ndarray:
    """(N, L) float32 one-hots of each row's largest probability: the single-label prediction."""
    pred = np.zeros_like(probs, dtype=np.float32)
    pred[np.arange(len(probs)), probs.argmax(1)] = 1
    return pred


def tune_thresholds(probs: np.ndarray, y: np.ndarray, grid=np.linspace(0.05, 0.95, 19)) -> np.ndarray:
    """Per-label threshold that maximises that label's F1 (on dev data)."""
    best = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        if y[:, j].sum() == 0:
            continue
        scores = [f1_score(y[:, j], probs[:, j] >= t, zero_division=0) for t in grid]
        best[j] = grid[int(np.argmax(scores))]
    return best


def multilabel_scores(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    pred = probs >= thresholds[None, :]
    return {
        "weighted_f1": 100 * f1_score(y, pred, average="weighted", zero_division=0),
        "macro_f1": 100 * f1_score(y, pred, average="macro", zero_division=0),
        "micro_f1": 100 * f1_score(y, pred, average="micro", zero_division=0),
        "samples_f1": 100 * f1_score(y, pred, average="samples", zero_division=0),
    }
