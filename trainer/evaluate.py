"""`trainer evaluate RUN --data KIND:PATH --split test --report OUT`: score a run or a bundle once.

Single-label corpora (every utterance has exactly one label: MELD, IEMOCAP, CREMA-D)
are scored with argmax, as their papers score them: weighted F1, macro F1, accuracy
and per-class F1.  Multi-label corpora are scored at the run's thresholds (tuned on
dev) and additionally get micro and sample F1, mean average precision and Hamming
loss; their accuracy is the exact-match (subset) accuracy.  Both get the expected
calibration error (ECE, 15 equal-width bins) and two figures:

  confusion.png    true label (rows) x predicted label (columns), counts; for a
                   multi-label corpus a sample adds 1 for each (true, predicted) pair
  reliability.png  the reliability diagram behind the ECE

RUN is a run directory of `trainer fit` (its student in PyTorch) or a bundle of
`trainer export` (scored as the pipeline runs it: ONNX Runtime on the fusion stage's
Windows), so a bundle can be scored on a corpus the project never saw.
OUT gets report.json (everything; `source` says run or bundle) and report.md (the same,
for people).
All scores are in percent except Hamming loss and ECE (fractions in [0, 1]).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from engines.atomic import replacing, write_file
from engines.faces import FaceOptions
from engines.preprocess import Preprocessing

N_BINS = 15


# --------------------------------------------------------------------------- metrics


def argmax_onehot(probs: np.ndarray) -> np.ndarray:
    pred = np.zeros_like(probs, dtype=np.float32)
    pred[np.arange(len(probs)), probs.argmax(1)] = 1
    return pred


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


def single_label_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """Argmax scores: the prediction is the label with the highest probability."""
    truth, pred = y.argmax(1), probs.argmax(1)
    ids = list(range(len(labels)))
    per_class = f1_score(truth, pred, labels=ids, average=None, zero_division=0)
    # confidence of the argmax, renormalised over the labels (the heads are sigmoids)
    norm = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
    cal = calibration(norm.max(1), pred == truth)
    return {
        "scoring": "argmax (single-label)",
        "weighted_f1": 100 * f1_score(truth, pred, labels=ids, average="weighted", zero_division=0),
        "macro_f1": 100 * f1_score(truth, pred, labels=ids, average="macro", zero_division=0),
        "accuracy": 100 * float((truth == pred).mean()),
        "per_class_f1": {label: 100 * float(f) for label, f in zip(labels, per_class)},
        "ece": cal["ece"],
        "calibration_bins": cal["bins"],
    }


def multi_label_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str],
                        thresholds: np.ndarray) -> dict:
    """Thresholded scores, plus mAP over the labels that occur, and Hamming loss."""
    pred = (probs >= np.asarray(thresholds)[None, :]).astype(np.float32)
    occurring = y.sum(0) > 0
    ap = [average_precision_score(y[:, j], probs[:, j]) for j in np.flatnonzero(occurring)]
    per_class = f1_score(y, pred, average=None, zero_division=0)
    cal = calibration(probs, y)  # every (sample, label) probability against its 0/1 truth
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
        "ece": cal["ece"],
        "calibration_bins": cal["bins"],
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


def plot_reliability(bins: list[dict], ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    width = bins[0]["hi"] - bins[0]["lo"]
    for b in bins:
        if b["count"]:
            ax.bar(b["lo"], b["accuracy"], width=width, align="edge", color="tab:blue", edgecolor="black")
            ax.bar(b["lo"], b["confidence"] - b["accuracy"], bottom=b["accuracy"], width=width,
                   align="edge", color="tab:red", alpha=0.3)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


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


def model_kind(path: Path) -> str:
    """"run" (a `trainer fit` directory) or "bundle" (a `trainer export` directory)."""
    from engines.bundle import MANIFEST

    if (path / "run.json").is_file():
        return "run"
    if (path / MANIFEST).is_file():
        return "bundle"
    raise FileNotFoundError(f"{path}: neither a run directory of `trainer fit` (no run.json) nor a model "
                            f"bundle of `trainer export` (no {MANIFEST})")


def _corpus(data_spec: str, split: str, media, dev_fraction: float, seed: int, labels: list[str],
            speech_pad_ms: int):
    """The utterances of `split`, cut as the model's training cut them."""
    from trainer.data import Corpus, with_speech_padding
    from trainer.datasets import load
    from trainer.datasets.mix import on_labels

    corpus = with_speech_padding(load(data_spec, media, dev_fraction, seed), speech_pad_ms)
    if split == "all":
        corpus = Corpus(corpus.labels, [replace(u, split="all") for u in corpus.utterances])
    if not corpus.split(split):
        raise ValueError(f"{data_spec}: no utterances in split {split!r}")
    return on_labels(corpus, labels, data_spec)  # the model's label order; Ekman relabelling


