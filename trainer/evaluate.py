"""`trainer evaluate RUN --data KIND:PATH --split test --report OUT`: score a run or a bundle once.

Single-label corpora (every utterance has exactly one label: MELD, IEMOCAP, CREMA-D)
are scored with argmax, as their papers score them: weighted F1, macro F1, accuracy
and per-class F1.  Multi-label corpora are scored at the run's thresholds (tuned on
dev) and additionally get micro and sample F1, mean average precision and Hamming
loss; their accuracy is the exact-match (subset) accuracy.  Both get two expected
calibration errors (ECE, 15 equal-width bins) of the sigmoid probabilities the stream
publishes, as they are (not renormalised over the labels):

  per-label ECE  every (utterance, label) probability against that label's 0/1 truth
  top-label ECE  (`ece`) each utterance's largest probability against whether that label is true

A bundle with a calibration (engines.calibration) is scored as the stream publishes it,
calibrated, and also before calibration (`uncalibrated`: its graphs' own probabilities at the
run's own thresholds), so the report shows what calibration changed.  Two figures:

  confusion.png    true label (rows) x predicted label (columns), counts; for a
                   multi-label corpus a sample adds 1 for each (true, predicted) pair
  reliability.png  the reliability diagrams behind both ECEs (before and after calibration)

RUN is a run directory of `trainer fit` (its student in PyTorch) or a bundle of
`trainer export` (scored as the pipeline runs it: ONNX Runtime on the fusion stage's
Windows), so a bundle can be scored on a corpus the project never saw.
OUT gets report.json (everything; `source` says run or bundle) and report.md (the same,
for people).
All scores are in percent except Hamming loss and ECE (fractions in [0, 1]).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, hamming_loss
from tqdm import tqdm

from common.atomic import replacing, write_file
from common.errors import MissingInput
from engines.bundle import MANIFEST, model_id
from engines.faces import FaceOptions
from engines.preprocess import Preprocessing
from trainer.data import Corpus, DataError, media_files, targets, text_windows, with_speech_padding
from trainer.datasets import load
from trainer.datasets.mix import on_labels
from trainer.metrics import argmax_onehot, is_single_label

N_BINS = 15


# --------------------------------------------------------------------------- metrics


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> dict:
    """ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over equal-width confidence bins."""
    confidence, correct = np.asarray(confidence, float).ravel(), np.asarray(correct, float).ravel()
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        if not sel.any():
            bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": 0})
            continue
        acc, conf = float(correct[sel].mean()), float(confidence[sel].mean())
        ece += sel.sum() / max(len(confidence), 1) * abs(acc - conf)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(sel.sum()),
                     "accuracy": acc, "confidence": conf})
    return {"ece": float(ece), "bins": bins}


def per_label_calibration(probs: np.ndarray, y: np.ndarray) -> dict:
    """ECE of every (utterance, label) probability against that label's 0/1 truth."""
    return calibration(probs, y)


def top_label_calibration(probs: np.ndarray, y: np.ndarray) -> dict:
    """ECE of each utterance's largest probability against whether its label is true."""
    top = np.asarray(probs).argmax(1)
    return calibration(np.asarray(probs)[np.arange(len(top)), top], np.asarray(y)[np.arange(len(top)), top])


def calibration_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """Both ECEs with their bins, and the per-label ECE of each label alone."""
    per_label, top = per_label_calibration(probs, y), top_label_calibration(probs, y)
    return {"ece": top["ece"], "calibration_bins": top["bins"],
            "per_label_ece": per_label["ece"], "per_label_bins": per_label["bins"],
            "ece_by_label": {label: calibration(probs[:, j], y[:, j])["ece"] for j, label in enumerate(labels)}}


def single_label_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """Argmax scores: the prediction is the label with the highest probability."""
    truth, pred = y.argmax(1), probs.argmax(1)
    ids = list(range(len(labels)))
    per_class = f1_score(truth, pred, labels=ids, average=None, zero_division=0)
    return {
        "scoring": "argmax (single-label)",
        "weighted_f1": 100 * f1_score(truth, pred, labels=ids, average="weighted", zero_division=0),
        "macro_f1": 100 * f1_score(truth, pred, labels=ids, average="macro", zero_division=0),
        "accuracy": 100 * float((truth == pred).mean()),
        "per_class_f1": {label: 100 * float(f) for label, f in zip(labels, per_class)},
        **calibration_metrics(probs, y, labels),
    }


