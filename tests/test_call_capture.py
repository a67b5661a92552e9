"""The call itself as a source: `--camera screen[:X,Y,W,H]` reads what the screen shows and
`--microphone monitor` what the computer plays.

Real parts, no screen or sound card: an Xvfb display on which a small Tk player
(tests/screen_player.py) plays a face video at its own rate, and a PulseAudio daemon whose
default output is a null sink that a sound is played into. Last, `realtime serve` follows a
held-out session played that way, as it would a call.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.stages.source import CaptureOptions, DeviceError, Microphone, open_video
from tests.conftest import free_port
from tests.desktop import pulse_daemon, xvfb
from benchmarks import transcripts
from tests.helpers import wait_for_text, write_pcm_wav

ROOT = Path(__file__).resolve().parents[1]
FPS, W, H = 10, 200, 150  # the played video
AT = (100, 60)  # where the player shows it on the 640x480 screen


@pytest.fixture
def face_video(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """A 3 s face video whose every frame differs (the face slides, the background changes
    colour), and its frames as a decoder gives them."""
    import av

    from engines.media import MediaWriter

    face = cv2.resize(cv2.imread(str(ROOT / "trainer" / "assets" / "face_a.jpg")), (120, 120))
    path = tmp_path / "face.mp4"
    with MediaWriter(path, FPS, W, H) as writer:
        for i in range(3 * FPS):
            image = np.empty((H, W, 3), np.uint8)
            image[:] = (40 + 6 * i, 200 - 5 * i, 90)
            image[15:135, 5 + 2 * i:125 + 2 * i] = face
            writer.video(image)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    return path, frames


@contextmanager
def playing(video: Path, env: dict, at: tuple[int, int]):
    """tests/screen_player.py showing `video` at `at` on env's display, until the block ends."""
    try:
        import tkinter  # noqa: F401 (the player's toolkit)
    except ImportError:
        pytest.skip("tkinter is missing (Debian package python3-tk): nothing can play video on the display")
    player = subprocess.Popen([sys.executable, str(ROOT / "tests" / "screen_player.py"), str(video), *map(str, at)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert player.stdout.readline().strip() == "showing", player.communicate(timeout=10)[1]
        yield
    finally:
        player.kill()
        player.wait(timeout=10)


@pytest.fixture
def screen_playing(face_video, monkeypatch):
    """An X display showing the face video at AT; DISPLAY is set for this process too."""
    path, frames = face_video
    with xvfb(640, 480) as env, playing(path, env, AT):
        monkeypatch.setenv("DISPLAY", env["DISPLAY"])
        yield env, frames


def _nearest(image: np.ndarray, frames: list[np.ndarray]) -> tuple[int, float]:
    """The index of the video frame closest to image, and their mean absolute difference."""
    errors = [np.abs(image.astype(np.int16) - f).mean() for f in frames]
    return int(np.argmin(errors)), float(min(errors))


def _grab(spec: str, n: int, fps: float = FPS) -> list[tuple[float, np.ndarray]]:
    screen = open_video(CaptureOptions(camera=spec, fps=fps), time.time())
    try:
        grabbed = []
        for item in screen.frames():
            grabbed.append(item)
            if len(grabbed) == n:
                return grabbed
    finally:
        screen.close()
    raise AssertionError(f"the screen gave {len(grabbed)} frames, not {n}")


def test_camera_file_loops_with_media_time_going_on(face_video):
    """--camera-loop: a file camera starts again at its end, its frames' times going on (the soak
    benchmark's hour-long camera from one short file); without it the file ends."""
    from realtime.stages.source import Camera

    path, _ = face_video
    past = time.time() - 1000  # the file's pace is long due: no waiting
    once = list(Camera(CaptureOptions(camera=str(path)), past).frames())
    assert len(once) == 3 * FPS
    looped = Camera(CaptureOptions(camera=str(path), camera_loop=True), past).frames()
    got = [next(looped) for _ in range(3 * 3 * FPS + 5)]  # three passes and a bit
    times = [t for t, _ in got]
    assert times == pytest.approx([n / FPS for n in range(len(got))])
    for n in (0, 7, 3 * FPS - 1):  # each pass shows the file's frames again, in order
        for k in (1, 2, 3):
            if n + k * 3 * FPS < len(got):
                assert np.array_equal(got[n + k * 3 * FPS][1], once[n][1])
    assert not np.array_equal(got[3 * FPS][1], once[3 * FPS - 1][1])
    for camera in ("0", "", "screen", "rtsp://cam/1"):  # only a file can start again
        with pytest.raises(ValueError, match="camera_loop needs a video file"):
            CaptureOptions(camera=camera, camera_loop=True)


def test_screen_region_yields_the_video_being_played(screen_playing):
    _, frames = screen_playing
    grabbed = _grab(f"screen:{AT[0]},{AT[1]},{W},{H}", 15)
    matches = [_nearest(image, frames) for _, image in grabbed]
    assert all(image.shape == (H, W, 3) for _, image in grabbed)
    # Tk draws the decoded pixels unchanged: each grab is one of the video's frames, exactly.
    assert max(error for _, error in matches) < 1.0, matches
    indices = [index for index, _ in matches]
    steps = np.diff(indices) % len(frames)  # the player loops
    assert len(set(indices)) >= 8 and steps.max() <= 3, indices  # it plays, and grabs keep pace
    times = [t for t, _ in grabbed]
    assert 0.07 < np.diff(times).mean() < 0.14, times  # grabbed at the asked 10 per second


def test_screen_whole_and_offset_regions(screen_playing):
    _, frames = screen_playing
    x, y = AT
    (_, whole), = _grab("screen", 1)
    assert whole.shape == (480, 640, 3)
    inside = whole[y:y + H, x:x + W]
    assert _nearest(inside, frames)[1] < 1.0
    outside = whole.copy()
    outside[y:y + H, x:x + W] = 0
    assert outside.max() == 0  # Xvfb -br: black everywhere but the player

    # A region overlapping the player's lower right: its top left shows the video's lower right.
    (_, part), = _grab(f"screen:{x + 50},{y + 40},{W},{H}", 1)
    shown = part[:H - 40, :W - 50]
    index, _ = _nearest(np.pad(shown, ((40, 0), (50, 0), (0, 0))), [np.pad(f[40:, 50:], ((40, 0), (50, 0), (0, 0)))
                                                                      for f in frames])
    assert np.abs(shown.astype(np.int16) - frames[index][40:, 50:]).mean() < 1.0
    assert part[H - 40:].max() == 0 and part[:, W - 50:].max() == 0  # below and right of the player


def test_a_screen_region_opens_on_a_display_with_no_other_client(monkeypatch):
    """The region's grab is opened while the whole screen's (read for its size) is still open:
    an X server whose last client leaves resets itself, and a grab opened during the reset
    failed with an I/O error (7 of 10 times on an idle Xvfb, found as a flaky serve test)."""
    with xvfb(640, 480) as env:
        monkeypatch.setenv("DISPLAY", env["DISPLAY"])
        for _ in range(4):
            screen = open_video(CaptureOptions(camera="screen:100,60,320,240"), time.time())
            assert screen.size == (320, 240)
            screen.container.close()
            time.sleep(1.0)  # the reset this close starts is over before the next try


def test_camera_stage_sends_every_grab_at_the_sampling_rate(screen_playing, tmp_path):
    """`serve`'s camera stage on the screen: 5 frames a second of what is shown, none dropped
    because a grab came a few ms early."""
    import functools
    import multiprocessing
    import os

    import zmq

    from realtime import bus
    from realtime.framework import Endpoints, run_stage
    from realtime.stages.source import camera_source

    _, frames = screen_playing
    endpoints = Endpoints.in_dir(str(tmp_path))
    ctx = zmq.Context()
    control = bus.socket(ctx, zmq.PULL, endpoints.control, bind=True)
    video = bus.socket(ctx, zmq.PULL, endpoints.video, bind=True)
    body = functools.partial(camera_source, options=CaptureOptions(camera=f"screen:{AT[0]},{AT[1]},{W},{H}"),
                             session="s", sample_fps=5.0, t_start=time.time())
    stage = multiprocessing.get_context("spawn").Process(
        target=run_stage, args=("camera", body, endpoints, 64, os.getpid()), daemon=True)
    stage.start()
    try:
        got, deadline = [], time.monotonic() + 120
        while (not got or got[-1][0] - got[0][0] < 4.0) and time.monotonic() < deadline:
            if control.poll(0):
                report, _ = bus.recv(control)
                assert report["type"] != "error", report
            if video.poll(200):
                header, image = bus.recv(video)
                got.append((header["t"], image))
    finally:
        stage.terminate()
        stage.join(10)
        ctx.destroy(linger=0)
    times = [t for t, _ in got[1:]]  # the first may wait on the stage's start
    assert len(times) >= 19 and 0.18 < np.diff(times).mean() < 0.22, np.diff(times)
    assert max(_nearest(image, frames)[1] for _, image in got) < 1.0


def test_screen_errors_say_what_is_wrong(screen_playing, monkeypatch, tmp_path):
    env, _ = screen_playing
    with pytest.raises(DeviceError, match=r"region ends at 700,100, outside display :\d+'s 640x480 screen"):
        open_video(CaptureOptions(camera="screen:600,0,100,100"), time.time())
    monkeypatch.delenv("DISPLAY")
    with pytest.raises(DeviceError, match=r"no X display to capture \(\$DISPLAY is not set"):
        open_video(CaptureOptions(camera="screen"), time.time())
    monkeypatch.setenv("DISPLAY", ":4321")
    with pytest.raises(DeviceError, match="cannot open X display ':4321'"):
        open_video(CaptureOptions(camera="screen"), time.time())
    # From the command line: bad input is exit code 2 with the reason, before any device opens.
    for spec, reason in (("screen:1,2,3", "expected screen or screen:X,Y,W,H"),
                         ("screen:0,0,0,10", "width and height must be > 0"),
                         ("screen:600,0,100,100", "outside display")):
        result = subprocess.run([sys.executable, "-m", "realtime.cli", "record", str(tmp_path / "x.mp4"),
                                 "--camera", spec, "--duration", "1"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and reason in result.stderr, (spec, result.stderr)


def _chirp(rate: int, seconds: float = 1.5) -> np.ndarray:
    """A 300 Hz to 3 kHz sweep: one clear correlation peak, whatever the resampling."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * (300 * t + (3000 - 300) / (2 * seconds) * t**2))).astype(np.float32)


def _best_correlation(audio: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """Peak normalised cross-correlation of ref in audio (FFT), and where it starts."""
    n = len(audio) + len(ref)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(audio, size) * np.conj(np.fft.rfft(ref, size)), size)[:len(audio) - len(ref) + 1]
    energy = np.sqrt(np.convolve(audio.astype(np.float64) ** 2, np.ones(len(ref)), "valid"))
    floor = 1e-3 * np.linalg.norm(ref)  # digital silence scores 0, not rounding noise over 0
    score = corr / (np.linalg.norm(ref) * np.maximum(energy, floor))
    at = int(np.argmax(score))
    return float(score[at]), at


@pytest.fixture
def speakers(tmp_path):
    """A sound server whose default output is a null sink like a real one (44.1 kHz stereo)."""
    with pulse_daemon(tmp_path / "pulse", "module-null-sink sink_name=speakers") as env:
        env.pop("PULSE_SOURCE", None)
        yield env


def test_record_the_call_from_screen_and_monitor(screen_playing, speakers, tmp_path):
    """`realtime record --camera screen:... --microphone monitor` keeps what was shown and played."""
    env = dict(speakers, DISPLAY=screen_playing[0]["DISPLAY"])
    frames = screen_playing[1]
    sound = tmp_path / "chirp.wav"
    write_pcm_wav(sound, _chirp(48000), 48000)
    out, log = tmp_path / "call.mp4", tmp_path / "record.log"
    with log.open("w") as err:
        launched = time.monotonic()
        rec = subprocess.Popen([sys.executable, "-m", "realtime.cli", "record", str(out),
                                "--camera", f"screen:{AT[0]},{AT[1]},{W},{H}", "--microphone", "monitor",
                                "--duration", "6"], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while "recording to" not in log.read_text():
                assert rec.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            ready = time.monotonic()  # the recording started between launched and ready
            time.sleep(2.0)  # the pulse device delivers its first samples ~1 s after it opens
            played = time.monotonic()
            subprocess.run(["paplay", str(sound)], env=env, check=True, timeout=30)  # to the default output
            assert rec.wait(timeout=60) == 0, log.read_text()
        finally:
            if rec.poll() is None:
                rec.kill()

    from engines.media import read_media

    audio, _, video = read_media(out, 16000, video_fps=5.0)
    # The pulse device gives its first samples about 1 s after it opens, and record's file
    # starts its sound there, so it holds that much less sound than picture. Padding the start
    # with silence was tried and taken back: `realtime replay` of the padded recordings then
    # hung in 5 of 8 runs (the segmenter still waiting for audio after the source had exited).
    assert len(video) / 5 - 2.0 < len(audio) / 16000 <= len(video) / 5 + 0.2, (len(audio) / 16000, len(video) / 5)
    score, at = _best_correlation(audio, _chirp(16000))
    assert score > 0.9, score  # the played sound, whole (AAC-coded at 64 kbit/s)
    assert 0 < at / 16000 < played - launched + 0.5, (at / 16000, played - ready)
    assert np.sqrt(np.mean(audio[:at - 1600] ** 2)) < 0.01  # before it, the output was silent

    assert len(video) >= 20 and video[0].image.shape == (H, W, 3)
    matches = [_nearest(f.image, frames) for f in video]
    assert max(error for _, error in matches) < 6.0, matches  # the shown frames, through H.264
    assert len({index for index, _ in matches}) >= 8  # and the video moving in them


def test_devices_name_the_screen_and_the_monitor(screen_playing, speakers):
    env = dict(speakers, DISPLAY=screen_playing[0]["DISPLAY"])
    result = subprocess.run([sys.executable, "-m", "realtime.cli", "devices"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["screen"] == {"display": env["DISPLAY"], "width": 640, "height": 480}
    assert found["monitor"] == {"source": "speakers.monitor"}


def test_monitor_errors_say_what_is_wrong(tmp_path, monkeypatch):
    options = CaptureOptions(camera="", microphone="monitor")
    with pulse_daemon(tmp_path / "pulse") as env:  # a sound server with no output at all
        monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
        monkeypatch.delenv("PULSE_SERVER", raising=False)
        with pytest.raises(DeviceError, match=r"the default output \(none\) has no monitor source"):
            Microphone(options, 32, 16000)
    with pytest.raises(DeviceError, match="cannot reach the sound server"):  # and now none at all
        Microphone(options, 32, 16000)


def test_serve_follows_a_call_from_screen_and_monitor(bundle, spoken_session, speakers, tmp_path):
    """The whole point: `realtime serve --camera screen:... --microphone monitor` while a call
    (a held-out session: its face on the screen, its speech on the speakers) plays."""
    import av

    truth, media, wav, duration = spoken_session
    with av.open(str(media)) as container:
        width, height = container.streams.video[0].width, container.streams.video[0].height
    messages, log = tmp_path / "messages.jsonl", tmp_path / "serve.log"
    with xvfb(640, 480) as display, log.open("w") as err:
        env = dict(speakers, DISPLAY=display["DISPLAY"])
        serve = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--model", str(bundle),
             "--camera", f"screen:{AT[0]},{AT[1]},{width},{height}", "--microphone", "monitor",
             "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--jsonl", str(messages),
             "--duration", str(duration + 8), "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for_text(log, "serving session", 120, serve)
            with playing(media, env, AT):  # the call starts: face and voice together
                subprocess.run(["paplay", str(wav)], env=env, check=True, timeout=duration + 30)
                assert serve.wait(timeout=120) == 0, log.read_text()
        finally:
            if serve.poll() is None:
                serve.kill()

    got = [json.loads(line) for line in messages.read_text().splitlines()]
    utterances = [m for m in got if m["type"] == "utterance"]
    assert len(utterances) == len(truth), [u["text"] for u in utterances]
    wer = transcripts.wer([u["text"] for u in truth], [u["text"] for u in utterances])
    assert wer < 0.30, (wer, [u["text"] for u in utterances])
    # The face was found on the screen for every utterance.
    assert all(u["modalities"] == ["text", "audio", "video"] for u in utterances), utterances
    assert [m["state"] for m in got if m["type"] == "status"] == ["started", "finished"]
