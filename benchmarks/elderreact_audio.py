"""ElderReact, audio only: the 148 COVAREP features -> 6 emotions, multi-label.

  python benchmarks/elderreact_audio.py [--data /work/shared/data/elderreact] [--out FILE]

Features standardised on train; a logistic-regression baseline (one per label) and a
small MLP (sigmoid/BCE), both chosen on dev (regularisation / epoch), per-label thresholds
tuned on dev, test scored once.  Metrics: weighted/macro/micro F1 in percent.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def result_json(name: str, started: float, threads: int, metrics: dict, **extra) -> dict:
    from benchmarks.engine_latency import environment

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"benchmark": name, "commit": commit or None,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "environment": environment(threads), **extra,
            "metrics": {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in metrics.items()}}


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=1))
    print(f"wrote {out}")


def arrays(corpus, split):
    us = corpus.split(split)
    us = [u for u in us if "audio_features" in u.extra]
    x = np.array([u.extra["audio_features"] for u in us], dtype=np.float64)
    y = np.array([[label in u.labels for label in corpus.labels] for u in us], dtype=np.float32)
    return x, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/elderreact")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, default=5, help="MLP seeds averaged (probabilities)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/elderreact_audio.json")
    args = p.parse_args(argv)
    started = time.perf_counter()
    import torch
    from sklearn.linear_model import LogisticRegression

    from trainer.datasets import load
    from trainer.metrics import multilabel_scores, tune_thresholds

    torch.set_num_threads(args.threads)
    corpus = load(f"elderreact:{args.data}")
    (xtr, ytr), (xdv, ydv), (xte, yte) = (arrays(corpus, s) for s in ("train", "dev", "test"))
    # COVAREP has -inf/nan in places (log energies of silence): replace by train medians.
    bad = {s: int((~np.isfinite(x)).sum()) for s, x in (("train", xtr), ("dev", xdv), ("test", xte))}
    xtr_f = np.where(np.isfinite(xtr), xtr, np.nan)
    med = np.nan_to_num(np.nanmedian(xtr_f, 0))
    fix = lambda x: np.where(np.isfinite(x), x, med)
    xtr, xdv, xte = fix(xtr), fix(xdv), fix(xte)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd < 1e-8] = 1.0
    z = lambda x: np.clip((x - mu) / sd, -10, 10)
    xtr, xdv, xte = z(xtr), z(xdv), z(xte)
    metrics: dict = {"n_train": len(xtr), "n_dev": len(xdv), "n_test": len(xte),
                     "nonfinite_values_train": bad["train"], "nonfinite_values_dev": bad["dev"],
                     "nonfinite_values_test": bad["test"]}
    for j, label in enumerate(corpus.labels):
        metrics[f"positive_rate_test_{label}"] = round(float(yte[:, j].mean()), 4)

    # Logistic regression: C per label chosen on dev by that label's best-threshold F1.
    from sklearn.metrics import f1_score
    def lr_probs(C):
        models = [LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(xtr, ytr[:, j])
                  for j in range(ytr.shape[1])]
        return (np.stack([m.predict_proba(x)[:, 1] for m in models], 1) for x in (xdv, xte))
    best = None
    for C in (0.001, 0.01, 0.1, 1.0):
        pdv, pte = lr_probs(C)
        s = multilabel_scores(pdv, ydv, tune_thresholds(pdv, ydv))["weighted_f1"]
        print(f"logreg C={C}: dev weighted F1 {s:.2f}")
        if best is None or s > best[0]:
            best = (s, C, pdv, pte)
    s, C, pdv, pte = best
    th = tune_thresholds(pdv, ydv)
    metrics["logreg_C"] = C
    metrics["logreg_dev_weighted_f1"] = s
    for k, v in multilabel_scores(pte, yte, th).items():
        metrics[f"logreg_{k}"] = v

    # Small MLP: 148 -> 128 -> 6, dropout, BCE, epoch chosen on dev; seeds averaged.
    def mlp(seed, hidden=128, dropout=0.5, wd=1e-3, epochs=100):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(148, hidden), torch.nn.ReLU(),
                                  torch.nn.Dropout(dropout), torch.nn.Linear(hidden, ytr.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=wd)
        pos = torch.tensor(ytr.mean(0))
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=((1 - pos) / pos.clamp(min=1e-3)).sqrt())
        X, Y = torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr)
        Xd, Xt = torch.tensor(xdv, dtype=torch.float32), torch.tensor(xte, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        best = (np.inf, None, None, 0)
        Yd = torch.tensor(ydv)
        for ep in range(epochs):
            net.train()
            for b in torch.randperm(len(X), generator=g).split(32):
                opt.zero_grad()
                loss_fn(net(X[b]), Y[b]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                # Epoch chosen by dev BCE (cheap); thresholds are tuned once at the end.
                out = net(Xd)
                dev_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(out, Yd))
                if dev_loss < best[0]:
                    best = (dev_loss, torch.sigmoid(out).numpy(), torch.sigmoid(net(Xt)).numpy(), ep + 1)
        return best
    runs = [mlp(seed) for seed in range(args.seeds)]
    pdv = np.mean([r[1] for r in runs], 0)
    pte = np.mean([r[2] for r in runs], 0)
    th = tune_thresholds(pdv, ydv)
    metrics["mlp_seeds"] = args.seeds
    metrics["mlp_epochs_chosen_mean"] = float(np.mean([r[3] for r in runs]))
    metrics["mlp_dev_weighted_f1"] = multilabel_scores(pdv, ydv, th)["weighted_f1"]
    for k, v in multilabel_scores(pte, yte, th).items():
        metrics[f"mlp_{k}"] = v
    # Reference points: predict every label positive; per-label prior thresholds.
    metrics["all_positive_weighted_f1"] = multilabel_scores(np.ones_like(yte), yte, np.full(6, 0.5))["weighted_f1"]
    metrics["weighted_f1"] = metrics["mlp_weighted_f1"]
    metrics["macro_f1"] = metrics["mlp_macro_f1"]
    write(args.out, result_json("elderreact_audio", started, args.threads, metrics,
                                model="MLP 148-128-6 (dropout), mean of seeds; logreg baseline"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
