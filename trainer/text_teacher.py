"""The text teacher (TelME 3.2.2) and the text benchmarks' classifier.

Input: the past-only dialogue context of an utterance with speaker tokens and the prompt
"Now <sK> feels <mask>" (`trainer.datasets.context_prompts`), using the encoder's own
separator and mask tokens.  The speaker tokens <s1>.. are added to the tokenizer as
special tokens (the embedding matrix is resized).  Output: the final hidden state of the
mask token -> dropout -> linear head.  Multi-label (sigmoid, BCE) or single-label
(softmax, CE).

Sequences are truncated from the LEFT, so the oldest context goes first and the current
utterance and the prompt always survive (the [CLS] token is added after truncation).

    teacher = TextTeacher.create(TeacherConfig(labels=corpus.labels))
    teacher.fit(corpus.split("train"), corpus.split("dev"))   # epoch chosen on dev
    teacher.save("out/text_teacher")                          # safetensors + json
    teacher = TextTeacher.load("out/text_teacher")
    feats = teacher.embed(utterances)    # mask-token features, for feature KD
    logits = teacher.logits(utterances)  # for response KD
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from tqdm import tqdm

from common.atomic import replacing, replacing_dir
from common.offline import resolve_text_encoder
from common.settings import ConfigError, per_run
from engines.dialogue import UNKNOWN_SPEAKER
from trainer.data import Utterance
from trainer.datasets import context_prompts
from trainer.losses import dist_response_kd, feature_kd
from trainer.loop import EpochJob, EpochLoop, ResumePoint, TimeBudget, lr_factor
from trainer.metrics import multilabel_scores, tune_thresholds
from trainer.placement import has_bf16_units

logger = logging.getLogger(__name__)

CONFIG_FILE = "text_teacher.json"
HEAD_FILE = "head.safetensors"
# `trainer teach`'s resume point inside its --out directory: STATE_FILE (the weights, optimizer,
# schedule, random states, epoch, history) after every epoch, BEST_FILE (the selected weights).
CHECKPOINT_DIR = ".checkpoint"
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"


@dataclass
class TeacherConfig:
    """A text teacher's settings.  Those that are settings are the [teach] section of
    config.toml (`trainer teach` flags set them too); the per_run fields come from the data
    and the command line of each run.  Saved beside the teacher (text_teacher.json)."""
    labels: list[str] = per_run(default_factory=list)  # the corpus's labels, in order
    encoder: str = per_run(default="sentence-transformers/all-MiniLM-L6-v2")  # the encoder it starts
    # from (`trainer teach --encoder`, default [train] text_encoder)
    multi_label: bool = per_run(default=False)  # the corpus has several labels per utterance (sigmoid, BCE)
    seed: int = per_run(default=0)  # [train] seed
    kd_teacher: str = per_run(default="")  # the stronger teacher distilled into this one (`--kd-teacher`);
    # a record: its outputs are passed to fit
    context: bool = True  # the prompt holds the past turns; false: the utterance alone (still in the prompt)
    max_turns: int | None = 8  # earlier turns kept before left-truncation (None, which only Python can
    # give: all)
    max_len: int = 128  # tokens per prompt, the oldest context cut first
    n_speaker_tokens: int = 16  # <s1>..<sN>; windows with more speakers reuse word pieces
    dropout: float = 0.1  # on the mask token's state, before the head
    lr: float = 5e-5  # the encoder's learning rate
    head_lr: float = 1e-3  # the head's learning rate
    weight_decay: float = 0.01  # AdamW's
    warmup: float = 0.1  # fraction of the optimizer steps with a rising learning rate
    epochs: int = 3  # epochs; the best on dev is kept
    batch_size: int = 32  # prompts per step
    eval_batch_size: int = 64  # prompts per batch when predicting
    clip: float = 1.0  # gradient norm clipping
    max_train_seconds: float | None = None  # stop after the step that passes this (the learning rate
    # schedule is shortened to the steps that fit); None: no bound
    freeze_layers: int = 0  # >0: the embeddings and the lower N transformer layers stay fixed
    cache_frozen: bool = True  # with freeze_layers: run the fixed lower layers once over the training
    # and dev prompts and train the upper layers from their stored outputs (float16, in memory),
    # instead of running them again at every step.  The same model and maths, less the dropout
    # inside the fixed layers; a step then costs what the upper layers cost
    precision: str = "auto"  # "auto": the training steps run under bfloat16 autocast where the
    # device has bf16 matrix units (CUDA; a CPU with AMX or AVX-512 BF16), float32 elsewhere;
    # "float32": always float32 (how every CPU teacher before this setting was trained).  Predictions
    # (dev scores, embed, predict_proba) are float32 either way, as the bundle's graphs compute; only
    # cache_frozen's stored lower-layer outputs, float16 in memory, are computed at the training precision
    select: str = "auto"  # the dev metric that picks the epoch: auto is weighted_f1 for a single-label
    # corpus, macro_f1 for a multi-label one
    speakers: str = "corpus"  # "corpus": the speakers the corpus names; "anonymous": every turn one
    # unknown speaker, as the live pipeline hears them (no diarization), for an encoder a bundle serves with
    response_kd: float = 1.0  # with kd_teacher, TelME 3.2.3: weight of the DIST response KD on the logits
    feature_kd: float = 1.0  # with kd_teacher: weight of the feature KD on the projected mask-token state
    kd_tau: float = 2.0  # DIST temperature (TelME)

    def __post_init__(self):
        if self.precision not in ("auto", "float32"):
            raise ValueError(f"precision must be auto or float32, got {self.precision!r}")
        if self.speakers not in ("corpus", "anonymous"):
            raise ValueError(f"speakers must be corpus or anonymous, got {self.speakers!r}")
        if self.response_kd < 0 or self.feature_kd < 0 or self.kd_tau <= 0:
            raise ValueError("response_kd and feature_kd must be >= 0 and kd_tau > 0")


def speaker_tokens(n: int) -> list[str]:
    return [f"<s{i}>" for i in range(1, n + 1)]


def _layer_stack(encoder: nn.Module) -> tuple[nn.Module, str]:
    """(the module that holds the transformer layers, its attribute name) of a BERT-like
    encoder (BERT, RoBERTa, MPNet, MiniLM...)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        *owners, name = path.split(".")
        module = encoder
        for attr in owners:
            module = getattr(module, attr, None)
        if isinstance(getattr(module, name, None), nn.ModuleList):
            return module, name
    raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__} to freeze")


