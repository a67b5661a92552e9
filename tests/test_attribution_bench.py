"""benchmarks/attribution.py's scoring: faces become people by the side they keep to, and each
utterance is right, wrong or null against the manifest."""
from __future__ import annotations

from benchmarks.attribution import score_session, sides


def _window(*faces):
    return {"type": "window", "faces": [{"id": i, "box": [x, 10, 40, 40]} for i, x in faces]}


def test_faces_are_people_by_their_side_and_utterances_are_scored_by_time():
    messages = [_window((1, 20), (2, 200)), _window((1, 30), (2, 210), (3, 100)), _window((3, 110))]
    assert sides(messages + [_window((4, 100)), _window((4, 300))], 320) == {1: "A", 2: "B", 3: "A"}
    truth = [{"speaker": s, "start": 3.0 * i, "end": 3.0 * i + 2} for i, s in enumerate("ABABA")]

    def said(speaker, start, end):
        return {"type": "utterance", "speaker": speaker, "start": start, "end": end}

    # The VAD cut the first utterance in two: the longer piece speaks for it, and nothing shifts.
    utterances = [said(1, 0.0, 0.4), said(1, 0.5, 2.0), said(None, 3.1, 5.0), said(2, 6.0, 7.9),
                  said(2, 9.0, 11.0), said(None, 12.0, 14.0), said(2, 20.0, 21.0)]
    score = score_session(messages + utterances, truth, 320)
    assert {k: score[k] for k in ("right", "wrong", "null", "missed", "extra")} == \
        {"right": 2, "wrong": 1, "null": 2, "missed": 0, "extra": 1}
    assert score["named"] == ["A", None, "B", "B", None]
    assert score["nulls_on_first_turn"] == 1  # B's first turn (index 1); A's last null is not a first
    short = score_session(messages + utterances[:3], truth, 320)
    assert short["missed"] == 3 and short["right"] == 1
