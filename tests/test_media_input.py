"""Media that is valid but unusual: any rate or channel count, one modality only, silence, length.

The source is run as the real stage process, feeding real sockets; replays are real
`realtime replay` processes.
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import zmq

from realtime import bus
from realtime.framework import Endpoints, run_stage
from realtime.stages import source
from tests.helpers import write_media

RATE = 16000


def _run_source(tmp_path, media, video_fps: float = 5.0) -> dict:
    """Run the replay source stage on `media`; everything it sent, and its peak RSS."""
    endpoints = Endpoints.in_dir(str(tmp_path))
    ctx = zmq.Context()
    try:
        control = bus.socket(ctx, zmq.PULL, endpoints.control, bind=True)
        audio_in = bus.socket(ctx, zmq.PULL, endpoints.audio, bind=True)
        video_in = bus.socket(ctx, zmq.PULL, endpoints.video, bind=True)
        body = functools.partial(source.media_source, path=str(media), session="s", chunk_ms=32,
                                 video_fps=video_fps, sample_rate=RATE)
        proc = multiprocessing.get_context("spawn").Process(
            target=run_stage, args=("source", body, endpoints, 64, os.getpid()), daemon=True)
        proc.start()
        chunks, times, frames, ended, report = [], [], [], set(), None
        poller = zmq.Poller()
        for sock in (control, audio_in, video_in):
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + 120
        while (report is None or len(ended) < 2) and time.monotonic() < deadline:
            for sock, _ in poller.poll(500):
                header, array = bus.recv(sock)
                if sock is control:
                    assert header["type"] != "error", header
                    if header["type"] == "done":
                        report = header
                elif header["type"] == "eos":
                    ended.add("audio" if sock is audio_in else "video")
                elif sock is audio_in:
                    chunks.append(array.copy())
                    times.append(header["t"])
                else:
                    frames.append((header["t"], array.shape))
        proc.join(10)
        assert report is not None and proc.exitcode == 0
        assert ended == {"audio", "video"}
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return {"audio": audio, "times": times, "frames": frames, "max_rss_kb": report["max_rss_kb"]}
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("rate, channels", [(8000, 1), (48000, 1), (44100, 2)])
def test_source_delivers_16k_mono_at_any_rate(tmp_path, rate, channels):
    media = tmp_path / f"tone_{rate}_{channels}.m4a"
    write_media(media, 3.0, rate=rate, channels=channels, tone_hz=440.0)
    got = _run_source(tmp_path, media)
    audio = got["audio"]
    assert audio.dtype == np.float32 and audio.ndim == 1
    # 3 s at 16 kHz (AAC adds up to a frame of priming/padding at the source rate).
    assert abs(audio.size - 3 * RATE) <= 2048 * RATE / rate + 512, audio.size
    # Chunk times follow the samples: 32 ms apart, no drift.
    steps = np.diff(got["times"][:-1])
    assert np.allclose(steps, 0.032, atol=1e-6)
    # Still a 440 Hz tone at 16 kHz: a wrong rate would move the peak.
    middle = audio[RATE // 2: RATE // 2 + RATE]
    peak_hz = np.argmax(np.abs(np.fft.rfft(middle))) * RATE / middle.size
    assert abs(peak_hz - 440) < 3, peak_hz
    assert got["frames"] == []


def test_long_files_stream_in_bounded_memory(tmp_path):
    """Peak RSS of the source does not grow with the file's length.

    The bound: the decoder holds a few packets, and each socket at most queue_limit
    messages (the sender waits when a queue is full), so memory is set by
    queue_limit x message size, not by duration; a 2-hour file needs what a
    2-minute one does.  If a stage read the whole file, 150 s of this file
    (48 kHz stereo, 320x240 video) would add well over 100 MB.
    """
    peaks = {}
    for seconds in (15, 150):
        media = tmp_path / f"long_{seconds}.mp4"
        write_media(media, seconds, rate=48000, channels=2, video=(320, 240, 5))
        (tmp_path / f"run{seconds}").mkdir()
        got = _run_source(tmp_path / f"run{seconds}", media)
        assert abs(got["audio"].size / RATE - seconds) < 0.2
        assert len(got["frames"]) == pytest.approx(seconds * 5, abs=2)
        peaks[seconds] = got["max_rss_kb"]
    growth_mb = (peaks[150] - peaks[15]) / 1024
    print(f"source peak RSS: {peaks} kB")
    assert growth_mb < 30, f"peak RSS grew by {growth_mb:.0f} MB from 15 s to 150 s: {peaks}"


# --- one modality, or none that speaks: real replays ---------------------------------

def _write_wav(path, samples: np.ndarray, rate: int, channels: int = 1) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono" if channels == 1 else "stereo")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm[None], channels, 1), format="s16",
                                           layout=stream.layout.name)  # s16 is packed: samples interleaved
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _replay(media, bundle, tmp_path) -> list[dict]:
    from tests.conftest import free_port

    out = tmp_path / f"{media.stem}.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "replay", str(media), "--model", str(bundle), "--out", str(out),
         "--all-messages", "--quiet", "--endpoint", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert messages[-1]["type"] == "status" and messages[-1]["state"] == "finished"
    return messages


def test_audio_only_file_gives_utterances_without_video(bundle, tmp_path):
    from tests import speech

    if not speech.tools_available():
        pytest.skip("espeak-ng and sox are needed to speak the test phrases")
    audio, _ = speech.session(["We did it, this is amazing!", "I cannot believe it."], gap_s=1.0)
    media = tmp_path / "voice.wav"
    _write_wav(media, audio, 16000)
    messages = _replay(media, bundle, tmp_path)
    utterances = [m for m in messages if m["type"] == "utterance"]
    assert len(utterances) == 2 and all(u["text"].strip() for u in utterances)
    assert all(u["modalities"] == ["text", "audio"] for u in utterances)
    assert {tuple(m["modalities"]) for m in messages if m["type"] == "window"} == {("audio",)}


def test_video_only_file_gives_video_windows(bundle, held_out_session, tmp_path):
    from engines.media import read_media

    _, _, frames = read_media(next(held_out_session.glob("*.mp4")), video_fps=5)
    media = tmp_path / "faces.mp4"
    with av.open(str(media), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.height, stream.width = frames[0].image.shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, item in enumerate(frames[:20]):  # 4 s
            frame = av.VideoFrame.from_ndarray(item.image, format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    messages = _replay(media, bundle, tmp_path)
    windows = [m for m in messages if m["type"] == "window"]
    assert not [m for m in messages if m["type"] in ("utterance", "transcript")]
    assert len(windows) >= 12 and all(w["modalities"] == ["video"] for w in windows)  # 4 per second


def test_silence_finishes_with_no_utterances(bundle, tmp_path):
    media = tmp_path / "quiet.wav"
    _write_wav(media, np.zeros(48000 * 3, np.float32), 48000, channels=2)
    messages = _replay(media, bundle, tmp_path)
    assert not [m for m in messages if m["type"] in ("utterance", "transcript")]
    windows = [m for m in messages if m["type"] == "window"]
    assert windows and windows[-1]["end"] == pytest.approx(3.0, abs=0.25)