def _transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    owner, name = _layer_stack(encoder)
    return getattr(owner, name)


@contextlib.contextmanager
def _only_layers(encoder: nn.Module, part: slice):
    """The encoder with only `part` of its transformer layers for the duration (the others are
    set aside, not changed): how the fixed lower layers run alone, and the upper ones from
    their outputs."""
    owner, name = _layer_stack(encoder)
    full = getattr(owner, name)
    owner._modules[name] = nn.ModuleList(list(full)[part])  # no re-registration of the parameters
    try:
        yield
    finally:
        owner._modules[name] = full


def _embeddings_module(encoder: nn.Module) -> nn.Module:
    return getattr(encoder, "embeddings", None) or encoder.get_input_embeddings()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class LowerOutputs:
    """The outputs of an encoder's fixed lower layers for a list of prompts, one unpadded
    (tokens, hidden) float16 tensor and its token ids per prompt, padded again per batch."""

    def __init__(self, ids: list[torch.Tensor], hidden: list[torch.Tensor], n_layers: int, pad_id: int):
        self.ids, self.hidden, self.n_layers, self.pad_id = ids, hidden, n_layers, pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lower outputs (B, T, D) float32, input_ids (B, T), attention_mask (B, T)) of `rows`."""
        rows = [int(r) for r in rows]
        t = max(len(self.ids[r]) for r in rows)
        dim = self.hidden[rows[0]].shape[1]
        hidden = torch.zeros(len(rows), t, dim)
        ids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(self.ids[r])
            hidden[i, :n], ids[i, :n], mask[i, :n] = self.hidden[r].float(), self.ids[r], 1
        return hidden.to(device), ids.to(device), mask.to(device)


class TextTeacher(nn.Module):
    def __init__(self, config: TeacherConfig, encoder: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(encoder.config.hidden_size, len(config.labels))
        self.history: list[dict] = []

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def precision(self) -> str:
        """The training steps': "bfloat16" (autocast) where the device has bf16 matrix units and
        the config's `precision` is "auto", as the teachers were fine-tuned on a GPU; else "float32"."""
        return "bfloat16" if self.config.precision == "auto" and has_bf16_units(self.device) else "float32"

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, config: TeacherConfig) -> "TextTeacher":
        from transformers import AutoModel, AutoTokenizer

        set_seed(config.seed)
        path = resolve_text_encoder(config.encoder)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.mask_token is None:
            raise ConfigError(f"text encoder {config.encoder!r}: its tokenizer has no mask token")
        tokenizer.add_special_tokens({"additional_special_tokens": speaker_tokens(config.n_speaker_tokens)})
        encoder = AutoModel.from_pretrained(path)
        encoder.resize_token_embeddings(len(tokenizer))
        return cls(config, encoder, tokenizer)

    def save(self, directory: str | Path, about: dict | None = None) -> Path:
        """Write the teacher into a copy of `directory` that then replaces it whole
        (common.atomic): a kill leaves the old directory.  Files of others in it stay; an
        older teacher's files and the training checkpoint (CHECKPOINT_DIR) go: the run is done."""
        directory = Path(directory)
        with replacing_dir(directory, keep=True) as tmp:
            # Removed, not overwritten: the copy's files are hard links to the old ones.
            for name in ("encoder", CHECKPOINT_DIR, HEAD_FILE, CONFIG_FILE):
                if (tmp / name).is_dir():
                    shutil.rmtree(tmp / name)
                else:
                    (tmp / name).unlink(missing_ok=True)
            self.encoder.save_pretrained(tmp / "encoder", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "encoder")
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(tmp / HEAD_FILE))
            meta = {"config": dataclasses.asdict(self.config), "history": self.history,
                    **({"about": about} if about else {})}  # about: its data, device, time, scores
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TextTeacher":
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        config = TeacherConfig(**meta["config"])
        tokenizer = AutoTokenizer.from_pretrained(directory / "encoder")
        encoder = AutoModel.from_pretrained(directory / "encoder")
        teacher = cls(config, encoder, tokenizer)
        teacher.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        teacher.history = meta.get("history", [])
        teacher.to(device)
        teacher.eval()
        return teacher

    # ------------------------------------------------------------------ inputs

    def prompts(self, utterances: list[Utterance]) -> list[str]:
        """TelME prompts from the past of each utterance's dialogue (within `utterances`)."""
        tok = self.tokenizer
        max_turns = self.config.max_turns if self.config.context else 0
        if self.config.speakers == "anonymous":
            utterances = [dataclasses.replace(u, speaker=UNKNOWN_SPEAKER) for u in utterances]
        return context_prompts(utterances, max_turns=max_turns, sep=tok.sep_token, mask=tok.mask_token)

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids, truncated from the left (the prompt at the end always survives)."""
        tok = self.tokenizer
        side = tok.truncation_side
        tok.truncation_side = "left"
        try:
            batch = tok(prompts, padding=True, truncation=True, max_length=self.config.max_len,
                        return_tensors="pt")
        finally:
            tok.truncation_side = side
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    def targets(self, utterances: list[Utterance]) -> np.ndarray:
        index = {label: j for j, label in enumerate(self.config.labels)}
        y = np.zeros((len(utterances), len(index)), dtype=np.float32)
        for i, u in enumerate(utterances):
            for label in u.labels:
                y[i, index[label]] = 1.0
        return y

    # ------------------------------------------------------------------ model

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final hidden state of the (last) mask token of each row."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._mask_state(hidden, input_ids)

    def upper_features(self, lower: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       n_lower: int) -> torch.Tensor:
        """features() from the outputs `lower` (B, T, D) of the first `n_lower` transformer
        layers: only the layers above them run."""
        from transformers.masking_utils import create_bidirectional_mask

        stack = _layer_stack(self.encoder)[0]
        mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=lower,
                                         attention_mask=attention_mask)
        with _only_layers(self.encoder, slice(n_lower, None)):
            out = stack(lower, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return self._mask_state(hidden, input_ids)

    def _mask_state(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        is_mask = input_ids == self.tokenizer.mask_token_id
        if not bool(is_mask.any(1).all()):
            raise ValueError("a row lost its mask token (truncation must keep the prompt)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last = torch.where(is_mask, positions, torch.full_like(positions, -1)).max(1).values
        return hidden[torch.arange(len(hidden), device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask)))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.config.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, y)
        return nn.functional.cross_entropy(logits, y.argmax(1))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.config.multi_label else torch.softmax(logits, -1)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def _run(self, prompts: list[str], what: str) -> np.ndarray:
        def compute(idx):
            feats = self.features(**self.encode([prompts[i] for i in idx]))
            return feats if what == "embed" else self.head(feats)

        return self._batched([len(p) for p in prompts], compute)

    def _batched(self, lengths: list[int], compute) -> np.ndarray:
        """compute(rows) of every row in eval mode, in batches of similar lengths (less padding),
        stacked back in row order."""
        was_training = self.training
        self.eval()
        order = np.argsort(lengths)
        out: dict[int, np.ndarray] = {}
        bs = self.config.eval_batch_size
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            values = compute(idx)  # float32: what is scored here is what a bundle would serve
            out.update(zip(idx.tolist(), values.cpu().numpy()))
        self.train(was_training)
        return np.stack([out[i] for i in range(len(lengths))]) if out else np.zeros((0, self.head.out_features), np.float32)

    @torch.no_grad()
    def lower_outputs(self, prompts: list[str], n_layers: int, desc: str = "lower layers") -> LowerOutputs:
        """The fixed lower `n_layers` layers' outputs for every prompt, computed once."""
        was_training = self.training
        self.eval()
        order = np.argsort([len(p) for p in prompts])
        ids: dict[int, torch.Tensor] = {}
        hidden: dict[int, torch.Tensor] = {}
        bs = self.config.eval_batch_size
        with _only_layers(self.encoder, slice(0, n_layers)), tqdm(total=len(prompts), desc=desc, unit="prompt",
                                                                   mininterval=5) as bar:
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                batch = self.encode([prompts[i] for i in idx])
                with self._autocast():
                    out = self.encoder(**batch).last_hidden_state
                for j, i in enumerate(idx.tolist()):
                    n = int(batch["attention_mask"][j].sum())
                    ids[i] = batch["input_ids"][j, :n].cpu()
                    hidden[i] = out[j, :n].to(torch.float16).cpu()
                bar.update(len(idx))
        self.train(was_training)
        rows = range(len(prompts))
        return LowerOutputs([ids[i] for i in rows], [hidden[i] for i in rows], n_layers, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def _run_lower(self, lower: LowerOutputs) -> np.ndarray:
        """Head logits (N, labels) from stored lower-layer outputs: _run's, without the lower layers."""
        return self._batched([len(i) for i in lower.ids],
                             lambda idx: self.head(self.upper_features(*lower.batch(idx, self.device), lower.n_layers)))

    def embed(self, utterances: list[Utterance]) -> np.ndarray:
        """Mask-token features (N, hidden) for feature KD."""
        return self._run(self.prompts(utterances), "embed")

    def logits(self, utterances: list[Utterance]) -> np.ndarray:
        """Head logits (N, labels) for response KD."""
        return self._run(self.prompts(utterances), "logits")

    def predict_proba(self, utterances: list[Utterance]) -> np.ndarray:
        return self.probabilities(torch.from_numpy(self.logits(utterances))).numpy()

    # ------------------------------------------------------------------ training

    def freeze(self, n_layers: int) -> list[str]:
        """Fix the embeddings and the lower `n_layers` transformer layers; returns the frozen names.

        Also fixes a relative-position bias shared by all layers (MPNet's), since training it
        would need gradients through the frozen layers, which is the cost freezing saves.  The
        added speaker tokens then keep their initial embeddings (distinct random draws from the
        embedding distribution, transformers' default when the matrix is resized).
        """
        if n_layers <= 0:
            return []
        layers = _transformer_layers(self.encoder)
        if n_layers > len(layers):
            raise ConfigError(f"freeze_layers={n_layers}, but the encoder has {len(layers)} layers")
        frozen_ids = {id(p) for p in self.encoder.get_input_embeddings().parameters()}
        for module in (_embeddings_module(self.encoder), *layers[:n_layers]):
            frozen_ids |= {id(p) for p in module.parameters()}
        names = []
        for name, param in self.encoder.named_parameters():
            if id(param) in frozen_ids or "relative_attention_bias" in name:
                param.requires_grad_(False)
                names.append(name)
        return names

    def score(self, probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        if self.config.multi_label:
            scores = multilabel_scores(probs, y, tune_thresholds(probs, y))
            return {k: float(v) for k, v in scores.items()}
        pred, true = probs.argmax(1), y.argmax(1)
        return {"weighted_f1": 100 * float(f1_score(true, pred, average="weighted", zero_division=0)),
                "macro_f1": 100 * float(f1_score(true, pred, average="macro", zero_division=0)),
                "accuracy": 100 * float(accuracy_score(true, pred))}

    def fit(self, train: list[Utterance], dev: list[Utterance], log=print,
            kd: dict[str, np.ndarray] | None = None, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = False) -> list[dict]:
        """Fine-tune; keep the weights of the epoch with the best dev score (never test).

        kd: a stronger teacher's outputs on `train` (distil()): "logits" (N, labels) in this
        model's label order and "features" (N, D), taught with the config's KD weights.
        checkpoint: a directory for the resume point, written atomically after every epoch
        (a kill mid-epoch loses that epoch only); resume: continue from it, with the same
        config and data, the schedule (time budget included), batches and dropout going on
        as they would have.  The epochs are trainer.loop.EpochLoop's, as fit's; progress: its
        bar over the epochs.
        """
        cfg = self.config
        checkpoint = Path(checkpoint) if checkpoint is not None else None
        run = _TeachRun(self, train, dev, kd, log, None if checkpoint is None else checkpoint / BEST_FILE)
        point = None if checkpoint is None else ResumePoint(
            checkpoint / STATE_FILE, {**dataclasses.asdict(cfg), "train_size": len(run.prompts)})
        key = cfg.select if cfg.select != "auto" else ("macro_f1" if cfg.multi_label else "weighted_f1")
        loop = EpochLoop(cfg.epochs, f"dev_{key}", point, log=log, progress=progress, desc="text teacher")
        self.history, _ = loop.run(run, resume)
        self.load_state_dict(run.best_weights())
        self.eval()
        return self.history

    def _optimizer(self, kd_terms: dict | None) -> torch.optim.AdamW:
        """AdamW over the trainable encoder weights (no weight decay on biases and norms, as
        TelME's fine-tuning) at lr, and the head (and the feature-KD projection) at head_lr."""
        cfg = self.config
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        enc = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        heads = [*self.head.parameters(), *(kd_terms["project"].parameters() if kd_terms else [])]
        return torch.optim.AdamW([
            {"params": [p for n, p in enc if not n.endswith(no_decay)], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in enc if n.endswith(no_decay)], "lr": cfg.lr, "weight_decay": 0.0},
            {"params": heads, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
        ])

    def _step_loss(self, b: np.ndarray, prompts: list[str], y: torch.Tensor, lower: LowerOutputs | None,
                   kd_terms: dict | None) -> torch.Tensor:
        """The loss of batch `b` (indices into prompts), under the training precision: from the
        stored lower-layer outputs where there are any, else the whole encoder."""
        with self._autocast():
            if lower is not None:
                feats = self.upper_features(*lower.batch(b, self.device), lower.n_layers)
            else:
                feats = self.features(**self.encode([prompts[i] for i in b]))
            logits = self.head(self.dropout(feats))
            loss = self.loss(logits.float(), y[b])
            if kd_terms:
                loss = loss + self._kd_loss(kd_terms, b, feats.float(), logits.float())
        return loss

    def _dev_scores(self, prompts: list[str], y: np.ndarray, lower: LowerOutputs | None) -> dict[str, float]:
        """This model's scores on the dev split (float32), from its stored lower-layer outputs where kept."""
        logits = self._run_lower(lower) if lower is not None else self._run(prompts, "logits")
        return self.score(self.probabilities(torch.from_numpy(logits)).numpy(), y)

    def _kd_terms(self, kd: dict[str, np.ndarray] | None, n: int) -> dict | None:
        """The teacher's outputs as tensors and, for feature KD, the projection of this
        model's mask-token state into the teacher's size (TelME: a linear map, used only
        while training)."""
        cfg = self.config
        if kd is None or (cfg.response_kd == 0 and cfg.feature_kd == 0):
            return None
        logits, feats = np.asarray(kd["logits"], np.float32), np.asarray(kd["features"], np.float32)
        if logits.shape != (n, len(cfg.labels)) or len(feats) != n:
            raise ValueError(f"KD outputs must be one row per training utterance ({n}) and logits one "
                             f"column per label ({len(cfg.labels)}); got {logits.shape} and {feats.shape}")
        torch.manual_seed(cfg.seed)
        project = nn.Linear(self.encoder.config.hidden_size, feats.shape[1]).to(self.device)
        return {"logits": torch.from_numpy(logits).to(self.device), "features": torch.from_numpy(feats).to(self.device),
                "project": project}

    def _kd_loss(self, terms: dict, rows, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        loss = logits.new_zeros(())
        if cfg.response_kd and len(rows) > 1:  # DIST's class-wise term needs two samples
            loss = loss + cfg.response_kd * dist_response_kd(logits, terms["logits"][rows], cfg.kd_tau)
        if cfg.feature_kd:
            loss = loss + cfg.feature_kd * feature_kd(terms["project"](feats), terms["features"][rows])
        return loss



class _TeachRun(EpochJob):
    """One fine-tune of a TextTeacher, as trainer.loop.EpochLoop runs it: the prompts, the
    stored lower-layer outputs where layers are fixed, the optimizer and its schedule, the
    batch order, and the selected weights (in memory, and in best_file where there is a
    checkpoint)."""

    def __init__(self, teacher: TextTeacher, train: list[Utterance], dev: list[Utterance],
                 kd: dict[str, np.ndarray] | None, log, best_file: Path | None):
        self.teacher, self.log, self.best_file = teacher, log, best_file
        cfg = self.cfg = teacher.config
        set_seed(cfg.seed)
        self.gen = np.random.default_rng(cfg.seed)
        self.prompts, self.y = teacher.prompts(train), torch.from_numpy(teacher.targets(train)).to(teacher.device)
        self.dev_prompts, self.dev_y = teacher.prompts(dev), teacher.targets(dev)
        self.lengths = np.array([len(teacher.tokenizer.tokenize(p)) for p in self.prompts])
        self.total = math.ceil(len(self.prompts) / cfg.batch_size) * cfg.epochs
        self.warmup = int(cfg.warmup * self.total)
        self.kd_terms = teacher._kd_terms(kd, len(train))
        frozen = teacher.freeze(cfg.freeze_layers)
        if frozen:
            log(f"frozen: embeddings + lower {cfg.freeze_layers} layers ({len(frozen)} tensors)")
        self.lower = self.dev_lower = None
        if frozen and cfg.cache_frozen:
            t0 = time.perf_counter()
            self.lower = teacher.lower_outputs(self.prompts, cfg.freeze_layers, "lower layers, train")
            self.dev_lower = teacher.lower_outputs(self.dev_prompts, cfg.freeze_layers, "lower layers, dev")
            log(f"lower {cfg.freeze_layers} layers run once over {len(self.prompts) + len(self.dev_prompts)} "
                f"prompts in {time.perf_counter() - t0:.0f}s; the steps train the layers above")
        self.opt = teacher._optimizer(self.kd_terms)
        self.plan = {"total": self.total, "warmup": self.warmup}  # a time budget shortens both
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, self.plan["total"], self.plan["warmup"], "linear"))
        self.budget = TimeBudget(cfg.max_train_seconds)
        self.step = 0
        self._best: dict | None = None

    def batches(self) -> list[np.ndarray]:
        """Length-bucketed batches (sorted within chunks of 50 batches), in shuffled order."""
        perm, bs = self.gen.permutation(len(self.prompts)), self.cfg.batch_size
        out = []
        for s in range(0, len(perm), bs * 50):
            part = perm[s:s + bs * 50]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            out += [part[i:i + bs] for i in range(0, len(part), bs)]
        self.gen.shuffle(out)
        return out

    def train_epoch(self, epoch: int) -> tuple[dict, bool]:
        """The epoch's steps, up to the end of a schedule a time budget may have shortened:
        the steps so far, the epoch's mean loss, the seconds so far and whether the budget
        stopped it."""
        teacher, cfg, plan, budget, log = self.teacher, self.cfg, self.plan, self.budget, self.log
        teacher.train()
        running, seen, stopped = 0.0, 0, False
        for b in self.batches():
            loss = teacher._step_loss(b, self.prompts, self.y, self.lower, self.kd_terms)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(teacher.parameters(), cfg.clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            running += loss.item() * len(b)
            seen += len(b)
            step = self.step
            if budget.seconds and (step == 10 or (step > 10 and step % 25 == 0)):
                # Re-estimated every 25 steps: a shared machine's speed changes.
                new_total = budget.fits(step, self.total)
                if new_total != plan["total"]:
                    plan["total"] = new_total
                    plan["warmup"] = min(self.warmup, int(cfg.warmup * new_total))
                    log(f"time budget: schedule set to {plan['total']} of {self.total} steps")
            if step % 50 == 0 or step == 10:
                log(f"epoch {epoch} step {step}/{plan['total']} loss {running / seen:.4f} {budget.elapsed():.0f}s")
            if step >= plan["total"] or budget.over():
                stopped = step < self.total
                break
        if stopped:
            log(f"time budget {cfg.max_train_seconds}s: stopped after step {self.step}/{self.total}")
        # seconds: of the whole run to the end of this epoch's steps, across resumes (the card's)
        return {"steps": self.step, "train_loss": running / max(1, seen), "seconds": budget.elapsed(),
                "stopped_early": stopped}, stopped

    def score(self) -> dict[str, float]:
        scores = self.teacher._dev_scores(self.dev_prompts, self.dev_y, self.dev_lower)
        return {f"dev_{k}": v for k, v in scores.items()}

    def state(self) -> dict:
        return {"model": self.teacher.state_dict(), "step": self.step, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "plan": dict(self.plan),
                "numpy_generator": json.dumps(self.gen.bit_generator.state), "torch_rng": torch.get_rng_state(),
                **({"kd_project": self.kd_terms["project"].state_dict()} if self.kd_terms else {})}

    def load_state(self, state: dict) -> None:
        self.teacher.load_state_dict(state["model"])
        if self.kd_terms:
            self.kd_terms["project"].load_state_dict(state["kd_project"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.plan.update(state["plan"])
        self.gen.bit_generator.state = json.loads(state["numpy_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def save_best(self, epoch: int) -> None:
        self._best = copy.deepcopy(self.teacher.state_dict())
        if self.best_file is not None:
            with replacing(self.best_file) as tmp:
                torch.save(self._best, tmp)

    def best_weights(self) -> dict:
        """The selected epoch's weights: kept in memory since this process selected them, else
        (a resumed run whose best epoch came before the resume) read from best_file."""
        if self._best is not None:
            return self._best
        assert self.best_file is not None  # a run without a checkpoint cannot have resumed
        return torch.load(self.best_file, weights_only=True, map_location=self.teacher.device)

def distil(teacher_dir: str | Path, student: TextTeacher, train: list[Utterance], log=print) -> dict[str, np.ndarray]:
    """A stronger teacher's outputs on `train` for student.fit(kd=...): its logits in the
    student's label order and its mask-token features, each from the teacher's own prompts
    (its speakers and context)."""
    teacher = TextTeacher.load(teacher_dir, student.device)
    labels = list(student.config.labels)
    if sorted(teacher.config.labels) != sorted(labels) or teacher.config.multi_label != student.config.multi_label:
        raise ConfigError(f"KD teacher {teacher_dir}: its labels {teacher.config.labels} "
                         f"({'multi' if teacher.config.multi_label else 'single'}-label) are not the "
                         f"student's {labels}; train both on the same corpus")
    log(f"KD teacher {teacher_dir}: scoring {len(train)} training utterances")
    order = [teacher.config.labels.index(label) for label in labels]
    outputs = {"logits": teacher.logits(train)[:, order], "features": teacher.embed(train)}
    del teacher  # its ~100-400 MB go before the student trains
    return outputs
