"""The live graph: `realtime serve` with the camera fed from a video file and the
microphone from a PulseAudio null sink played in real time (no sound card here)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import jsonschema

from realtime import protocol
from tests.conftest import free_port
from benchmarks import transcripts
from tests.helpers import wait_for_text


def _watch_dashboard(url: str, seen: list[dict], opened: threading.Event) -> None:
    """A WebSocket client of `serve --dashboard`'s page, as the page is: every body until `finished`."""
    import asyncio

    import aiohttp

    async def watch():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url + "ws") as ws:
                opened.set()
                async for frame in ws:
                    seen.append(json.loads(frame.data))
                    if seen[-1].get("state") == "finished":
                        return

    asyncio.run(watch())


def test_serve_publishes_live_results(bundle, spoken_session, virtual_microphone, tmp_path):
    """Also `serve --dashboard`: its page's WebSocket carries every message the stream had."""
    truth, media, wav, duration = spoken_session

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    messages, log = tmp_path / "messages.jsonl", tmp_path / "serve.log"
    seen: list[dict] = []
    with log.open("w") as err:
        serve = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--model", str(bundle), "--camera", str(media),
             "--microphone", "pulse", "--endpoint", endpoint, "--jsonl", str(messages),
             "--duration", str(duration + 8), "--quiet", "--dashboard", "--dashboard-port", "0"],
            env=virtual_microphone, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for_text(log, "serving session", 120, serve)
            url = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/)", log.read_text()).group(1)
            opened = threading.Event()
            watcher = threading.Thread(target=_watch_dashboard, args=(url, seen, opened), daemon=True)
            watcher.start()
            assert opened.wait(30), "the dashboard's WebSocket did not open"
            subprocess.run(["paplay", "--device=virtmic_sink", str(wav)], env=virtual_microphone,
                           check=True, timeout=duration + 30)
            assert serve.wait(timeout=120) == 0, log.read_text()
            watcher.join(30)
        finally:
            if serve.poll() is None:
                serve.kill()

    got = [json.loads(l) for l in messages.read_text().splitlines()]
    for message in got:
        jsonschema.validate(message, protocol.schema())
    utterances = [m for m in got if m["type"] == "utterance"]
    assert len(utterances) == len(truth), [u["text"] for u in utterances]
    wer = transcripts.wer([u["text"] for u in truth], [u["text"] for u in utterances])
    assert wer < 0.30, (wer, [u["text"] for u in utterances])
    assert all(u["modalities"] == ["text", "audio", "video"] for u in utterances)
    windows = [m for m in got if m["type"] == "window"]
    span = windows[-1]["end"] - windows[0]["end"]
    assert span > duration and abs(len(windows) - 1 - 4 * span) <= 2, (len(windows), span)
    assert [m["state"] for m in got if m["type"] == "status"] == ["started", "finished"]
    # The dashboard's page got the session as published (the bridge replays what came before it opened).
    assert seen == got


def test_serve_refuses_a_camera_it_cannot_open(bundle, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "serve", "--model", str(bundle), "--camera",
         str(tmp_path / "no-such-camera.mp4"), "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "cannot open camera" in result.stderr


def test_record_then_replay(bundle, spoken_session, virtual_microphone, tmp_path):
    """A recorded live session is a file that replay turns into the same utterances."""
    from engines.media import read_media

    truth, media, wav, duration = spoken_session
    recording, log = tmp_path / "recorded.mp4", tmp_path / "record.log"
    with log.open("w") as err:
        rec = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "record", str(recording), "--camera", str(media),
             "--microphone", "pulse", "--duration", str(duration + 3)],
            env=virtual_microphone, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for_text(log, "recording to", 60, rec)
            subprocess.run(["paplay", "--device=virtmic_sink", str(wav)], env=virtual_microphone,
                           check=True, timeout=120)
            assert rec.wait(timeout=60) == 0, log.read_text()
        finally:
            if rec.poll() is None:
                rec.kill()
    recorded_audio, _, frames = read_media(recording, 16000, video_fps=5.0)
    assert len(recorded_audio) / 16000 > duration
    assert len(frames) > 5 * duration * 0.8

    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "replay", str(recording), "--model", str(bundle), "--out", str(out),
         "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == len(truth)
    wer = transcripts.wer([u["text"] for u in truth], [line["text"] for line in lines])
    assert wer < 0.30, (wer, [l["text"] for l in lines])
