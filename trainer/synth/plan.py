"""What a synthetic session contains, before any audio or video exists.

The plan of a session: its two speakers (voice and face placement), and for
each line of the conversation who says it, its emotion labels, which
modalities carry them (the cues) and its words.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from engines.heads import MODALITIES
from trainer.synth.text import utterance_text

LABELS = ("neutral", "happiness", "sadness", "anger", "surprise")
NEUTRAL_P = 0.3  # share of single-label utterances that are neutral
MULTI_LABEL_P = 0.15  # share of utterances with a second label
CUE_P = 0.65  # chance that a modality carries the emotion of a non-neutral utterance
# Label pairs that plausibly co-occur; the order within a pair is drawn per utterance.
LABEL_PAIRS = (
    ("happiness", "surprise"),
    ("anger", "sadness"),
    ("sadness", "surprise"),
    ("anger", "surprise"),
)

# Speaker A's photo is a man, B's a woman, so each gets voices to match.  These
# variants are the ones Whisper tiny.en understood best in a trial of espeak-ng
# voices (the klatt variants are male).  The female voices are harder to
# understand at the same speed, so B talks more slowly (SPEED_WPM).
VOICE_VARIANTS = {"A": ("klatt3", "klatt2", "m6"), "B": ("f3", "steph")}
SPEED_WPM = {"A": (140, 160), "B": (125, 140)}
BASE_PITCH = {"A": 42, "B": 52}  # espeak -p; the variant sets the voice's own register


@dataclass
class Speaker:
    name: str
    voice: str  # espeak-ng voice with variant, e.g. "en-us+m3"
    pitch: float  # espeak -p for neutral speech
    speed: float  # espeak -s (words per minute) for neutral speech
    loudness_db: float  # offset on every utterance's level: some people talk louder
    face_scale: float  # face size in the frame, as a factor on FACE_WIDTH
    face_offset: tuple[float, float]  # face centre shift from the frame centre, pixels


@dataclass
class PlannedLine:
    """One turn of a session's conversation; its audio and placement come later."""

    index: int
    speaker: str
    labels: list[str]
    cues: dict[str, bool]
    text: str
    start_sample: int = 0
    audio: np.ndarray | None = field(default=None, repr=False)  # speech, set once synthesised

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.audio)


def draw_labels(rng: np.random.Generator) -> list[str]:
    """One label, or with MULTI_LABEL_P a co-occurring pair (primary first)."""
    if rng.random() < MULTI_LABEL_P:
        pair = list(LABEL_PAIRS[rng.integers(len(LABEL_PAIRS))])
        return pair if rng.random() < 0.5 else pair[::-1]
    if rng.random() < NEUTRAL_P:
        return ["neutral"]
    return [LABELS[1 + rng.integers(len(LABELS) - 1)]]


def draw_cues(rng: np.random.Generator, labels: list[str]) -> dict[str, bool]:
    """Which modalities show the labels.

    A neutral utterance looks neutral everywhere, so all its cues are True
    ("this modality agrees with the label").  For an emotional one each
    modality carries the cue with CUE_P, and at least one always does, so the
    label is never invisible to every modality.
    """
    if labels == ["neutral"]:
        return {m: True for m in MODALITIES}
    cues = {m: bool(rng.random() < CUE_P) for m in MODALITIES}
    if not any(cues.values()):
        cues[MODALITIES[rng.integers(len(MODALITIES))]] = True
    return cues


# With both people in view (people=2), A sits left and B right of the frame centre by
# this many pixels, so two faces about 90 px wide fit side by side in 320 px.
SEAT_X = {"A": -80.0, "B": 80.0}


def draw_speakers(rng: np.random.Generator, people: int = 1) -> dict[str, Speaker]:
    """The two speakers; with people=2 both faces are in view, each in its own seat."""
    if people not in (1, 2):
        raise ValueError(f"people must be 1 or 2, got {people}")
    speakers = {}
    for name, variants in VOICE_VARIANTS.items():
        speakers[name] = Speaker(
            name=name,
            voice="en-us+" + variants[rng.integers(len(variants))],
            pitch=BASE_PITCH[name] + rng.uniform(-6, 6),
            speed=rng.uniform(*SPEED_WPM[name]),
            loudness_db=rng.uniform(-2, 2),
            face_scale=rng.uniform(0.85, 1.15) if people == 1 else rng.uniform(0.8, 0.95),
            face_offset=((rng.uniform(-40, 40), rng.uniform(-10, 10)) if people == 1
                         else (SEAT_X[name] + rng.uniform(-5, 5), rng.uniform(-10, 10))),
        )
    return speakers


def plan_session(rng: np.random.Generator, n_utterances: int,
                 people: int = 1) -> tuple[dict[str, Speaker], list[PlannedLine]]:
    """All random choices of a session except prosody jitter and motion."""
    speakers = draw_speakers(rng, people)
    # Who opens the conversation varies, so "A speaks first" is no shortcut.
    order = ("A", "B") if rng.random() < 0.5 else ("B", "A")
    utterances = []
    for i in range(n_utterances):
        labels = draw_labels(rng)
        cues = draw_cues(rng, labels)
        text = utterance_text(rng, labels, cues["text"])
        utterances.append(PlannedLine(i, order[i % 2], labels, cues, text))
    return speakers, utterances


def average(parts: list):
    """Field-wise mean of dataclass instances: a label pair shows a blend of both."""
    values = {}
    for f in fields(parts[0]):
        mean = np.mean([getattr(p, f.name) for p in parts], axis=0)
        values[f.name] = tuple(float(v) for v in mean) if np.ndim(mean) else float(mean)
    return type(parts[0])(**values)
