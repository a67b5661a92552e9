"""benchmarks/attribution.py's scoring: faces become people by the side they keep to, and each
utterance is right, wrong or null against the manifest."""
from __future__ import annotations

from benchmarks.attribution import score_session, sides


def _window(*faces):
    return {"type": "window", "faces": [{"id": i, "box": [x, 10, 40, 40]} for i, x in faces]}


def test_faces_are_people_by_their_side_and_utterances_are_scored():
    messages = [_window((1, 20), (2, 200)), _window((1, 30), (2, 210), (3, 100)), _window((3, 110))]
    assert sides(messages + [_window((4, 100)), _window((4, 300))], 320) == {1: "A", 2: "B", 3: "A"}
    truth = [{"speaker": s} for s in "ABABA"]
    utterances = [{"type": "utterance", "speaker": s} for s in (1, None, 2, 2, None)]
    score = score_session(messages + utterances, truth, 320)
    assert {k: score[k] for k in ("right", "wrong", "null", "missed")} == {"right": 2, "wrong": 1, "null": 2,
                                                                          "missed": 0}
    assert score["nulls_on_first_turn"] == 1  # B's first turn (index 1); A's last null is not a first
    short = score_session(messages + utterances[:3], truth, 320)
    assert short["missed"] == 2 and short["right"] == 1
