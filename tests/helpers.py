"""Helpers that several test files share (their fixtures are in tests/conftest.py).

A test file imports what it shares from here, never from another test_*.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engines.features import Window

# --------------------------------------------------------------------------- text


# --------------------------------------------------------------------------- media files


def write_pcm_wav(path, audio: np.ndarray, rate: int) -> None:
    """Mono float audio in [-1, 1] as a 16-bit PCM wav."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


def write_media(path, seconds: float, rate: int = 16000, channels: int = 1, tone_hz: float = 440.0,
                video: tuple[int, int, int] | None = None, audio: bool = True) -> None:
    """A file of `seconds`: a tone at `rate` Hz with `channels` and/or video (width, height, fps)."""
    import av

    with av.open(str(path), "w") as container:
        vstream = astream = None
        if video:
            width, height, fps = video
            vstream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            if vstream.codec_context.name == "libx264":
                vstream.options = {"preset": "ultrafast"}
        if audio:
            astream = container.add_stream("aac", rate=rate, layout="mono" if channels == 1 else "stereo")
        block = 1024
        n_audio = int(seconds * rate) if audio else 0
        n_video = int(seconds * video[2]) if video else 0
        a = v = 0
        rng = np.random.default_rng(0)
        while a < n_audio or v < n_video:
            # Interleave by time, as a real recording is: the muxer never holds much.
            if a < n_audio and (v >= n_video or a / rate <= v / video[2]):
                n = min(block, n_audio - a)
                t = (a + np.arange(n)) / rate
                tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.repeat(tone[None], channels, 0), format="fltp",
                                                   layout=astream.layout.name)
                frame.sample_rate, frame.pts = rate, a
                container.mux(astream.encode(frame))
                a += n
            else:
                image = rng.integers(0, 255, (video[1], video[0], 3), np.uint8)  # noise: frames never repeat
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = v
                container.mux(vstream.encode(frame))
                v += 1
        for stream in (astream, vstream):
            if stream is not None:
                container.mux(stream.encode(None))


# --------------------------------------------------------------------------- the pipeline's processes


def run_replay(media, bundle, out, endpoint, *extra):
    """`realtime replay` of `media` to the JSONL file `out`, waited for."""
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


def wait_for_text(path, text: str, timeout: float, proc) -> None:
    """Wait until the file `path` holds `text`; fails if `proc` (`realtime serve`) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{path.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {timeout} s:\n{path.read_text()}")


def read_messages(path: Path) -> list[dict]:
    """The messages of a JSONL output file (none while it does not exist)."""
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def count_utterances(path: Path) -> int:
    return sum(m["type"] == "utterance" for m in read_messages(path))


def process_descendants(pid: int) -> list[int]:
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


def stage_pids(pid: int) -> dict[int, str]:
    """The stage processes below pid, by the name each gives itself (`rt-<stage>`)."""
    names = {}
    for p in process_descendants(pid):
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
        if name.startswith("rt-"):
            names[p] = name[3:]
    return names


def kill_stage_after_first_utterance(proc, stage: str, out: Path, log: Path, timeout: float = 180) -> None:
    """SIGKILL the stage once the session is under way: the first utterance is out, more are to come."""
    deadline = time.monotonic() + timeout
    while count_utterances(out) < 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no utterance before the kill (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.1)
    pids = [p for p, name in stage_pids(proc.pid).items() if name == stage]
    assert len(pids) == 1, (stage, pids)
    os.kill(pids[0], signal.SIGKILL)


# --------------------------------------------------------------------------- engines and the inference service


def sample_windows(n: int, seed: int = 5) -> list[Window]:
    """n windows of every kind the pipeline makes: utterances with text, audio and faces,
    audio-only window updates, text alone (texts of several token lengths)."""
    from engines.features import Window

    rng = np.random.default_rng(seed)
    texts = ["What a wonderful surprise!", "I told you to stop doing that.", "okay",
             "Everything is gone, all of it, and nobody even called me to say so."]
    windows = []
    for i in range(n):
        start = float(i)
        crops = [(start + 0.2, rng.integers(0, 255, (64, 64), dtype=np.uint8))] if i % 3 != 1 else []
        audio = rng.standard_normal(16000 * (1 + i % 3)).astype(np.float32) * 0.1 if i % 4 != 3 else None
        windows.append(Window(start, start + 1.5, text=texts[i % 4] if i % 2 == 0 or audio is None else None,
                              audio=audio, crops=crops))
    return windows


def max_difference(a: list, b: list) -> float:
    """The largest difference of two backends' probabilities (fused and per peer) on the same windows."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.modalities == y.modalities
        for m in ("fused", *x.peers):
            px = x.probabilities if m == "fused" else x.peers[m]
            py = y.probabilities if m == "fused" else y.peers[m]
            worst = max(worst, max(abs(px[k] - py[k]) for k in px))
    return worst


def infer_service(bundle, work, *extra: str):
    """`realtime infer` for `bundle` as a process of its own, started and waited for until it
    serves; a generator that yields its endpoint and checks, at its end, that it stopped cleanly."""
    endpoint, log = f"ipc://{work}/infer.sock", work / "infer.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "infer", "--model", str(bundle),
                                 "--endpoint", endpoint, *extra], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "inference service for" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log.read_text()
