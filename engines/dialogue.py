"""Dialogue context for the text branch: the one prompt builder of training and serving.

TelME 3.2.2 feeds the text model the past of the dialogue, with speaker tokens, and a
prompt that asks for the current speaker's feeling:

    "<s1> t_1 <s2> t_2 ... <s1> t_k [SEP] Now <s1> feels [MASK]"

t_k is the utterance being scored, preceded by at most `turns` earlier turns (past only:
the live pipeline never knows what comes next).  Speakers become <s1>, <s2>, ... in order
of first appearance in the window, so a prompt names no one and depends on nothing
outside it.  The trainer builds prompts from a corpus's dialogues and the fusion stage
from the session it has heard so far (`History`), both through `prompt()`, so the model
sees the same kind of input in both places.  `sep` and `mask` are the text encoder's own
separator and mask tokens.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

# The speaker of a turn nobody can be named for: a live utterance whose speaking face
# cannot be told (engines.faces.speaking_face), a corpus row without a speaker.
UNKNOWN_SPEAKER = "speaker"


def face_speaker(face_id: int | None) -> str:
    """The speaker of a live turn: the tracked face that spoke it, or the unknown one.
    Only the identity matters: prompt() turns speakers into <s1>, <s2>, ... in order of
    appearance, as it does with a corpus's speaker names in training."""
    return UNKNOWN_SPEAKER if face_id is None else f"face {face_id}"


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str


def prompt(window: Sequence[Turn], sep: str, mask: str) -> str:
    """The prompt for the last turn of `window`, the earlier ones as its context."""
    if not window:
        raise ValueError("a prompt needs at least the current turn")
    tokens: dict[str, str] = {}
    for turn in window:
        tokens.setdefault(turn.speaker, f"<s{len(tokens) + 1}>")
    context = " ".join(f"{tokens[t.speaker]} {t.text.strip()}" for t in window)
    return f"{context} {sep} Now {tokens[window[-1].speaker]} feels {mask}"


class History:
    """The last `turns` turns of one session (None: all of them): the context of the next one."""

    def __init__(self, turns: int | None):
        if turns is not None and turns < 0:
            raise ValueError(f"context turns must be >= 0 (None: all), got {turns}")
        self._past: deque[Turn] = deque(maxlen=turns)

    @property
    def past(self) -> list[Turn]:
        return list(self._past)

    def add(self, turn: Turn) -> None:
        if turn.text.strip():  # an empty transcript is no context
            self._past.append(turn)


def text_input(pre, past: Sequence[Turn], current: Turn) -> str:
    """What the text encoder reads for `current` under preprocessing `pre`: the utterance
    alone (mean pooling), or the prompt with its last pre.context_turns past turns (None:
    all; mask pooling)."""
    if pre.text_pooling == "mean":
        return current.text.strip()
    turns = len(past) if pre.context_turns is None else pre.context_turns
    window = list(past)[max(0, len(past) - turns):]
    return prompt([*window, current], pre.text_sep, pre.text_mask)
