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
build TelME's past-only context with `context_prompt`.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

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


def context_prompt(utterances: list[Utterance], i: int, max_turns: int | None = None,
                   sep: str = "</s>", mask: str = "<mask>") -> str:
    """TelME 3.2.2's input for utterance i, from the PAST of its dialogue only:

        "<s1> t_1 <s2> t_2 ... <s1> t_k </s> Now <s1> feels <mask>"

    t_k is utterance i itself, preceded by at most `max_turns` earlier turns of the same
    extra["dialogue"] (earlier = smaller extra["turn"]).  Speakers become <s1>, <s2>, ...
    in order of first appearance in the window, so the prompt names no one and depends on
    nothing outside it.  An utterance without a dialogue gets its own text only.  `sep`
    and `mask` are the text encoder's separator and mask tokens (RoBERTa's by default).
    """
    return _prompt(_past(utterances[i], _by_dialogue(utterances), max_turns), sep, mask)


def context_prompts(utterances: list[Utterance], max_turns: int | None = None,
                    sep: str = "</s>", mask: str = "<mask>") -> list[str]:
    """`context_prompt` for every utterance, grouping the dialogues once."""
    groups = _by_dialogue(utterances)
    return [_prompt(_past(u, groups, max_turns), sep, mask) for u in utterances]


def _by_dialogue(utterances: list[Utterance]) -> dict[str, list[Utterance]]:
    groups: dict[str, list[Utterance]] = defaultdict(list)
    for u in utterances:
        if "dialogue" in u.extra:
            groups[u.extra["dialogue"]].append(u)
    for members in groups.values():
        members.sort(key=lambda u: u.extra["turn"])
    return groups


def _past(u: Utterance, groups: dict[str, list[Utterance]], max_turns: int | None) -> list[Utterance]:
    """u's earlier turns (at most max_turns, the latest ones) and then u."""
    if "dialogue" not in u.extra:
        return [u]
    earlier = [v for v in groups[u.extra["dialogue"]] if v.extra["turn"] < u.extra["turn"]]
    if max_turns is not None:
        earlier = earlier[-max_turns:] if max_turns > 0 else []
    return earlier + [u]


def _prompt(window: list[Utterance], sep: str, mask: str) -> str:
    tokens: dict[str, str] = {}
    for v in window:
        tokens.setdefault(v.speaker, f"<s{len(tokens) + 1}>")
    context = " ".join(f"{tokens[v.speaker]} {v.text.strip()}" for v in window)
    return f"{context} {sep} Now {tokens[window[-1].speaker]} feels {mask}"
