"""The whole product once: synthetic corpus -> fit -> export -> replay through real
processes and real ZeroMQ sockets, with a subscriber on the public stream."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jiwer
import jsonschema

from engines.atomic import process_alive
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


def wait_for_status(jsonl: Path, state: str, timeout_s: float = 30.0) -> None:
    """Wait until a `realtime listen --jsonl` file holds the `state` status message (the
    listener writes and flushes one line per message, so only whole lines are read)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = jsonl.read_text().split("\n")[:-1] if jsonl.exists() else []
        if any(m["type"] == "status" and m["state"] == state for m in map(json.loads, lines)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{jsonl}: no {state!r} status after {timeout_s} s")


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

    # Same file, same probabilities and transcripts; partial transcripts, switched on
    # here, add messages but change no result.  (Speculative ASR, which would not change them
    # either, is off in any replay not paced in real time: see test_dashboard for a paced one.)
    again = tmp_path / "again.jsonl"
    result = _replay(media, bundle, again, f"tcp://127.0.0.1:{free_port()}", "--all-messages",
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



def _descendants(pid: int) -> list[int]:
    """Every process below pid: stages are forked from multiprocessing's fork server, a child
    of the supervisor (realtime.forkserver.stage_processes), so they are its grandchildren."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        parents[int(stat.parent.name)] = int(fields[1])  # fields: state, ppid, ...
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def _stages(pid: int) -> dict[int, str]:
    """The stage processes below pid, by the name each gives itself (`rt-<stage>`)."""
    names = {}
    for p in _descendants(pid):
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
        if name.startswith("rt-"):
            names[p] = name[3:]
    return names


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
        stages = _stages(proc.pid)
        time.sleep(0.02)
    assert len(stages) >= 4, stages
    below = _descendants(proc.pid)  # the stages, and the fork server they came from
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 90
    while any(process_alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in below if process_alive(p)], "processes outlived their killed supervisor"
