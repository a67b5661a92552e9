"""Ablation of the student's losses on the synthetic corpus.

Configs, each trained with the same seeds on a 40-session corpus (epoch and thresholds
chosen on its dev sessions, which the seed draws), then scored ONCE on a separate test
corpus drawn with another seed (100 sessions, 600 utterances): weighted F1 of the fusion
head, in percent.

  text_alone, audio_alone, video_alone   only that modality present (train and test), BCE only
  bce          all modalities, BCE on fusion + peers
  +lcc, +mdl, +nce, +sdt                 cumulative (+sdt: self-distillation, no teacher)
  full         + the FER face teacher's KD on the video head: the default recipe
  full+text_teacher   + KD from the text teacher of `trainer teach` into the audio and video
                      heads (TelME); one teacher per seed, trained on that seed's training
                      sessions only, so it never saw the dev sessions that choose the epoch

Per config: the mean over seeds and its 95% interval (Student's t over the seeds); and the
difference from `bce` with the same seeds, with its paired 95% interval.  Nothing is chosen
here: the test numbers are reported as they come.

Writes benchmarks/results/synthetic_ablation.json after every finished run, so an
interrupted benchmark still leaves the numbers it has.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/synthetic_ablation.py [--corpus DIR] [--seeds 0 1 2 3 4]
"""
from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--sessions", type=int, default=40, help="sessions of the training corpus (train and dev)")
    ap.add_argument("--test-corpus", type=Path, default=Path("/tmp/ablation/test-corpus-100"))
    ap.add_argument("--test-sessions", type=int, default=100, help="sessions of the test corpus (6 utterances each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ablation/runs"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
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
    from trainer.synth import generate

    for corpus, sessions, seed in ((args.corpus, args.sessions, 0), (args.test_corpus, args.test_sessions, 1)):
        if not (corpus / "manifest.jsonl").exists():
            generate(corpus, sessions=sessions, seed=seed, progress=False)
        found = len({row["session"] for row in manifest_rows(corpus)})
        if found != sessions:
            raise SystemExit(f"{corpus} holds {found} sessions, not {sessions}: remove it or name another folder")
    t0 = time.perf_counter()
    runs = [(name, seed) for seed in args.seeds for name in args.configs]  # seed-major
    results: dict[tuple[str, int], tuple[float, float]] = {}  # (config, seed) -> (dev, test)

    def record(job: tuple[str, int], scores: tuple[float, float]) -> None:
        results[job] = scores
        print(f"{job[0]} seed {job[1]}: dev weighted F1 {scores[0]:.1f}, test {scores[1]:.1f}", flush=True)
        write_results(args, t0, results)

    if args.jobs == 1:
        for job in runs:
            record(job, one_run(args, *job))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(one_run, args, *job): job for job in runs}
        for future in as_completed(futures):
            record(futures[future], future.result())


def one_run(args, name: str, seed: int) -> tuple[float, float]:
    """Train config `name` with `seed`, score its test corpus once: (dev, test) weighted F1.
    A run whose test report is on disk already is read back (an interrupted benchmark resumes)."""
    import torch

    from trainer.evaluate import evaluate

    torch.set_num_threads(args.threads)
    out = args.work / f"{name}-s{seed}"
    report_file = out / "test-report" / "report.json"
    if report_file.is_file() and (out / "run.json").is_file():
        dev = json.loads((out / "run.json").read_text())["dev_weighted_f1"]["fusion"]
        return dev, json.loads(report_file.read_text())["metrics"]["weighted_f1"]
    modalities, weights = CONFIGS[name]
    for setting in args.loss:
        key, value = setting.split("=", 1)
        if getattr(weights, key) != 0.0 or key.endswith(("temperature", "tau")):
            weights = replace(weights, **{key: float(value)})
    opts = TrainOptions(epochs=args.epochs, dim=args.dim, layers=args.layers, lr=args.lr,
                        warmup_steps=args.warmup, seed=seed, cache_dir=str(args.work.parent / "cache"),
                        **({"modalities": modalities} if modalities else {}),
                        **({"text_teacher": str(text_teacher(args, seed))} if name == "full+text_teacher" else {}))
    run = fit(f"synthetic:{args.corpus}", out, opts, Preprocessing(), FaceOptions(), progress=False, loss=weights)
    report = evaluate(out, f"synthetic:{args.test_corpus}", "all", out / "test-report", cache_dir=opts.cache_dir,
                      progress=False)
    return run["dev_weighted_f1"]["fusion"], report["metrics"]["weighted_f1"]


