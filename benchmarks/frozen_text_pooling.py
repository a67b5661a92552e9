"""Which input should a FROZEN sentence encoder read: the utterance, or TelME's prompt?

  python benchmarks/frozen_text_pooling.py [--dialogues 350] [--turns 0 4 8]

MELD train (whole dialogues drawn by seed, so every utterance keeps its context) and the
full dev split; all-MiniLM-L6-v2 frozen; logistic regression on the L2-normalised
embedding, C chosen on dev; dev weighted F1 in percent.  Inputs: the utterance alone
(`[features] text_pooling = "mean"`) and the prompt of `engines.dialogue` with 0, 4, 8
past turns read at its mask token (`text_pooling = "mask"`), as the student would read
them with this encoder left frozen.  No test
split is used: this decides a default, it reports nothing final.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import check_tree, result_json, write  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="meld:/work/shared/data/meld")
    p.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--dialogues", type=int, default=350, help="train dialogues drawn (0: all)")
    p.add_argument("--turns", type=int, nargs="+", default=[0, 4, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/frozen_text_pooling.json")
    args = p.parse_args(argv)
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from engines.preprocess import Preprocessing
    from trainer.datasets import load
    from trainer.fit import embed_texts, student_texts
    from trainer.text_encoder import SentenceEncoder

    torch.set_num_threads(args.threads)
    corpus = load(args.data)
    train, dev = corpus.split("train"), corpus.split("dev")
    if args.dialogues:
        dialogues = sorted({u.extra["dialogue"] for u in train})
        rng = np.random.default_rng(args.seed)
        keep = set(rng.choice(dialogues, min(args.dialogues, len(dialogues)), replace=False))
        train = [u for u in train if u.extra["dialogue"] in keep]
    y = {name: np.array([corpus.labels.index(u.labels[0]) for u in us]) for name, us in (("train", train), ("dev", dev))}

    def score(pre: Preprocessing) -> float:
        encoder = SentenceEncoder.for_preprocessing(args.encoder, pre)
        x = {name: embed_texts(encoder, student_texts(us, pre), pre) for name, us in (("train", train), ("dev", dev))}
        best = 0.0
        for c in (0.3, 1.0, 3.0, 10.0):
            model = LogisticRegression(C=c, max_iter=3000).fit(x["train"], y["train"])
            best = max(best, f1_score(y["dev"], model.predict(x["dev"]), average="weighted"))
        return 100 * best

    base = Preprocessing(text_max_tokens=128)
    metrics = {"n_train": len(train), "n_dev": len(dev), "utterance_mean": score(base)}
    print(metrics, flush=True)
    sep, mask = SentenceEncoder(args.encoder).special_tokens()
    for turns in args.turns:
        pre = Preprocessing(text_max_tokens=128, text_pooling="mask", text_context_turns=turns,
                            text_sep=sep, text_mask=mask)
        metrics[f"prompt_turns{turns}_mask"] = score(pre)
        print(metrics, flush=True)
    write(args.out, result_json("frozen_text_pooling", started, args.threads, metrics,
                                model=f"{args.encoder} frozen + logistic regression; dev weighted F1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
