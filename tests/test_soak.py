"""benchmarks/soak.py's scoring on hand-made records: pairing spoken utterances with the messages
(lost, duplicates, split and merged utterances), each play's media shift, RSS growth, p95 drift.
No pipeline runs: seconds."""
from __future__ import annotations

import math

import pytest

from benchmarks.soak import (latency_windows, loop_shifts, match, meets, restarts, rss_growth, seq_check,
                             spoken_utterances)


def said(media_end: float, text: str = "the train leaves now") -> dict:
    return {"play": 0, "index": 0, "text": text, "media_end": media_end, "wall_end": 100.0 + media_end}


def message(start: float, end: float, emitted_after_end: float, text: str = "the train leaves now") -> dict:
    return {"start": start, "end": end, "text": text, "timing": {"emitted_at": 100.0 + end + emitted_after_end}}


def test_match_counts_lost_duplicated_split_and_merged_utterances():
    spoken = [said(5.0), said(10.0), said(15.0), said(20.0), said(25.0, "one"), said(27.0, "two"),
              said(30.0)]
    utterances = [
        message(1.0, 5.2, 0.8),  # holds 5.0
        message(6.0, 8.0, 0.5),  # the first piece of a cut utterance: holds no end of speech
        message(8.1, 9.95, 1.6),  # ... its last piece holds 10.0 (within the 0.1 s tolerance)
        # 15.0: nothing holds it (lost)
        message(16.0, 20.3, 0.7, "how dare my friend"),  # holds 20.0, with a text far from what was said
        message(16.0, 20.3, 0.9),  # the same speech published again
        message(6.0, 8.0, 0.7),  # a repeat of the cut piece's span
        message(22.0, 27.05, 1.0, "one two"),  # holds 25.0 and 27.0: merged
        message(28.0, 29.85, 0.4),  # ends 0.15 s before 30.0: beyond the tolerance, so 30.0 is lost
    ]
    got = match(spoken, utterances)
    assert got["spoken"] == 7 and got["received"] == 5
    assert [s["media_end"] for s in got["lost"]] == [15.0, 30.0]
    assert got["duplicates"] == 2  # the second 16-20.3 message, the repeated 6-8 piece
    assert got["unmatched"] == 3  # both 6-8 pieces and the 28-29.85 message hold no end of speech
    assert got["merged"] == 1
    assert got["text_mismatches"] == 1
    # Latency from the holder with the latest end, its first copy: 10.0 -> the 9.95 piece.
    assert [round(lat, 3) for _, lat in got["latencies"]] == [1.0, 1.55, 1.0, 3.05, 1.05]
    assert [w for w, _ in got["latencies"]] == [105.0, 110.0, 120.0, 125.0, 127.0]


def test_spoken_utterances_and_shifts_follow_each_play_even_when_audio_was_dropped():
    rows = [{"start": 0.6, "end": 4.9, "speech_end": 4.8, "text": "a"},
            {"start": 6.0, "end": 9.6, "speech_end": 9.5, "text": "b"},
            {"start": 10.4, "end": 13.6, "speech_end": 13.6, "text": "c"}]
    clock, duration = 990.0, 15.0  # wall time of media time 0
    plays = [1000.0, 1015.3, 1030.6, 1045.9]
    # paplay's start-up 0.2 s; 0.5 s of audio dropped during play 1, another 0.3 s during play 2
    true = [1000.2 - clock, 1015.5 - clock - 0.5, 1030.8 - clock - 0.8, 1046.1 - clock - 0.8]
    utterances = []
    for i, shift in enumerate(true):
        for j, row in enumerate(rows):
            if (i, j) == (1, 1) or i == 2:
                continue  # lost, one and a whole play: the pairing must not move for them
            start, end = shift + row["start"] - 0.03, shift + row["speech_end"] + 0.1
            utterances.append({"start": start, "end": end, "text": row["text"],
                               "timing": {"emitted_at": clock + end + 0.5 + 0.5 * (i > 0) + 0.3 * j}})
    shifts = loop_shifts(rows, plays, utterances, duration)
    assert shifts[:2] + shifts[3:] == pytest.approx(true[:2] + true[3:], abs=0.05)
    assert shifts[2] == pytest.approx(true[1] + 15.3, abs=0.05)  # nothing heard: the prediction
    spoken = spoken_utterances(rows, plays, shifts)
    assert [(s["play"], s["index"]) for s in spoken] == [(i, j) for i in range(4) for j in range(3)]
    assert spoken[4]["wall_end"] == pytest.approx(1015.3 + 9.5)
    got = match(spoken, utterances)
    assert [(s["play"], s["index"]) for s in got["lost"]] == [(1, 1), (2, 0), (2, 1), (2, 2)]
    assert got["duplicates"] == 0 and got["unmatched"] == 0 and got["text_mismatches"] == 0
    # Nothing received: every play's utterances are lost, none invented.
    assert match(spoken_utterances(rows, plays, loop_shifts(rows, plays, [], duration)), [])["received"] == 0