def multi_label_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str],
                        thresholds: np.ndarray) -> dict:
    """Thresholded scores, plus mAP over the labels that occur, and Hamming loss."""
    pred = (probs >= np.asarray(thresholds)[None, :]).astype(np.float32)
    occurring = y.sum(0) > 0
    ap = [average_precision_score(y[:, j], probs[:, j]) for j in np.flatnonzero(occurring)]
    per_class = f1_score(y, pred, average=None, zero_division=0)
    return {
        "scoring": "thresholds tuned on dev (multi-label)",
        "weighted_f1": 100 * f1_score(y, pred, average="weighted", zero_division=0),
        "macro_f1": 100 * f1_score(y, pred, average="macro", zero_division=0),
        "micro_f1": 100 * f1_score(y, pred, average="micro", zero_division=0),
        "samples_f1": 100 * f1_score(y, pred, average="samples", zero_division=0),
        "accuracy": 100 * float((pred == y).all(1).mean()),
        "mAP": 100 * float(np.mean(ap)) if ap else 0.0,
        "hamming_loss": float(hamming_loss(y, pred)),
        "per_class_f1": {label: 100 * float(f) for label, f in zip(labels, per_class)},
        **calibration_metrics(probs, y, labels),
    }


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(L, L) counts of (true label, predicted label) pairs; argmax one-hots give the usual matrix."""
    return (y.T @ pred).astype(np.int64)


# --------------------------------------------------------------------------- figures


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.6 * len(labels)))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_reliability(panels: dict[str, tuple[list[dict], float]], path: Path) -> None:
    """One reliability diagram per panel (title -> (bins, ECE)), side by side, two per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4.5 * rows), squeeze=False)
    for ax, (title, (bins, ece)) in zip(axes.ravel(), panels.items()):
        _reliability_panel(ax, bins, ece, title)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _reliability_panel(ax, bins: list[dict], ece: float, title: str) -> None:
    width = bins[0]["hi"] - bins[0]["lo"]
    for b in bins:
        if b["count"]:
            ax.bar(b["lo"], b["accuracy"], width=width, align="edge", color="tab:blue", edgecolor="black")
            ax.bar(b["lo"], b["confidence"] - b["accuracy"], bottom=b["accuracy"], width=width,
                   align="edge", color="tab:red", alpha=0.3)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("probability")
    ax.set_ylabel("fraction true")
    ax.set_title(f"{title} (ECE {ece:.3f})")


# --------------------------------------------------------------------------- command


def score(probs: np.ndarray, y: np.ndarray, labels: list[str], thresholds, single_label: bool) -> dict:
    if single_label:
        return single_label_metrics(probs, y, labels)
    return multi_label_metrics(probs, y, labels, np.asarray(thresholds))


# Windows per Engine.infer call when scoring a bundle: one ONNX Runtime call per 64
# utterances instead of one per utterance (MELD test: about a minute, not ten).
BUNDLE_BATCH = 64


@dataclass
class Scored:
    """Fusion probabilities of one model on one split, with what scoring them needs."""

    probs: np.ndarray  # (N, L)
    y: np.ndarray  # (N, L) 0/1 targets
    labels: list[str]
    thresholds: list[float]
    single_label: bool
    model: Path
    source: str  # "run" or "bundle"
    backend: str  # what computed probs: "torch" (a run) or "onnxruntime" (a bundle)
    # A calibrated bundle's graphs' own probabilities (N, L) and the run's thresholds for
    # them; None where nothing was calibrated (a run, or a bundle without calibration).
    raw: np.ndarray | None = None
    raw_thresholds: list[float] | None = None


def model_kind(path: Path) -> str:
    """"run" (a `trainer fit` directory) or "bundle" (a `trainer export` directory)."""
    if (path / "run.json").is_file():
        return "run"
    if (path / MANIFEST).is_file():
        return "bundle"
    raise MissingInput(f"{path}: neither a run directory of `trainer fit` (no run.json) nor a model "
                            f"bundle of `trainer export` (no {MANIFEST})")


def _corpus(data_spec: str, split: str, media, dev_fraction: float, seed: int, labels: list[str],
            speech_pad_ms: int):
    """The utterances of `split`, cut as the model's training cut them."""
    corpus = with_speech_padding(load(data_spec, media, dev_fraction, seed), speech_pad_ms)
    if split == "all":
        corpus = Corpus(corpus.labels, [replace(u, split="all") for u in corpus.utterances])
    if not corpus.split(split):
        raise DataError(f"{data_spec}: no utterances in split {split!r}")
    return on_labels(corpus, labels, data_spec)  # the model's label order; Ekman relabelling


