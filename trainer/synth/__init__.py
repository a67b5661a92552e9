"""Synthetic multimodal emotion corpus: recorded two-person sessions as mp4 files.

Each session is a short conversation between speakers "A" and "B" who take
turns.  Every utterance has one or two emotion labels, and each of its three
modalities may or may not show them:

* text  - emotional wording from templates, or a plain neutral sentence;
* audio - espeak-ng prosody (pitch, speed, loudness, pitch range) per label;
* video - a real face photo with a drawn expression (mouth, brows, tint).

A modality that does not carry the cue shows a neutral rendering, so a model
that looks at one modality alone is wrong on some utterances and fusion has
work to do.  The manifest records which modalities carried the cue.

Everything random comes from one numpy Generator per session, seeded from
(seed, session index): the same seed gives the same manifest, audio and
frames, and sessions can be rendered in parallel in any order.

Modules: `plan` (labels, cues, speakers, words of each line), `text` (sentence
templates), `voice` (speech and mixing), `face` (face drawing and framing),
`session` (one session's mp4 and manifest rows; `generate` for a corpus).
"""
from trainer.synth.face import FPS, HEIGHT, WIDTH
from trainer.synth.plan import LABELS, PlannedLine, plan_session
from trainer.synth.session import generate
from trainer.synth.text import EMOTION_TEMPLATES, NEUTRAL_TEMPLATES, PAIR_TEMPLATES, SLOTS
from trainer.synth.voice import GAP_S, LEAD_IN_S, TRAIL_S

__all__ = [
    "EMOTION_TEMPLATES", "FPS", "GAP_S", "HEIGHT", "LABELS", "LEAD_IN_S", "NEUTRAL_TEMPLATES",
    "PAIR_TEMPLATES", "PlannedLine", "SLOTS", "TRAIL_S", "WIDTH", "generate", "plan_session",
]