def test_latency_windows_first_last_and_each():
    start, run_s = 5000.0, 600.0
    latencies = [(start + t, 1.0 if t < 100 else 1.2 if t >= 500 else 5.0) for t in range(600)]
    latencies.append((start + run_s, 1.2))  # an end of speech on the run's very end: the last window
    got = latency_windows(latencies, start, run_s, 100.0)
    assert got["first_p95_s"] == pytest.approx(1.0) and got["last_p95_s"] == pytest.approx(1.2)
    assert got["first_n"] == 100 and got["last_n"] == 101
    assert got["drift_percent"] == pytest.approx(20.0)
    assert [w["latency_p95_ms"] for w in got["windows"]] == [1000.0, 5000.0, 5000.0, 5000.0, 5000.0, 1200.0]
    assert [w["utterances"] for w in got["windows"]] == [100, 100, 100, 100, 100, 101]
    faster = latency_windows([(start + 1, 2.0), (start + 599, 1.0)], start, run_s, 100.0)
    assert faster["drift_percent"] == pytest.approx(-50.0)
    assert math.isnan(latency_windows([(start + 1, 2.0)], start, run_s, 100.0)["drift_percent"])  # none at the end


def test_rss_growth_takes_medians_after_the_first_minute_and_at_the_end():
    start = 7000.0
    history = []
    for t in range(0, 301, 5):
        rss = {"main": 100.0, "asr": 1000.0 + 0.1 * t, "fusion": 200.0}
        if t == 65:
            rss["asr"] += 5000  # a spike: the median ignores it
        if t >= 200:
            rss["other"] = 30.0  # a process that appeared later
        history.append((start + t, rss))
    got = rss_growth(history, start, baseline_s=60.0, end_s=300.0, window_s=30.0)
    assert got["baseline_mb"] == pytest.approx(1300.0 + 7.75)  # median of t = 60..85 (the spike at 65 aside)
    assert got["end_mb"] == pytest.approx(1300.0 + 28.75 + 30.0)  # t = 275..300
    assert got["growth_mb"] == pytest.approx(51.0)
    assert got["per_name"] == pytest.approx({"asr": 21.0, "fusion": 0.0, "main": 0.0, "other": 30.0})
    # No sample inside a window: the nearest one.
    sparse = [(start, {"main": 10.0}), (start + 100, {"main": 20.0}), (start + 290, {"main": 35.0})]
    assert rss_growth(sparse, start, 60.0, 300.0, 5.0)["growth_mb"] == pytest.approx(15.0)


def test_seq_restarts_and_targets():
    seqs = ([{"session": "a", "seq": n} for n in (0, 1, 2, 4, 4, 5, 9)] + [{"session": "b", "seq": 0}]
            + [{"session": "c", "seq": n} for n in (2, 3)])
    assert seq_check(seqs) == (6, 1)  # a: 3, 6, 7, 8 skipped, 4 twice; c: 0 and 1 (a session starts at 0)
    status = [{"type": "status", "state": "started"}, {"type": "status", "state": "restarted", "detail": "asr"},
              {"type": "utterance"}, {"type": "status", "state": "restarted"}]
    assert restarts(status) == 2
    ok = meets({"lost_utterances": 0, "rss_growth_mb": 50.0, "latency_p95_drift_percent": -3.0})
    assert all(c["met"] for c in ok.values())
    bad = meets({"lost_utterances": 1, "rss_growth_mb": 50.1, "latency_p95_drift_percent": float("nan")})
    assert not any(c["met"] for c in bad.values())