def run_outputs(run: Path, data_spec: str, split: str, media=None, cache_dir: str | None = None,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The run's student in PyTorch on the trainer's inputs (trainer.fit.build_inputs) of
    `split`: every head's probabilities (N, 4, L), presence (N, 3), targets (N, L), and
    whether the corpus is single-label."""
    from trainer.fit import TrainOptions, build_inputs, load_run, predict
    from trainer.text_encoder import SentenceEncoder

    info, model = load_run(run)
    known = {f.name for f in fields(TrainOptions)}
    opts = TrainOptions(**{k: v for k, v in info["options"].items() if k in known})
    if cache_dir is not None:
        opts = replace(opts, cache_dir=cache_dir)
    # Runs from before span padding were trained on the manifest's spans as they are.
    corpus = _corpus(data_spec, split, media, opts.dev_fraction, opts.seed, info["labels"],
                     info.get("speech_pad_ms", 0))
    pre = Preprocessing.from_dict(info["preprocessing"])
    data = build_inputs(corpus, split, pre, FaceOptions(**info["faces"]), opts,
                        SentenceEncoder.for_preprocessing(info["text_encoder"], pre), progress)
    return (predict(model, data), data["present"].numpy(), targets(corpus.split(split), corpus.labels),
            is_single_label(corpus))


def run_scores(run: Path, data_spec: str, split: str, media=None, cache_dir: str | None = None,
               progress: bool = True) -> Scored:
    """The run's fused probabilities (run_outputs)."""
    from trainer.fit import load_run

    info, _ = load_run(run)
    probs, _, y, single_label = run_outputs(run, data_spec, split, media, cache_dir, progress)
    return Scored(probs[:, 0], y, info["labels"], info["thresholds"], single_label, run, "run", "torch")


def bundle_scores(bundle: Path, data_spec: str, split: str, media=None, progress: bool = True) -> Scored:
    """The bundle as the pipeline runs it: ONNX Runtime, Engine.infer on the Windows the
    trainer builds for the fusion stage's view of each utterance (engines.features)."""
    import engines
    from engines.features import decode

    engine = engines.load(bundle, backend="onnxruntime", device="cpu", threads=min(os.cpu_count() or 1, 4))
    training = engine.bundle.entries.training or {}
    # Bundles exported before these were recorded: the defaults of `trainer fit`, tight spans.
    corpus = _corpus(data_spec, split, media, training.get("dev_fraction", 0.2), training.get("seed", 0),
                     engine.labels, training.get("speech_pad_ms", 0))
    utts = corpus.split(split)
    pre, faces = engine.pre, engine.bundle.faces  # the [faces] it was trained with, as realtime runs it
    windows = text_windows(utts, pre.context_turns)
    probs = np.zeros((len(utts), len(engine.labels)), np.float32)
    calibrated = not engine.calibration.is_identity
    raw = np.zeros_like(probs) if calibrated else None
    by_file = media_files(utts)
    with_media = {i for indices in by_file.values() for i in indices}

    def in_turn():
        """Utterance indices in scoring order, each window complete when its index comes:
        the text-only ones, then file by file (each recording decoded once)."""
        yield from (i for i in range(len(utts)) if i not in with_media)
        for file, indices in by_file.items():
            recording = decode(file, pre, faces)
            for i in indices:
                windows[i] = recording.window(utts[i].start, utts[i].end, text=windows[i].text,
                                              context=windows[i].context, speaker=windows[i].speaker)
                yield i

    pending: list[int] = []

    def flush(bar) -> None:
        if not pending:
            return
        feeds = engine.features([windows[i] for i in pending])
        for i, pred in zip(pending, engine.predict(feeds)):
            probs[i] = [pred.probabilities[label] for label in engine.labels]
            windows[i].audio, windows[i].crops = None, []  # scored: let the media go
        for i, pred in zip(pending, engine.predict(feeds, calibrated=False) if calibrated else []):
            raw[i] = [pred.probabilities[label] for label in engine.labels]
        bar.update(len(pending))
        pending.clear()

    with tqdm(total=len(utts), desc=f"scoring {split}", unit="utt", disable=not progress) as bar:
        for i in in_turn():
            pending.append(i)
            if len(pending) == BUNDLE_BATCH:
                flush(bar)
        flush(bar)
    raw_thresholds = (engine.bundle.entries.calibration or {}).get("uncalibrated_thresholds")
    return Scored(probs, targets(utts, corpus.labels), engine.labels, engine.bundle.thresholds,
                  is_single_label(corpus), bundle, "bundle", "onnxruntime", raw,
                  raw_thresholds if calibrated else None)


def bundle_id(bundle: Path) -> str:
    return model_id(json.loads((Path(bundle) / MANIFEST).read_text()))


def model_scores(model: Path, data_spec: str, split: str, media: str | Path | None = None,
                 cache_dir: str | None = None, progress: bool = True) -> Scored:
    """The fusion probabilities of `model` on `split` of `data_spec` ("all": every utterance).

    model: a run directory (`trainer fit`; its student in PyTorch) or a bundle (`trainer
    export`; ONNX Runtime, as the pipeline runs it), on any corpus kind `fit` reads.
    cache_dir: the media feature cache of a run's scoring (a bundle decodes as it goes).
    """
    model = Path(model)
    if model_kind(model) == "run":
        return run_scores(model, data_spec, split, media, cache_dir, progress)
    return bundle_scores(model, data_spec, split, media, progress)


def write_report(scored: Scored, data_spec: str, split: str, report: Path) -> dict:
    """Metrics, figures, report.json and report.md of scored probabilities."""
    probs, y, labels = scored.probs, scored.y, scored.labels
    metrics = score(probs, y, labels, scored.thresholds, scored.single_label)
    thresholds = np.asarray(scored.thresholds)
    pred = argmax_onehot(probs) if scored.single_label else (probs >= thresholds).astype(np.float32)
    matrix = confusion(y, pred)

    report = Path(report)
    report.mkdir(parents=True, exist_ok=True)
    plot_confusion(matrix, labels, report / "confusion.png", f"{split}: {len(y)} utterances")
    result = {"model": str(scored.model), "source": scored.source, "backend": scored.backend, "data": data_spec,
              "split": split, "utterances": int(len(y)), "labels": labels, "single_label": scored.single_label,
              # which bundle was scored (engines.bundle.model_id): `trainer card` puts the report
              # on that bundle's card only, never on a newer export's
              "bundle_id": bundle_id(scored.model) if scored.source == "bundle" else None,
              "calibrated": scored.raw is not None, "metrics": metrics}
    after = "calibrated" if scored.raw is not None else "as published"
    panels = {f"per-label, {after}": (metrics["per_label_bins"], metrics["per_label_ece"]),
              f"top-label, {after}": (metrics["calibration_bins"], metrics["ece"])}
    if scored.raw is not None:
        # Before calibration: the graphs' own probabilities at the thresholds tuned for them.
        before = score(scored.raw, y, labels, scored.raw_thresholds or scored.thresholds, scored.single_label)
        result["uncalibrated"] = before
        panels = {"per-label, before calibration": (before["per_label_bins"], before["per_label_ece"]),
                  "top-label, before calibration": (before["calibration_bins"], before["ece"]), **panels}
    plot_reliability(panels, report / "reliability.png")
    result.update(confusion=matrix.tolist(), figures=["confusion.png", "reliability.png"])
    write_file(report / "report.md", markdown(result))
    write_file(report / "report.json", json.dumps(result, indent=2) + "\n")  # last: a report is complete
    return result


def evaluate(model: Path, data_spec: str, split: str, report: Path, media: str | Path | None = None,
             cache_dir: str | None = None, progress: bool = True) -> dict:
    """`trainer evaluate`: score `model` (a run or a bundle, see `model_scores`) and write the report."""
    return write_report(model_scores(model, data_spec, split, media, cache_dir, progress), data_spec, split, report)


def markdown(result: dict) -> str:
    m = result["metrics"]
    lines = [f"# Evaluation of {result['source']} {result['model']}", "",
             f"Scored by {result['backend']}.", "",
             f"Data `{result['data']}`, split `{result['split']}`, {result['utterances']} utterances; "
             f"scoring: {m['scoring']}.", "", "| metric | value |", "|---|---|"]
    for key in ("weighted_f1", "macro_f1", "micro_f1", "samples_f1", "accuracy", "mAP"):
        if key in m:
            lines.append(f"| {key} (%) | {m[key]:.2f} |")
    if "hamming_loss" in m:
        lines.append(f"| hamming_loss | {m['hamming_loss']:.4f} |")
    lines += [f"| per-label ECE | {m['per_label_ece']:.4f} |", f"| top-label ECE | {m['ece']:.4f} |"]
    before = result.get("uncalibrated")
    if before:
        lines += ["", "Calibration (engines.calibration; the stream publishes the calibrated probabilities):", "",
                  "| | before | after |", "|---|---|---|",
                  f"| per-label ECE | {before['per_label_ece']:.4f} | {m['per_label_ece']:.4f} |",
                  f"| top-label ECE | {before['ece']:.4f} | {m['ece']:.4f} |",
                  f"| weighted_f1 (%) | {before['weighted_f1']:.2f} | {m['weighted_f1']:.2f} |"]
    lines += ["", "| label | F1 (%) | ECE |", "|---|---|---|"]
    lines += [f"| {label} | {f:.2f} | {m['ece_by_label'][label]:.4f} |" for label, f in m["per_class_f1"].items()]
    lines += ["", "![confusion matrix](confusion.png)", "", "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)
