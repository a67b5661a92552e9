"""CREMA-D (Cao et al. 2014): 91 actors read 12 sentences in 6 emotions.

Files are named `{actor}_{sentence}_{emotion}_{intensity}.{wav,mp3,flv,mp4}`, e.g.
1001_DFA_ANG_XX.wav: actor 1001, sentence DFA, emotion ANG, intensity XX (LO, MD, HI, or
XX unspecified).  PATH is the folder of clips (searched recursively); where one clip is
there as video and audio, the video (which carries the audio too) is used.  There is no
official split: actors are split by `seed` into train/dev/test, so no actor is in two.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from trainer.data import Corpus, DataError, Utterance
from trainer.datasets._common import media_duration

EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness",
            "NEU": "neutral", "SAD": "sadness"}
LABELS = list(EMOTIONS.values())
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
PREFERENCE = (".flv", ".mp4", ".wav", ".mp3")  # video first: it carries the audio too


def clips(path: Path) -> dict[str, Path]:
    """stem -> the preferred file of that clip."""
    found: dict[str, Path] = {}
    for file in sorted(path.rglob("*")):
        suffix = file.suffix.lower()
        if suffix not in PREFERENCE or not NAME.match(file.stem):
            continue
        best = found.get(file.stem)
        if best is None or PREFERENCE.index(suffix) < PREFERENCE.index(best.suffix.lower()):
            found[file.stem] = file
    return found


def split_actors(actors: list[str], seed: int, dev_fraction: float, test_fraction: float) -> dict[str, str]:
    shuffled = sorted(actors)
    random.Random(seed).shuffle(shuffled)
    n_dev = max(1, round(dev_fraction * len(shuffled)))
    n_test = max(1, round(test_fraction * len(shuffled)))
    split = {a: "dev" for a in shuffled[:n_dev]}
    split.update({a: "test" for a in shuffled[n_dev : n_dev + n_test]})
    return {a: split.get(a, "train") for a in actors}


def load(path: Path, seed: int = 0, dev_fraction: float = 0.1, test_fraction: float = 0.1,
         durations: bool = True) -> Corpus:
    found = clips(path)
    if not found:
        raise DataError(f"{path}: no files named like 1001_DFA_ANG_XX.wav")
    parsed = {stem: NAME.match(stem).groups() for stem in found}
    bad = sorted(s for s, (_, sentence, emotion, _) in parsed.items()
                 if emotion not in EMOTIONS or sentence not in SENTENCES)
    if bad:
        raise DataError(f"{path}: unknown sentence or emotion code in {bad[:5]}")
    split_of = split_actors(sorted({g[0] for g in parsed.values()}), seed, dev_fraction, test_fraction)
    utterances = []
    for stem, file in found.items():
        actor, sentence, emotion, intensity = parsed[stem]
        utterances.append(
            Utterance(
                session=stem,
                file=file,
                start=0.0,
                end=media_duration(file) if durations else 0.0,
                text=SENTENCES[sentence],
                speaker=actor,
                labels=[EMOTIONS[emotion]],
                split=split_of[actor],
                extra={"has_media": True, "sentence": sentence, "intensity": intensity},
            )
        )
    return Corpus(list(LABELS), utterances)
