"""Corpus adapters: `load("KIND:PATH")` -> trainer.data.Corpus, one small module per corpus.

KIND        PATH                                          labels
meld        folder of {train,dev,test}_sent_emo.csv       7, single-label
iemocap     folder of IEMOCAP_{train,dev,test}.csv        6, single-label
goemotions  folder of {train,dev,test}.tsv + labels.txt   28, multi-label
goemotions-ekman   the same, grouped by ekman_mapping.json    Ekman 6 + neutral
elderreact  folder of {split}_labels.txt / _audio.txt     6, multi-label (+ COVAREP)
mosei       label CSV, or folder of train/valid/test.csv  6, multi-label (intensity > 0)
cremad      folder of 1001_DFA_ANG_XX.wav clips           6, single-label
synthetic, manifest: trainer.data.load_corpus
A+B+...     several of the above on Ekman's labels (trainer.datasets.mix); B*N repeats B's
            training utterances N times per epoch

Every Utterance carries extra["has_media"] (False: text/features only) and, where the
corpus has conversations, extra["dialogue"] and extra["turn"], so that a text branch can
build TelME's past-only context (`dialogue_windows`, `context_prompts`).
"""
from __future__ import annotations

from pathlib import Path

from engines.dialogue import Turn, prompt
from trainer.data import Corpus, DataError, Utterance, dialogue_windows, load_corpus
from trainer.datasets import cremad, elderreact, goemotions, iemocap, meld, mosei

KINDS = ("meld", "iemocap", "goemotions", "goemotions-ekman", "elderreact", "mosei", "cremad",
         "synthetic", "manifest")


def parse(spec: str) -> tuple[str, Path]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS:
        raise DataError(f"--data {spec!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)}")
    if not Path(path).exists():
        raise DataError(f"--data {spec!r}: {path} does not exist")
    return kind, Path(path)


def load(spec: str, media_root: str | Path | None = None, dev_fraction: float = 0.2, seed: int = 0,
         limit: int | None = None) -> Corpus:
    """The corpus named by `KIND:PATH`.

    media_root: where the corpus's media lie when not under PATH (meld, iemocap,
        elderreact, mosei); utterances whose media are missing are text/feature-only.
    dev_fraction, seed: how synthetic/manifest draw their dev sessions, and cremad
        (no official split) its dev and test actors (dev_fraction / 2 each).
    limit: read at most this many rows per split file (quick looks, tests).
    """
    if "+" in spec:  # several corpora on the shared label set (trainer.datasets.mix)
        from trainer.datasets.mix import load_mix

        return load_mix(spec, lambda part: load(part, media_root, dev_fraction, seed, limit))
    kind, path = parse(spec)
    root = Path(media_root) if media_root is not None else None
    if kind in ("synthetic", "manifest"):
        return load_corpus(path, dev_fraction, seed)
    if kind == "meld":
        return meld.load(path, root, limit)
    if kind == "iemocap":
        return iemocap.load(path, root, limit)
    if kind in ("goemotions", "goemotions-ekman"):
        return goemotions.load(path, ekman=kind == "goemotions-ekman", limit=limit)
    if kind == "elderreact":
        return elderreact.load(path, root, limit)
    if kind == "mosei":
        return mosei.load(path, root, limit)
    return cremad.load(path, seed, dev_fraction / 2, dev_fraction / 2)


# --------------------------------------------------------------------------- dialogue context


def context_prompts(utterances: list[Utterance], max_turns: int | None = None,
                    sep: str = "</s>", mask: str = "<mask>") -> list[str]:
    """TelME 3.2.2's prompt (engines.dialogue.prompt) for every utterance, from the past
    of its dialogue with the speakers the corpus names.  `sep` and `mask` are the text
    encoder's separator and mask tokens (RoBERTa's by default)."""
    return [prompt([Turn(v.speaker, v.text) for v in window], sep, mask)
            for window in dialogue_windows(utterances, max_turns)]