def run_scores(run: Path, data_spec: str, split: str, media=None, cache_dir: str | None = None,
               progress: bool = True) -> Scored:
    """The run's student in PyTorch on the trainer's inputs (trainer.fit.build_inputs)."""
    from trainer.data import targets
    from trainer.export import load_run
    from trainer.fit import TrainOptions, build_inputs, predict
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
    return Scored(predict(model, data)[:, 0], targets(corpus.split(split), corpus.labels), info["labels"],
                  info["thresholds"], _single_label(corpus), run, "run", "torch")


def bundle_scores(bundle: Path, data_spec: str, split: str, media=None, progress: bool = True) -> Scored:
    """The bundle as the pipeline runs it: ONNX Runtime, Engine.infer on the Windows the
    trainer builds for the fusion stage's view of each utterance (engines.features)."""
    import os

    from tqdm import tqdm

    import engines
    from engines.features import decode
    from trainer.data import media_files, targets, text_windows

    engine = engines.load(bundle, backend="onnxruntime", device="cpu", threads=min(os.cpu_count() or 1, 4))
    training = engine.bundle.manifest.get("training", {})
    # Bundles exported before these were recorded: the defaults of `trainer fit`, tight spans.
    corpus = _corpus(data_spec, split, media, training.get("dev_fraction", 0.2), training.get("seed", 0),
                     engine.labels, training.get("speech_pad_ms", 0))
    utts = corpus.split(split)
    pre, faces = engine.pre, engine.bundle.faces  # the [faces] it was trained with, as realtime runs it
    windows = text_windows(utts, pre.context_turns)
    probs = np.zeros((len(utts), len(engine.labels)), np.float32)
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
        for i, pred in zip(pending, engine.infer([windows[i] for i in pending])):
            probs[i] = [pred.probabilities[label] for label in engine.labels]
            windows[i].audio, windows[i].crops = None, []  # scored: let the media go
        bar.update(len(pending))
        pending.clear()

    with tqdm(total=len(utts), desc=f"scoring {split}", unit="utt", disable=not progress) as bar:
        for i in in_turn():
            pending.append(i)
            if len(pending) == BUNDLE_BATCH:
                flush(bar)
        flush(bar)
    return Scored(probs, targets(utts, corpus.labels), engine.labels, engine.bundle.thresholds,
                  _single_label(corpus), bundle, "bundle", "onnxruntime")


def bundle_id(bundle: Path) -> str:
    from engines.bundle import MANIFEST, model_id

    return model_id(json.loads((Path(bundle) / MANIFEST).read_text()))


def _single_label(corpus) -> bool:
    return all(len(u.labels) == 1 for u in corpus.utterances)


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
    plot_reliability(metrics["calibration_bins"], metrics["ece"], report / "reliability.png")
    result = {"model": str(scored.model), "source": scored.source, "backend": scored.backend, "data": data_spec,
              "split": split, "utterances": int(len(y)), "labels": labels, "single_label": scored.single_label,
              # which bundle was scored (engines.bundle.model_id): `trainer card` puts the report
              # on that bundle's card only, never on a newer export's
              "bundle_id": bundle_id(scored.model) if scored.source == "bundle" else None,
              "metrics": metrics, "confusion": matrix.tolist(), "figures": ["confusion.png", "reliability.png"]}
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
    lines += [f"| ECE | {m['ece']:.4f} |", "", "| label | F1 (%) |", "|---|---|"]
    lines += [f"| {label} | {f:.2f} |" for label, f in m["per_class_f1"].items()]
    lines += ["", "![confusion matrix](confusion.png)", "", "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)
