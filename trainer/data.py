"""Data adapters: a `--data KIND:PATH` spec -> utterances with labels -> model inputs.

KIND `synthetic` is the corpus of `trainer synth`; `manifest` is the same JSONL
layout for a user's own recordings (one object per utterance: file, start, end,
text, speaker, labels, and optionally split).  Media are decoded once and the
features cached, so later epochs and later runs decode nothing.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.faces import FaceCropper, FaceOptions
from engines.media import read_media
from engines.preprocess import Preprocessing, audio_features, video_features

class DataError(ValueError):
    """A data spec or data file that cannot be used; the message says which."""


@dataclass
class Utterance:
    session: str
    file: Path
    start: float
    end: float
    text: str
    speaker: str
    labels: list[str]
    split: str = "train"
    extra: dict = field(default_factory=dict)


@dataclass
class Corpus:
    labels: list[str]
    utterances: list[Utterance]

    def split(self, name: str) -> list[Utterance]:
        return [u for u in self.utterances if u.split == name]


def load_corpus(path: Path, dev_fraction: float = 0.2, seed: int = 0) -> Corpus:
    """A JSONL manifest (or a directory holding manifest.jsonl); `--data` specs are
    parsed by trainer.datasets.load."""
    path = Path(path)
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    root = manifest.parent
    rows = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest}:{n}: not valid JSON ({exc})") from exc
    if not rows:
        raise DataError(f"{manifest}: no utterances")
    labels_file = root / "labels.json"
    if labels_file.exists():
        labels = list(json.loads(labels_file.read_text())["labels"])
    else:
        labels = sorted({label for row in rows for label in row["labels"]})
    sessions = sorted({row.get("session", row["file"]) for row in rows})
    # Dev sessions are drawn by seed when the manifest names no splits, so no
    # session is split across train and dev.
    dev = set(random.Random(seed).sample(sessions, max(1, round(dev_fraction * len(sessions)))))
    utterances = []
    for n, row in enumerate(rows, 1):
        try:
            unknown = set(row["labels"]) - set(labels)
            if unknown:
                raise DataError(f"{manifest}:{n}: labels {sorted(unknown)} not in {labels}")
            session = row.get("session", row["file"])
            utterances.append(
                Utterance(
                    session=session,
                    file=root / row["file"],
                    start=float(row["start"]),
                    end=float(row["end"]),
                    text=row.get("text", ""),
                    speaker=row.get("speaker", ""),
                    labels=list(row["labels"]),
                    split=row.get("split", "dev" if session in dev else "train"),
                    extra={k: v for k, v in row.items() if k in ("cues", "index")},
                )
            )
        except KeyError as exc:
            raise DataError(f"{manifest}:{n}: missing field {exc}") from exc
    # A session is one conversation: its turns in time order are the text branch's context.
    from trainer.datasets._common import number_turns  # here: that module imports this one

    for u in utterances:
        u.extra["dialogue"] = u.session
    number_turns(utterances, lambda u: (u.start,))
    return Corpus(labels, utterances)


def targets(utterances: list[Utterance], labels: list[str]) -> np.ndarray:
    y = np.zeros((len(utterances), len(labels)), dtype=np.float32)
    for i, u in enumerate(utterances):
        for label in u.labels:
            y[i, labels.index(label)] = 1.0
    return y


def media_features(
    utterances: list[Utterance], pre: Preprocessing, faces: FaceOptions, cache_dir: Path, progress=None
) -> dict[str, np.ndarray]:
    """mel, audio_mask, video, video_mask for each utterance, decoded once per file."""
    by_file: dict[Path, list[int]] = {}
    for i, u in enumerate(utterances):
        if u.extra.get("has_media", True):  # text-only utterances keep all-zero masks
            by_file.setdefault(u.file, []).append(i)
    n = len(utterances)
    shapes = {"mel": (pre.n_mels, pre.audio_frames), "audio_mask": (pre.audio_tokens,),
              "video": (pre.video_frames, pre.face_size, pre.face_size), "video_mask": (pre.video_frames,)}
    if not by_file:
        # A text-only corpus: one shared row of zeros, viewed n times (read-only).  Real
        # arrays would take 335 KB per utterance: 14 GB for GoEmotions.
        return {k: np.broadcast_to(np.zeros(s, np.float32), (n, *s)) for k, s in shapes.items()}
    out = {k: np.zeros((n, *s), np.float32) for k, s in shapes.items()}
    for file, indices in by_file.items():
        spans = [(utterances[i].start, utterances[i].end) for i in indices]
        cached = _file_features(file, spans, pre, faces, cache_dir)
        for key in out:
            out[key][indices] = cached[key]
        if progress is not None:
            progress(len(indices))
    return out


def _file_features(file: Path, spans, pre: Preprocessing, faces: FaceOptions, cache_dir: Path):
    stat = file.stat()
    key = hashlib.sha256(
        json.dumps(
            [str(file.resolve()), stat.st_size, stat.st_mtime_ns, spans, pre.to_dict(), faces.__dict__],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir / f"{file.stem}-{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    audio, audio_t0, frames = read_media(file, pre.sample_rate, faces.sample_fps)
    cropper = FaceCropper(faces, pre)
    crops = [(f.t, cropper.crop(f.image)) for f in frames]
    result = {k: [] for k in ("mel", "audio_mask", "video", "video_mask")}
    for start, end in spans:
        a, b = (int(round((t - audio_t0) * pre.sample_rate)) for t in (start, end))
        mel, amask = audio_features(audio[max(a, 0) : max(b, 0)], pre)
        inside = [c for c in crops if start <= c[0] <= end]
        video, vmask = video_features(inside, start, end, pre)
        for k, v in zip(result, (mel, amask, video, vmask)):
            result[k].append(v)
    result = {k: np.stack(v) for k, v in result.items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(path)  # atomic: an interrupted run leaves no half-written cache
    return result
