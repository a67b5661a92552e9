"""`trainer teach` killed with SIGKILL mid-epoch continues with --resume from its last finished
epoch, exactly as the uninterrupted run would have gone on (real processes, a real signal)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["great news today", "so tired of this", "what a lovely day", "nothing to say", "fine",
         "I cannot believe it", "leave me alone", "this is wonderful"]
# MiniLM with its lower 5 of 6 layers fixed: a real fine-tune, a few seconds an epoch on 2 cores.
ARGS = ["--epochs", "2", "--max-len", "16", "--batch-size", "4", "--max-turns", "1", "--freeze-layers", "5"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A text-only corpus of 48 training and 16 dev turns (teach reads no media)."""
    rows = [{"file": "none.mp4", "start": i, "end": i + 1, "text": WORDS[i % 8], "speaker": "Ann" if i % 2 else "Bob",
             "labels": ["joy" if i % 3 else "neutral"], "session": f"d{i // 6}",
             "split": "dev" if i >= 48 else "train"} for i in range(64)]
    path = tmp_path_factory.mktemp("teach") / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _teach(manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # the same arithmetic in every run
    return subprocess.Popen([sys.executable, "-m", "trainer.cli", "teach", "--data", f"manifest:{manifest}",
                             "--out", str(out), *ARGS, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _epochs_logged(stderr: str) -> list[int]:
    return [json.loads(line)["epoch"] for line in stderr.splitlines() if line.startswith('{"epoch"')]


def test_teach_killed_mid_epoch_resumes_from_its_last_finished_epoch(manifest, tmp_path, capsys):
    whole = _teach(manifest, tmp_path / "whole")
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    expected = json.loads((tmp_path / "whole" / "text_teacher.json").read_text())["history"]
    assert not (tmp_path / "whole" / ".checkpoint").exists()  # a finished teacher keeps no resume point

    # The same run, SIGKILLed as soon as the checkpoint of epoch 1 is written (during epoch 2).
    out = tmp_path / "part"
    state = out / ".checkpoint" / "state.pt"
    killed = _teach(manifest, out)
    try:
        deadline = time.monotonic() + 240
        while not state.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(killed.pid, signal.SIGKILL)
        _, err = killed.communicate(timeout=60)
    finally:
        killed.kill()
    assert killed.returncode == -signal.SIGKILL, err
    assert _epochs_logged(err) == [1]
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 1 and not saved["stopped"]
    assert not (out / "text_teacher.json").exists()  # no teacher: the run never finished

    # Other settings cannot resume it (in this process: a subprocess's start costs seconds).
    assert _main(manifest, out, "--resume", "--lr", "1e-4", capsys=capsys) == (2, "lr=5e-05, now 0.0001")

    resumed = _teach(manifest, out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resume: 1 epochs done, continuing with epoch 2" in err
    assert _epochs_logged(err) == [2]  # epoch 1 was not trained again
    history = json.loads((out / "text_teacher.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == json.loads(saved["history"])[0]
    # The optimizer, schedule, batch order and dropout went on as in the uninterrupted run.
    for got, want in zip(history, expected):
        assert got["steps"] == want["steps"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["dev_weighted_f1"] == pytest.approx(want["dev_weighted_f1"])
    assert not (out / ".checkpoint").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["part", "whole"]  # no partial directory left


def _main(manifest: Path, out: Path, *extra: str, capsys) -> tuple[int, str]:
    from trainer.cli import main

    code = main(["--no-progress", "teach", "--data", f"manifest:{manifest}", "--out", str(out), *ARGS, *extra])
    err = capsys.readouterr().err
    return code, next((m for m in ("lr=5e-05, now 0.0001", "nothing to resume from") if m in err), err)


def test_resume_without_a_checkpoint_is_a_clear_error(manifest, tmp_path, capsys):
    assert _main(manifest, tmp_path / "none", "--resume", capsys=capsys) == (2, "nothing to resume from")
