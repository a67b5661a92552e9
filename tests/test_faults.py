"""Any process of the tree may die (issue 25): the fork server, multiprocessing's resource
tracker, replay's file reader, a live camera or microphone.

Real `realtime replay --realtime` and `realtime serve` processes (its microphone a PulseAudio
null sink the speech is played into in real time, its camera a video file), each process
found by what it is and sent a real SIGKILL halfway through an utterance
(benchmarks/faults.py, which also runs the processing stages' kills live).  One session
each for replay and serve, several kills in it, one test per kind of process.  The
processing stages' own kills are in tests/test_restart.py.
"""
from __future__ import annotations

import json
import re
import shutil

import jsonschema
import pytest

from benchmarks.faults import live_session, replay_session, score
from benchmarks.pipeline import VirtualMicrophone, write_wav
from realtime import protocol

REPLAY_KILLS = [("fork-server", 1), ("resource-tracker", 2), ("source", 3)]
LIVE_KILLS = [("fork-server", 1), ("camera", 2), ("microphone", 3)]


def _rows(session):
    return [json.loads(line) for line in (session / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def replayed(bundle, held_out_session, tmp_path_factory, monkeypatch_module):
    rows = _rows(held_out_session)
    return replay_session(held_out_session / rows[0]["file"], rows, bundle, tmp_path_factory.mktemp("replay"),
                          REPLAY_KILLS), rows


@pytest.fixture(scope="module")
def served(bundle, held_out_session, tmp_path_factory, monkeypatch_module):
    from engines.media import read_media

    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio not installed (scripts/setup.sh installs it): no virtual microphone")
    rows = _rows(held_out_session)
    media = held_out_session / rows[0]["file"]
    work = tmp_path_factory.mktemp("serve")
    audio, _, _ = read_media(media, 16000)
    wav = write_wav(work / "speech.wav", audio)
    mic = VirtualMicrophone(work)
    try:
        return live_session(media, wav, len(audio) / 16000, rows, bundle, work, mic, LIVE_KILLS), rows
    finally:
        mic.close()


@pytest.fixture(scope="module")
def monkeypatch_module(request):
    """The runs start `python -m realtime.cli` in the checkout (benchmarks.pipeline.code_root)."""
    from pathlib import Path

    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    yield mp
    mp.undo()


def _complete(run: dict, rows: list[dict], live: bool) -> dict:
    """The session ended well: exit 0, every kill made, every utterance exactly once, seq unbroken."""
    assert run["exit"] == 0, run["log"][-3000:]
    assert not run["errors"], run["errors"]
    for message in run["messages"]:
        jsonschema.validate(message, protocol.schema())
    got = score(run, rows, live)
    assert got["lost"] == 0 and got["duplicates"] == 0 and got["unmatched"] == 0, got
    assert got["seq_ok"], [m["seq"] for m in run["messages"]]
    assert got["states"][0] == "started" and got["states"][-1] == "finished", got["states"]
    return got


def _killed(run: dict, kind: str) -> dict:
    [kill] = [k for k in run["killed"] if k["kind"] == kind]
    return kill


def _new_fork_server(log: str) -> int:
    [pid] = re.findall(r"the fork server died; the stages run on, and a new one \(pid (\d+)\)", log)
    return int(pid)


def test_replay_goes_on_when_its_fork_server_is_killed(replayed):
    run, rows = replayed
    got = _complete(run, rows, live=False)
    dead = _killed(run, "fork-server")["pid"]
    # A new server is started at once, for the stages restarted later (the file reader, below).
    assert _new_fork_server(run["log"]) != dead
    # Its death itself restarts nothing: the one restart is the file reader's.
    assert len(got["restarted"]) == 1 and "stage source failed" in got["restarted"][0], got["restarted"]


def test_replay_goes_on_when_the_resource_tracker_is_killed(replayed):
    run, rows = replayed
    _complete(run, rows, live=False)
    assert _killed(run, "resource-tracker")


def test_replay_restarts_its_file_reader_from_the_checkpoint(replayed):
    run, rows = replayed
    got = _complete(run, rows, live=False)
    assert _killed(run, "source")
    assert got["states"] == ["started", "restarted", "finished"], got["states"]
    assert "processing restarted" in got["restarted"][0]
    # The restarted chain read on from the checkpoint: nothing published twice or skipped.
    ends = [m["end"] for m in run["messages"] if m["type"] == "window"]
    assert all(abs(b - a - 0.25) < 1e-6 for a, b in zip(ends, ends[1:])), ends


def test_serve_goes_on_when_its_fork_server_is_killed(served):
    run, rows = served
    got = _complete(run, rows, live=True)
    assert _new_fork_server(run["log"]) != _killed(run, "fork-server")["pid"]
    # Only the two sources killed after it were replaced, each forked from the new server.
    assert len(got["restarted"]) == 2, got["restarted"]


@pytest.mark.parametrize("source", ["camera", "microphone"])
def test_serve_reopens_a_live_source_that_is_killed(served, source):
    run, rows = served
    got = _complete(run, rows, live=True)
    assert _killed(run, source)
    [detail] = [d for d in got["restarted"] if f"source {source} failed" in d]
    assert "reopened (1/3)" in detail
    # Each reopened source was announced while the session went on, before it finished.
    statuses = [m for m in run["messages"] if m["type"] == "status"]
    assert [s["state"] for s in statuses] == ["started", "restarted", "restarted", "finished"]
    if source == "camera":  # the video goes on after the reopen: faces are seen in the last utterance
        last = [m for m in run["messages"] if m["type"] == "utterance"][-1]
        assert "video" in last["modalities"], last
