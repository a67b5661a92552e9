"""Ablation of the student's losses on the synthetic corpus.

Configs, each trained with the same seeds on a 40-session corpus (epoch and thresholds
chosen on its dev sessions), then scored ONCE on a separate 10-session test corpus drawn
with another seed: weighted F1 of the fusion head, in percent.

  text_alone, audio_alone, video_alone   only that modality present (train and test), BCE only
  bce          all modalities, BCE on fusion + peers
  +lcc, +mdl, +nce, +sdt                 cumulative (+sdt: self-distillation, no teacher)
  full         + the FER face teacher's KD on the video head: the default recipe
  full+text_teacher   + KD from the text teacher of `trainer teach` (trained here, seed 0)
                      into the audio and video heads (TelME)

Writes benchmarks/results/synthetic_ablation.json after every finished run, so an
interrupted benchmark still leaves the numbers it has.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/synthetic_ablation.py [--corpus DIR] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import check_tree, result_json, write  # noqa: E402
from engines.faces import FaceOptions  # noqa: E402
from engines.preprocess import Preprocessing  # noqa: E402
from trainer.fit import TrainOptions, fit  # noqa: E402
from trainer.losses import LossWeights  # noqa: E402

OFF = dict(lcc=0.0, mdl=0.0, nce=0.0, response_kd=0.0, feature_kd=0.0, sdt=0.0)
CONFIGS = {
    "text_alone": (("text",), LossWeights(**OFF)),
    "audio_alone": (("audio",), LossWeights(**OFF)),
    "video_alone": (("video",), LossWeights(**OFF)),
    "bce": (None, LossWeights(**OFF)),
    "bce+lcc": (None, LossWeights(**{**OFF, "lcc": 1.0})),
    "bce+lcc+mdl": (None, LossWeights(**{**OFF, "lcc": 1.0, "mdl": 0.5})),
    "bce+lcc+mdl+nce": (None, LossWeights(**{**OFF, "lcc": 1.0, "mdl": 0.5, "nce": 1.0})),
    "bce+lcc+mdl+nce+sdt": (None, LossWeights(**{**OFF, "lcc": 1.0, "mdl": 0.5, "nce": 1.0, "sdt": 1.0})),
    "full": (None, LossWeights()),  # + face-teacher KD: the default recipe
    "full+text_teacher": (None, LossWeights()),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/ablation/corpus"))
    ap.add_argument("--test-corpus", type=Path, default=Path("/tmp/ablation/test-corpus"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ablation/runs"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20, help="warmup optimizer steps")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--loss", action="append", default=[], metavar="KEY=VALUE",
                    help="set a LossWeights field in every config, e.g. nce_temperature=0.5 (a term a "
                         "config switches off stays off)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/synthetic_ablation.json")
    args = ap.parse_args()
    check_tree()
    import torch

    from trainer.evaluate import evaluate
    from trainer.synth import generate

    torch.set_num_threads(args.threads)
    for corpus, sessions, seed in ((args.corpus, 40, 0), (args.test_corpus, 10, 1)):
        if not (corpus / "manifest.jsonl").exists():
            generate(corpus, sessions=sessions, seed=seed, progress=False)
    teacher = args.work / "text-teacher"
    if "full+text_teacher" in args.configs and not (teacher / "text_teacher.json").exists():
        from trainer.cli import main as trainer_main

        trainer_main(["--no-progress", "teach", "--data", f"synthetic:{args.corpus}", "--out", str(teacher)])
    t0 = time.perf_counter()
    scores: dict[str, list[float]] = {c: [] for c in args.configs}
    tests: dict[str, list[float]] = {c: [] for c in args.configs}
    for seed in args.seeds:  # seed-major: every config gets seed 0 before any gets seed 1
        for name in args.configs:
            modalities, weights = CONFIGS[name]
            for setting in args.loss:
                key, value = setting.split("=", 1)
                if getattr(weights, key) != 0.0 or key.endswith(("temperature", "tau")):
                    weights = replace(weights, **{key: float(value)})
            opts = TrainOptions(epochs=args.epochs, dim=args.dim, layers=args.layers, lr=args.lr,
                                warmup_steps=args.warmup, seed=seed,
                                cache_dir=str(args.work.parent / "cache"),
                                **({"modalities": modalities} if modalities else {}),
                                **({"text_teacher": str(teacher)} if name == "full+text_teacher" else {}))
            out = args.work / f"{name}-s{seed}"
            run = fit(f"synthetic:{args.corpus}", out, opts, Preprocessing(), FaceOptions(), progress=False,
                      loss=weights)
            scores[name].append(run["dev_weighted_f1"]["fusion"])
            report = evaluate(out, f"synthetic:{args.test_corpus}", "all", out / "test-report",
                              cache_dir=opts.cache_dir, progress=False)
            tests[name].append(report["metrics"]["weighted_f1"])
            print(f"{name} seed {seed}: dev weighted F1 {scores[name][-1]:.1f}, "
                  f"test {tests[name][-1]:.1f}", flush=True)
            write_results(args, t0, scores, tests)


def write_results(args, t0, scores, tests) -> None:
    metrics = {}
    done = {k: v for k, v in scores.items() if v}
    for name, values in done.items():
        metrics[f"{name}_dev_weighted_f1_mean"] = float(np.mean(values))
        metrics[f"{name}_test_weighted_f1_mean"] = float(np.mean(tests[name]))
        metrics[f"{name}_test_weighted_f1_std"] = float(np.std(tests[name]))
        metrics[f"{name}_runs"] = len(values)
    if "full" in done:
        metrics["fusion"] = metrics["full_test_weighted_f1_mean"]
    peers = [metrics[f"{p}_alone_test_weighted_f1_mean"] for p in ("text", "audio", "video") if f"{p}_alone" in done]
    if peers:
        metrics["best_single_peer"] = max(peers)
    metrics["runs_per_config"] = min(len(v) for v in scores.values())
    metrics["epochs"] = args.epochs
    metrics["dim"] = args.dim
    metrics["layers"] = args.layers
    notes = ("weighted F1 (percent) of the fusion head; epoch and thresholds chosen on the dev "
             "sessions (seed-drawn, 20% of 40); test = a separate 10-session corpus (synth seed 1) "
             "scored once per run; peer-alone configs see only that modality and train with BCE "
             "only; 'full' adds the FER face teacher's KD on the video head to "
             "bce+lcc+mdl+nce+sdt; 'full+text_teacher' adds the text teacher's KD")
    write(args.out, result_json("synthetic_ablation", t0, args.threads, metrics, notes=notes,
                                seeds_done={k: len(v) for k, v in scores.items()}, loss_overrides=args.loss))


if __name__ == "__main__":
    main()
