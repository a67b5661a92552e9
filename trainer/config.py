"""The trainer's settings: the sections of config.toml that `trainer` reads."""
from __future__ import annotations

from dataclasses import dataclass, field

from engines.faces import FaceOptions
from engines.features import SPEECH_PAD_MS
from engines.preprocess import Preprocessing
from common.settings import ConfigError, apply_overrides, build, read_toml
from trainer.fit import TrainOptions
from trainer.losses import LossWeights
from trainer.recipe import RecipeOptions
from trainer.text_teacher import TeacherConfig


@dataclass
class SynthOptions:
    sessions: int = 40  # recorded sessions
    utterances_per_session: int = 6  # utterances in each session, two speakers taking turns
    seed: int = 0  # same seed, same corpus
    people: int = 1  # faces in view: 1, the speaker alone; 2, both side by side (A left, B right),
    # only the speaker's mouth moving (speaker attribution tests)

    def __post_init__(self):
        if self.sessions < 1 or self.utterances_per_session < 1:
            raise ValueError("sessions and utterances_per_session must be >= 1")
        if self.people not in (1, 2):
            raise ValueError("people must be 1 or 2")


@dataclass
class TrainerConfig:
    synth: SynthOptions = field(default_factory=SynthOptions)
    teach: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    loss: LossWeights = field(default_factory=LossWeights)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    faces: FaceOptions = field(default_factory=FaceOptions)
    recipe: RecipeOptions = field(default_factory=RecipeOptions)
    # [vad] speech_pad_ms, the runtime's setting: `fit` pads manifest spans by it, so
    # training cuts utterances as the live VAD does (trainer.data.with_speech_padding).
    speech_pad_ms: int = SPEECH_PAD_MS


def speech_pad_ms(data: dict) -> int:
    """[vad] speech_pad_ms (the rest of [vad] is the runtime's to check)."""
    value = (data.get("vad") or {}).get("speech_pad_ms", SPEECH_PAD_MS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"vad.speech_pad_ms: expected an int >= 0, got {value!r}")
    return value


SECTIONS = {
    "synth": SynthOptions,
    "teach": TeacherConfig,
    "train": TrainOptions,
    "loss": LossWeights,
    "features": Preprocessing,
    "faces": FaceOptions,
    "recipe": RecipeOptions,
}


def load_config(path=None, overrides: list[str] = ()) -> TrainerConfig:
    data = apply_overrides(read_toml(path), list(overrides))
    built = {name: build(cls, data.get(name), name) for name, cls in SECTIONS.items()}
    return TrainerConfig(synth=built["synth"], teach=built["teach"], train=built["train"], loss=built["loss"],
                         preprocessing=built["features"], faces=built["faces"],
                         recipe=built["recipe"], speech_pad_ms=speech_pad_ms(data))
