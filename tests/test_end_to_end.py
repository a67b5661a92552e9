"""The whole product once: synthetic corpus -> fit -> export -> replay through real
processes and real ZeroMQ sockets, with a subscriber on the public stream."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import jiwer
import jsonschema

from realtime import protocol
from tests.conftest import free_port


def _normalise(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def _replay(media, bundle, out, endpoint, *extra):
    return subprocess.run(
        [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle),
         "--out", str(out), "--endpoint", endpoint, "--quiet", *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_replay_publishes_one_result_per_utterance(bundle, held_out_session, tmp_path):
    truth = [json.loads(l) for l in (held_out_session / "manifest.jsonl").read_text().splitlines()]
    media = held_out_session / truth[0]["file"]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    heard = tmp_path / "heard.jsonl"
    listener = subprocess.Popen(
        [sys.executable, "-m", "realtime.cli", "listen", "--endpoint", endpoint, "--jsonl", str(heard)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        out = tmp_path / "out.jsonl"
        result = _replay(media, bundle, out, endpoint, "--wait-subscribers", "1")
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)  # let the last messages reach the subscriber
    finally:
        listener.send_signal(signal.SIGINT)  # a subscriber exits cleanly on Ctrl-C
        assert listener.wait(timeout=10) == 0

    lines = [json.loads(l) for l in out.read_text().splitlines()]
    # One line per spoken utterance, in order, each overlapping its true span.
    assert len(lines) == len(truth)
    for got, want in zip(lines, truth):
        assert got["start"] < want["end"] and want["start"] < got["end"], (got, want)
    wer = jiwer.wer(_normalise(" ".join(u["text"] for u in truth)),
                    _normalise(" ".join(l["text"] for l in lines)))
    assert wer < 0.30, wer
    labels = json.loads((bundle / "manifest.json").read_text())["labels"]
    for line in lines:
        assert set(line["labels"]) == set(labels)
        assert all(0.0 <= p <= 1.0 for p in line["labels"].values())
        assert line["modalities"] == ["text", "audio", "video"]
        jsonschema.validate(line, protocol.schema())
    assert [l["seq"] for l in lines] == sorted(l["seq"] for l in lines)

    # The subscriber got exactly what was written, plus the start and end status.
    heard_lines = [json.loads(l) for l in heard.read_text().splitlines()]
    assert [m for m in heard_lines if m["type"] == "utterance"] == lines
    assert [m["state"] for m in heard_lines if m["type"] == "status"] == ["started", "finished"]
    assert [m["seq"] for m in heard_lines] == list(range(len(heard_lines)))  # nothing missed
    for message in heard_lines:
        jsonschema.validate(message, protocol.schema())
    # A transcript message precedes each utterance result.
    assert [m["text"] for m in heard_lines if m["type"] == "transcript"] == [l["text"] for l in lines]
    # Window updates (audio + video, no text) at the configured 4 per second of media time.
    windows = [m for m in heard_lines if m["type"] == "window"]
    duration = truth[-1]["end"] + 0.5
    assert abs(len(windows) - 4 * duration) <= 4, (len(windows), duration)
    ends = [w["end"] for w in windows]
    assert all(abs(b - a - 0.25) < 1e-6 for a, b in zip(ends, ends[1:]))
    assert all(w["modalities"] == ["audio", "video"] for w in windows)

    # Same file, same probabilities and transcripts.
    again = tmp_path / "again.jsonl"
    assert _replay(media, bundle, again, f"tcp://127.0.0.1:{free_port()}").returncode == 0
    # Window updates interleave with utterances by arrival, so seq may differ; content may not.
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "seq")}
    assert [strip(json.loads(l)) for l in again.read_text().splitlines()] == [strip(l) for l in lines]

