"""The whole product once: synthetic corpus -> fit -> export -> replay through real
processes and real ZeroMQ sockets, with a subscriber on the public stream."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import jsonschema

from common.atomic import process_alive
from realtime import protocol
from tests.conftest import free_port
from benchmarks import transcripts
from tests.helpers import process_descendants, run_replay, stage_pids, wait_for_status


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
        result = run_replay(media, bundle, out, endpoint, "--wait-subscribers", "1")
        assert result.returncode == 0, result.stderr
        wait_for_status(heard, "finished")  # the last message has reached the subscriber
        listener.send_signal(signal.SIGINT)  # a subscriber exits cleanly on Ctrl-C
        assert listener.wait(timeout=10) == 0
    finally:
        if listener.poll() is None:  # no listener outlives the test
            listener.kill()
            listener.wait()

    lines = [json.loads(l) for l in out.read_text().splitlines()]
    # One line per spoken utterance, in order, each overlapping its true span.
    assert len(lines) == len(truth)
    for got, want in zip(lines, truth):
        assert got["start"] < want["end"] and want["start"] < got["end"], (got, want)
    wer = transcripts.wer([u["text"] for u in truth], [line["text"] for line in lines])
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

    # Same file, same probabilities and transcripts; partial transcripts, switched on
    # here, add messages but change no result.  (Speculative ASR, which would not change them
    # either, is off in any replay not paced in real time: see test_dashboard for a paced one.)
    again = tmp_path / "again.jsonl"
    result = run_replay(media, bundle, again, f"tcp://127.0.0.1:{free_port()}", "--all-messages",
                     "--set", "asr.partial_every_s=0.5", "--set", "asr.speculative=false")
    assert result.returncode == 0, result.stderr
    messages = [json.loads(l) for l in again.read_text().splitlines()]
    # Window updates interleave with utterances by arrival, so seq may differ; content may not.
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "seq", "session")}
    assert [strip(m) for m in messages if m["type"] == "utterance"] == [strip(l) for l in lines]
    # Every window too: none is lost when the ASR's end of stream overtakes the last audio chunks.
    assert [strip(m) for m in messages if m["type"] == "window"] == [strip(w) for w in windows]
    for message in messages:
        jsonschema.validate(message, protocol.schema())
    finals = [m for m in messages if m["type"] == "transcript" and m["final"]]
    partials = [m for m in messages if m["type"] == "transcript" and not m["final"]]
    assert [m["text"] for m in finals] == [l["text"] for l in lines]
    assert partials, "no partial transcript although utterances last longer than 0.5 s"
    for partial in partials:
        # Each partial belongs to an utterance that is later published as final.
        final = next(f for f in finals if f["start"] == partial["start"])
        assert partial["seq"] < final["seq"]



def test_stages_exit_when_the_replay_is_killed(bundle, held_out_session):
    """SIGKILL leaves the supervisor no chance to stop its stages: they must notice alone,
    even when the kill comes while they are still starting up."""
    media = next(held_out_session.glob("*.mp4"))
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle),
                             "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    stages: dict[int, str] = {}
    # Kill as soon as the processing stages are started: they are still loading their models then.
    while len(stages) < 4 and time.monotonic() < deadline:
        stages = stage_pids(proc.pid)
        time.sleep(0.02)
    assert len(stages) >= 4, stages
    below = process_descendants(proc.pid)  # the stages, and the fork server they came from
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 90
    while any(process_alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in below if process_alive(p)], "processes outlived their killed supervisor"
