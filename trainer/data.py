"""Data adapters: a `--data KIND:PATH` spec -> utterances with labels -> model inputs.

KIND `synthetic` is the corpus of `trainer synth`; `manifest` is the same JSONL
layout for a user's own recordings (one object per utterance: file, start, end,
text, speaker, labels, and optionally split).  Media are decoded once and the
features cached, so later epochs and later runs decode nothing.

Each utterance becomes the `engines.features.Window` the fusion stage would build for
it (its span cut from the recording decoded as the pipeline decodes it, its transcript
and past turns), and the same engines code turns Windows into model inputs on both
sides: what the student trains on is what it is served.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from common.atomic import replacing
from engines.dialogue import UNKNOWN_SPEAKER, Turn
from common.errors import UserError
from engines.faces import FaceOptions
from engines.features import Window, decode, media_inputs, media_shapes, pad_spans
from engines.preprocess import Preprocessing

class DataError(UserError, ValueError):
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
    for u in utterances:
        u.extra["dialogue"] = u.session
    number_turns(utterances, lambda u: (u.start,))
    return Corpus(labels, utterances)


# --------------------------------------------------------------------------- dialogue turns


def number_turns(utterances: list[Utterance], order: Callable[[Utterance], tuple]) -> None:
    """Set extra["turn"] = 0, 1, ... within each extra["dialogue"], sorted by `order`.

    The turn index is what `dialogue_windows` uses to keep the text context past-only.
    """
    dialogues: dict[str, list[Utterance]] = defaultdict(list)
    for u in utterances:
        if "dialogue" in u.extra:
            dialogues[u.extra["dialogue"]].append(u)
    for members in dialogues.values():
        for turn, u in enumerate(sorted(members, key=order)):
            u.extra["turn"] = turn


def dialogue_windows(utterances: list[Utterance], max_turns: int | None = None) -> list[list[Utterance]]:
    """For each utterance, in order: its earlier turns in the same extra["dialogue"]
    (earlier = smaller extra["turn"]; at most the latest `max_turns`; None: all), then
    itself.  Past only, as the live pipeline has it; an utterance without a dialogue
    gets itself alone."""
    groups: dict[str, list[Utterance]] = defaultdict(list)
    for u in utterances:
        if "dialogue" in u.extra:
            groups[u.extra["dialogue"]].append(u)
    for members in groups.values():
        members.sort(key=lambda u: u.extra["turn"])
    windows = []
    for u in utterances:
        earlier = []
        if "dialogue" in u.extra:
            earlier = [v for v in groups[u.extra["dialogue"]] if v.extra["turn"] < u.extra["turn"]]
            if max_turns is not None:
                earlier = earlier[max(0, len(earlier) - max_turns):]
        windows.append(earlier + [u])
    return windows


def targets(utterances: list[Utterance], labels: list[str]) -> np.ndarray:
    y = np.zeros((len(utterances), len(labels)), dtype=np.float32)
    for i, u in enumerate(utterances):
        for label in u.labels:
            y[i, labels.index(label)] = 1.0
    return y


def with_speech_padding(corpus: Corpus, pad_ms: int) -> Corpus:
    """The corpus with every media utterance's span padded as the live VAD pads the speech
    it finds ([vad] speech_pad_ms on both sides, never over the previous utterance of the
    same file; engines.features.pad_spans), so training sees utterances with the same
    lead-in and tail of silence as serving.  Manifest spans bound the speech tightly;
    clipping to the recording happens where the span is cut (Recording.window)."""
    utterances = list(corpus.utterances)
    for indices in media_files(utterances).values():
        spans = pad_spans([(utterances[i].start, utterances[i].end) for i in indices], pad_ms / 1000)
        for i, (start, end) in zip(indices, spans):
            utterances[i] = replace(utterances[i], start=start, end=end)
    return Corpus(corpus.labels, utterances)


def text_windows(utterances: list[Utterance], context_turns: int | None) -> list[Window]:
    """Each utterance as the fusion stage sees its words (no media): its transcript and
    its last `context_turns` past turns of the same dialogue (None: all), each with the speaker the
    corpus names (the unknown one where it names none).  The fusion stage names turns by
    the face that spoke them; engines.dialogue.prompt turns either kind into the same
    speaker tokens <s1>, <s2>, ... in order of appearance."""
    speaker = lambda u: u.speaker or UNKNOWN_SPEAKER
    return [Window(start=w[-1].start, end=w[-1].end, text=w[-1].text, speaker=speaker(w[-1]),
                   context=[Turn(speaker(v), v.text) for v in w[:-1]])
            for w in dialogue_windows(utterances, context_turns)]


def media_files(utterances: list[Utterance]) -> dict[Path, list[int]]:
    """Indices of the utterances with media, by file (text-only utterances are left out)."""
    by_file: dict[Path, list[int]] = {}
    for i, u in enumerate(utterances):
        if u.extra.get("has_media", True):
            by_file.setdefault(u.file, []).append(i)
    return by_file


def media_features(
    utterances: list[Utterance], pre: Preprocessing, faces: FaceOptions, cache_dir: Path, progress=None
) -> dict[str, np.ndarray]:
    """mel, audio_mask, video, video_mask for each utterance, decoded once per file."""
    by_file = media_files(utterances)
    n = len(utterances)
    shapes = media_shapes(pre)
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
    # Only what shapes the media arrays keys the cache: the text_* fields of Preprocessing
    # change what the text encoder reads, and must not make every file decode again.
    media_pre = {k: v for k, v in pre.to_dict().items() if not k.startswith("text_")}
    key = hashlib.sha256(
        json.dumps(
            [str(file.resolve()), stat.st_size, stat.st_mtime_ns, spans, media_pre, faces.__dict__],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir / f"{file.stem}-{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    recording = decode(file, pre, faces)
    result = media_inputs([recording.window(start, end) for start, end in spans], pre)
    with replacing(path) as tmp:  # atomic: an interrupted run leaves no half-written cache
        np.savez(tmp, **result)
    return result
