"""A processing stage killed mid-session loses no utterance (issue 12).

Real `realtime replay` and `realtime serve` processes and a real SIGKILL of one stage
process (found by the name the stage gives itself, `rt-<stage>`).  The session must
complete with every spoken utterance exactly once, a `restarted` status saying which
stage failed, and seq increasing by one over everything published.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest

from realtime import protocol
from realtime.pipeline import PROCESSING
from tests.conftest import free_port
from benchmarks import transcripts
from tests.helpers import kill_stage_after_first_utterance, read_messages


def _check_session(got: list[dict], truth: list[dict], stage: str, live: bool = False) -> None:
    for message in got:
        jsonschema.validate(message, protocol.schema())
    # The supervisor's copy is lossless: one seq after the other, none twice, across the restart.
    assert [m["seq"] for m in got] == list(range(len(got)))
    statuses = [m for m in got if m["type"] == "status"]
    assert [m["state"] for m in statuses] == ["started", "restarted", "finished"], statuses
    assert f"stage {stage} failed" in statuses[1]["detail"], statuses[1]
    utterances = [m for m in got if m["type"] == "utterance"]
    # Every spoken utterance exactly once, in order.
    assert len(utterances) == len(truth), [(u["start"], u["end"], u["text"]) for u in utterances]
    # Live, session time runs ahead of the recording's by when the player started (about
    # 0.1-0.5 s, more on a loaded machine): measured as the median start difference.
    offset = float(np.median([u["start"] - w["start"] for u, w in zip(utterances, truth)])) if live else 0.0
    for got_u, want in zip(utterances, truth):
        assert got_u["start"] - offset < want["end"] and want["start"] < got_u["end"] - offset, (got_u, want, offset)
    finals = [m["text"] for m in got if m["type"] == "transcript" and m["final"]]
    assert finals == [u["text"] for u in utterances]
    wer = transcripts.wer([u["text"] for u in truth], [u["text"] for u in utterances])
    assert wer < 0.30, (wer, [u["text"] for u in utterances])
    # Window updates go on where they were: none repeated, none skipped.
    ends = [m["end"] for m in got if m["type"] == "window"]
    assert all(abs(b - a - 0.25) < 1e-6 for a, b in zip(ends, ends[1:])), ends


@pytest.mark.parametrize("stage", PROCESSING)
def test_replay_loses_nothing_when_a_stage_is_killed(stage, bundle, held_out_session, tmp_path):
    truth = [json.loads(l) for l in (held_out_session / "manifest.jsonl").read_text().splitlines()]
    media = held_out_session / truth[0]["file"]
    out, log = tmp_path / "out.jsonl", tmp_path / "replay.log"
    with log.open("w") as err:
        # At media speed, so the kill lands while every stage still has work ahead of it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle),
             "--out", str(out), "--all-messages", "--realtime", "--endpoint", f"tcp://127.0.0.1:{free_port()}",
             "--quiet"], stdout=subprocess.DEVNULL, stderr=err)
        try:
            kill_stage_after_first_utterance(proc, stage, out, log)
            assert proc.wait(timeout=240) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert f"stage {stage} failed" in log.read_text()
    _check_session(read_messages(out), truth, stage)


def test_serve_loses_nothing_when_the_asr_is_killed(bundle, spoken_session, virtual_microphone, tmp_path):
    """The case issue 12 measured: the ASR killed while it transcribes, live."""
    truth, media, wav, duration = spoken_session
    messages, log = tmp_path / "messages.jsonl", tmp_path / "serve.log"
    with log.open("w") as err:
        serve = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--model", str(bundle), "--camera", str(media),
             "--microphone", "pulse", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--jsonl", str(messages),
             "--duration", str(duration + 25), "--quiet"],
            env=virtual_microphone, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while "serving session" not in log.read_text():
                assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            player = subprocess.Popen(["paplay", "--device=virtmic_sink", str(wav)], env=virtual_microphone)
            kill_stage_after_first_utterance(serve, "asr", messages, log)
            assert player.wait(timeout=duration + 30) == 0
            assert serve.wait(timeout=120) == 0, log.read_text()
        finally:
            if serve.poll() is None:
                serve.kill()
    _check_session(read_messages(messages), truth, "asr", live=True)
