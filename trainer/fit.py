"""`trainer fit`: train the student, select the epoch on dev, tune thresholds on dev.

A run directory holds run.json (everything export needs), model.safetensors
(the selected epoch), last.safetensors (resume point) and metrics.jsonl.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engines.faces import FaceOptions
from engines.preprocess import Preprocessing
from engines.student import INPUTS, Student, StudentConfig
from engines.text import TextTokenizer
from trainer.data import load_corpus, media_features, targets
from trainer.metrics import multilabel_scores, tune_thresholds
from trainer.model import bce_loss
from trainer.text_encoder import SentenceEncoder


@dataclass
class TrainOptions:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20  # linear warmup, then cosine decay, counted in optimizer steps
    clip_norm: float = 1.0
    seed: int = 0
    dev_fraction: float = 0.2  # sessions held out for model selection when the data names no split
    modality_dropout: float = 0.2  # chance to hide each modality of a training sample
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # HF name or local path
    dim: int = 128
    layers: int = 2
    heads: int = 4
    cache_dir: str = "~/.cache/emotion-trainer"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "dim", "layers", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError("modality_dropout must be in [0, 1)")
        if not 0 < self.dev_fraction < 1:
            raise ValueError("dev_fraction must be in (0, 1)")


def embed_texts(encoder: SentenceEncoder, texts: list[str], max_tokens: int) -> np.ndarray:
    tokenize = TextTokenizer(encoder.tokenizer_json, max_tokens)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = {k: torch.from_numpy(v) for k, v in tokenize(texts[i : i + 64]).items()}
            out.append(encoder(**batch).numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)


def build_inputs(corpus, split, pre, faces, opts, encoder, progress=True):
    utts = corpus.split(split)
    cache = Path(opts.cache_dir).expanduser()
    with tqdm(total=len(utts), desc=f"features {split}", unit="utt", disable=not progress) as bar:
        feats = media_features(utts, pre, faces, cache, progress=bar.update)
    feats["text_emb"] = embed_texts(encoder, [u.text for u in utts], pre.text_max_tokens)
    feats["present"] = np.stack(
        [np.array([bool(u.text.strip()), m.any(), v.any()], np.float32)
         for u, m, v in zip(utts, feats["audio_mask"], feats["video_mask"])]
    ) if utts else np.zeros((0, 3), np.float32)
    feats["targets"] = targets(utts, corpus.labels)
    return {k: torch.from_numpy(v) for k, v in feats.items()}


def predict(model: Student, data: dict, batch_size: int = 64) -> np.ndarray:
    """Sigmoid outputs (N, 4, L): fusion, text, audio, video."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(data["targets"]), batch_size):
            outs.append(torch.sigmoid(model(*(data[k][i : i + batch_size] for k in INPUTS))))
    return torch.cat(outs).numpy()


def drop_modalities(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each present modality with chance p, always keeping at least one."""
    keep = (torch.rand(present.shape, generator=gen) >= p).float() * present
    none_left = keep.sum(1) == 0
    keep[none_left] = present[none_left]
    return keep


def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit(data_spec: str, out: Path, opts: TrainOptions, pre: Preprocessing, faces: FaceOptions,
        progress: bool = True) -> dict:
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(data_spec, opts.dev_fraction, opts.seed)
    encoder = SentenceEncoder(opts.text_encoder)
    train = build_inputs(corpus, "train", pre, faces, opts, encoder, progress)
    dev = build_inputs(corpus, "dev", pre, faces, opts, encoder, progress)
    if len(train["targets"]) == 0 or len(dev["targets"]) == 0:
        raise ValueError(f"{data_spec}: need utterances in both train and dev splits")

    cfg = StudentConfig(n_labels=len(corpus.labels), text_dim=encoder.dim, dim=opts.dim,
                        heads=opts.heads, layers=opts.layers)
    model = Student(cfg, pre)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    n = len(train["targets"])
    steps_per_epoch = math.ceil(n / opts.batch_size)
    total = steps_per_epoch * opts.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_at(s, total, opts.warmup_steps))
    gen = torch.Generator().manual_seed(opts.seed)
    from safetensors.torch import save_file

    best, history = None, []
    log = (out / "metrics.jsonl").open("w")
    bar = tqdm(range(opts.epochs), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        t0 = time.perf_counter()
        for i in range(0, n, opts.batch_size):
            idx = order[i : i + opts.batch_size]
            batch = {k: v[idx] for k, v in train.items()}
            batch["present"] = drop_modalities(batch["present"], opts.modality_dropout, gen)
            logits = model(*(batch[k] for k in INPUTS))
            loss = bce_loss(logits, batch["targets"], batch["present"])
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_norm)
            optim.step()
            sched.step()
            losses.append(loss.item())
        probs = predict(model, dev)
        y = dev["targets"].numpy()
        scores = multilabel_scores(probs[:, 0], y, np.full(y.shape[1], 0.5))
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
               "dev_weighted_f1": scores["weighted_f1"], "seconds": time.perf_counter() - t0}
        log.write(json.dumps(row) + "\n")
        log.flush()
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", dev_wf1=f"{scores['weighted_f1']:.1f}")
        save_file(model.state_dict(), str(out / "last.safetensors"))
        if best is None or scores["weighted_f1"] > best["dev_weighted_f1"]:
            best = row
            save_file(model.state_dict(), str(out / "model.safetensors"))
    log.close()

    # Thresholds and the reported dev scores come from the selected epoch.
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / "model.safetensors")))
    probs = predict(model, dev)
    y = dev["targets"].numpy()
    thresholds = tune_thresholds(probs[:, 0], y)
    # Each head is scored at thresholds tuned for that head: the peers are
    # calibrated differently from the fusion, and the bundle ships only the
    # fusion's thresholds.
    dev_metrics = {
        head: multilabel_scores(probs[:, h], y, tune_thresholds(probs[:, h], y))["weighted_f1"]
        for h, head in enumerate(("fusion", "text", "audio", "video"))
    }
    run = {
        "labels": corpus.labels,
        "thresholds": [float(t) for t in thresholds],
        "student": cfg.to_dict(),
        "preprocessing": pre.to_dict(),
        "faces": asdict(faces),
        "text_encoder": str(encoder.path),
        "data": data_spec,
        "train_utterances": int(n),
        "dev_utterances": int(len(y)),
        "selected_epoch": best["epoch"],
        "dev_weighted_f1": dev_metrics,
        "options": asdict(opts),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return run