def manifest_rows(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]


def text_teacher(args, seed: int) -> Path:
    """The text teacher of one seed: `trainer teach` with that seed's split of the corpus (teach
    and fit draw the dev sessions alike from [train] seed), so it never saw that seed's dev."""
    teacher = args.work / f"text-teacher-s{seed}"
    if not (teacher / "text_teacher.json").exists():
        from trainer.cli import main as trainer_main

        trainer_main(["--no-progress", "--set", f"train.seed={seed}", "teach", "--data", f"synthetic:{args.corpus}",
                      "--out", str(teacher)])
    return teacher


def interval(values) -> tuple[float, float]:
    """95% interval of the mean of `values` (Student's t); a point when there is one value."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def write_results(args, t0, results: dict[tuple[str, int], tuple[float, float]]) -> None:
    metrics = {}
    seeds = {name: sorted(s for n, s in results if n == name) for name in args.configs}
    done = {name: s for name, s in seeds.items() if s}
    for name, runs in done.items():
        dev = [results[(name, s)][0] for s in runs]
        test = [results[(name, s)][1] for s in runs]
        metrics[f"{name}_dev_weighted_f1_mean"] = float(np.mean(dev))
        metrics[f"{name}_test_weighted_f1_mean"] = float(np.mean(test))
        metrics[f"{name}_test_weighted_f1_std"] = float(np.std(test, ddof=1)) if len(test) > 1 else 0.0
        low, high = interval(test)
        metrics[f"{name}_test_weighted_f1_ci95_low"], metrics[f"{name}_test_weighted_f1_ci95_high"] = low, high
        paired = [s for s in runs if ("bce", s) in results]
        if name != "bce" and paired:
            diff = np.array([results[(name, s)][1] - results[("bce", s)][1] for s in paired])
            metrics[f"{name}_minus_bce_mean"] = float(diff.mean())
            metrics[f"{name}_minus_bce_ci95_low"], metrics[f"{name}_minus_bce_ci95_high"] = interval(diff)
        metrics[f"{name}_runs"] = len(runs)
    if "full" in done:
        metrics["fusion"] = metrics["full_test_weighted_f1_mean"]
    peers = [metrics[f"{p}_alone_test_weighted_f1_mean"] for p in ("text", "audio", "video") if f"{p}_alone" in done]
    if peers:
        metrics["best_single_peer"] = max(peers)
    metrics["runs_per_config"] = min(len(v) for v in seeds.values())
    metrics["epochs"] = args.epochs
    metrics["dim"] = args.dim
    metrics["layers"] = args.layers
    notes = ("weighted F1 (percent) of the fusion head; epoch and thresholds chosen on the dev "
             f"sessions (seed-drawn, 20% of {args.sessions}); test = a separate {args.test_sessions}-session corpus "
             "(synth seed 1) scored once per run; ci95: Student's t over seeds; minus_bce: paired by "
             "seed; peer-alone configs see only that modality and train with BCE "
             "only; 'full' adds the FER face teacher's KD on the video head to "
             "bce+lcc+mdl+nce+sdt; 'full+text_teacher' adds the KD of a text teacher per seed, "
             "trained on that seed's training sessions")
    write(args.out, result_json("synthetic_ablation", t0, args.threads, metrics, notes=notes,
                                seeds_done={k: len(v) for k, v in seeds.items()}, loss_overrides=args.loss,
                                test_utterances=len(manifest_rows(args.test_corpus))))


if __name__ == "__main__":
    main()
