"""Bad input to `realtime replay`: a clear error naming the file and the reason, exit 2,
no traceback, and before any stage loads a model.  Real CLI processes throughout."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from engines.media import MediaWriter


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _write_clip(path, seconds: float = 2.0) -> None:
    with MediaWriter(path, 5, 64, 48) as writer:
        for i in range(int(seconds * 5)):
            writer.video(np.full((48, 64, 3), 20 * i % 255, np.uint8))
            writer.audio(np.zeros(3200, np.float32))


def _truncated(path) -> None:
    _write_clip(path.with_name("whole.mp4"))
    data = path.with_name("whole.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: cut off


@pytest.mark.parametrize("case, make, reason", [
    ("empty", lambda p: p.write_bytes(b""), "empty file"),
    ("random", lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)), "moov atom not found"),
    ("truncated", _truncated, "no audio or video stream FFmpeg can decode"),
])
def test_replay_refuses_bad_media_at_once(tmp_path, case, make, reason):
    media = tmp_path / f"{case}.mp4"
    make(media)
    # No bundle exists: the media must be refused before the model is even looked at.
    t0 = time.monotonic()
    result = _cli("replay", str(media), "--model", str(tmp_path / "no-bundle"))
    elapsed = time.monotonic() - t0
    assert result.returncode == 2, result.stderr
    assert str(media) in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "bundle" not in result.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s"


@pytest.mark.parametrize("config, overrides, named", [
    ("[vad]\nthreshold = \n", [], "not valid TOML"),  # malformed file: its name and TOML's reason
    ("[faces]\nmin_face = 0\n", [], "min_face"),  # out of range in the file
    ("", ["pipeline.chunk_ms=1.5"], "pipeline.chunk_ms"),  # wrong type
    ("", ["asr.beam_size=\"five\""], "asr.beam_size"),
    ("", ["vad.threshold=2"], "threshold"),  # out of range
    ("", ["fusion.window_rate=nan"], "fusion.window_rate"),  # NaN passes every comparison: refused by type
    ("", ["capture.mic_rate=-8000"], "mic_rate"),
    ("", ["pipeline.stage_start_timeout_s=0"], "stage_start_timeout_s"),
    ("", ["stream.wait_subscribers=-1"], "wait_subscribers"),
])
def test_bad_settings_name_the_key(tmp_path, config, overrides, named):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    media = tmp_path / "session.mp4"
    _write_clip(media, 1.0)
    args = ["replay", str(media), "--model", str(tmp_path), "--config", str(path)]
    for item in overrides:
        args += ["--set", item]
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    if named == "not valid TOML":
        assert str(path) in result.stderr
