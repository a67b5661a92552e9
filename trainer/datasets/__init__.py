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

Every Utterance carries extra["has_media"] (False: text/features only) and, where the
corpus has conversations, extra["dialogue"] and extra["turn"], so that a text branch can
build TelME's past-only context (`dialogue_windows`, `context_prompts`).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from engines.dialogue import Turn, prompt
from trainer.data import Corpus, DataError, Utterance, load_corpus
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


def context_prompts(utterances: list[Utterance], max_turns: int | None = None,
                    sep: str = "</s>", mask: str = "<mask>") -> list[str]:
    """TelME 3.2.2's prompt (engines.dialogue.prompt) for every utterance, from the past
    of its dialogue with the speakers the corpus names.  `sep` and `mask` are the text
    encoder's separator and mask tokens (RoBERTa's by default)."""
    return [prompt([Turn(v.speaker, v.text) for v in window], sep, mask)
            for window in dialogue_windows(utterances, max_turns)]
