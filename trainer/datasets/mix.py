"""Several corpora as one, on the shared label set of the real model.

`load("meld:A+goemotions-ekman:B+iemocap:C+synthetic:D*20")` reads each part with its own
adapter, renames every label to one of EKMAN (Ekman's six plus neutral, MELD's and the
FER2013 face model's classes), drops the utterances left with no label, and keeps every
part's own train/dev/test split.  `*N` after a part repeats its training utterances N
times per epoch (trainer.fit.repeats), so a small corpus weighs in beside large ones.

How the corpora map (a name not listed has no counterpart and is dropped):
- MELD, GoEmotions' Ekman grouping: already these names;
- IEMOCAP: happiness and excited -> joy (the usual 4-class merge), anger, sadness,
  neutral as they are; frustration has no Ekman counterpart and is dropped (about a
  fifth of IEMOCAP);
- the synthetic corpus: happiness -> joy.
"""
from __future__ import annotations

from dataclasses import replace

from trainer.data import Corpus, DataError

EKMAN = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")

# The names corpora use for each label, lower case.
_ALIASES = {
    "neutral": ("neutral", "neu"),
    "joy": ("joy", "happiness", "happy", "hap", "excited", "exc"),
    "sadness": ("sadness", "sad"),
    "anger": ("anger", "angry", "ang"),
    "surprise": ("surprise", "surprised", "sur"),
    "fear": ("fear", "fearful", "fea"),
    "disgust": ("disgust", "disgusted", "dis"),
}
_TO_EKMAN = {alias: label for label, aliases in _ALIASES.items() for alias in aliases}


def to_ekman(label: str) -> str | None:
    """The EKMAN label a corpus's label stands for; None when there is none."""
    return _TO_EKMAN.get(label.lower())


def parts(spec: str) -> list[tuple[str, int]]:
    """"a:P+b:Q*3" -> [("a:P", 1), ("b:Q", 3)]."""
    out = []
    for part in spec.split("+"):
        base, star, count = part.rpartition("*") if "*" in part else (part, "", "1")
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"--data {spec!r}: {part!r}: the repeat after '*' must be a whole number >= 1")
        out.append((base, int(count)))
    return out


def relabel(corpus: Corpus, name: str, repeat: int = 1) -> tuple[Corpus, int]:
    """corpus on EKMAN labels, its dialogues and sessions prefixed with `name` so that
    no two parts share one; (corpus, utterances dropped for having no EKMAN label)."""
    kept, dropped = [], 0
    for u in corpus.utterances:
        labels = sorted({to_ekman(label) for label in u.labels} - {None}, key=EKMAN.index)
        if not labels:
            dropped += 1
            continue
        extra = dict(u.extra, corpus=name)
        if "dialogue" in extra:
            extra["dialogue"] = f"{name}/{extra['dialogue']}"
        if repeat > 1 and u.split == "train":
            extra["repeat"] = repeat
        kept.append(replace(u, labels=labels, session=f"{name}/{u.session}", extra=extra))
    return Corpus(list(EKMAN), kept), dropped


def load_mix(spec: str, load_one) -> Corpus:
    """The combined corpus of a '+'-joined spec; load_one(spec) reads one part."""
    utterances = []
    for part, repeat in parts(spec):
        corpus, _ = relabel(load_one(part), part.partition(":")[0], repeat)
        utterances.extend(corpus.utterances)
    if not utterances:
        raise DataError(f"--data {spec!r}: no utterance has a label among {', '.join(EKMAN)}")
    return Corpus(list(EKMAN), utterances)


def on_labels(corpus: Corpus, labels: list[str], spec: str) -> Corpus:
    """corpus scored by a model with `labels`: the same names in any order, or, for a model
    on EKMAN, the corpus relabelled as above (IEMOCAP's frustration dropped)."""
    if set(corpus.labels) == set(labels):
        return Corpus(list(labels), corpus.utterances)
    if list(labels) == list(EKMAN):
        return relabel(corpus, spec.partition(":")[0])[0]
    raise DataError(f"{spec}: labels {corpus.labels} differ from the model's {labels}")
