"""Live sources: a camera (OpenCV) and a microphone (PyAudio), stamped with session time.

Both send the same messages as the replay source (`audio` chunks at 16 kHz mono,
`frame` images), so every later stage is shared by replay and serve.  Live
sources never wait for a slow consumer: a frame that cannot be queued is
dropped (stale video is worse than missing video), and audio is queued deeply
because the segmenter and ASR need every sample.

After a processing stage fails, the supervisor restarts the processing chain and
sends a `rewind`: the microphone sends its last `rewind_s` seconds of audio again
from the checkpoint's media time (it keeps them for that), so no utterance is lost;
the camera only moves on to the new generation (resent video would be stale).
"""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from realtime import bus
from realtime.stage import Stage, StageError


class DeviceError(StageError):
    """A camera or microphone that cannot be opened; the message says which."""


@dataclass
class CaptureOptions:
    camera: str = "0"  # camera index, video file (played at its own rate) or stream URL; "" = none
    width: int = 640  # requested camera width (the camera may pick the nearest size it has)
    height: int = 480  # requested camera height
    fps: float = 30.0  # requested camera frame rate
    microphone: str = ""  # PyAudio input device index or part of its name; "" = system default
    mic_rate: int = 0  # capture rate in Hz; 0 = the device's default (resampled to 16 kHz)

    def __post_init__(self):
        if self.width < 1 or self.height < 1 or self.fps <= 0:
            raise ValueError("width, height and fps must be > 0")
        if self.mic_rate != 0 and not 4000 <= self.mic_rate <= 384_000:
            raise ValueError(f"mic_rate must be 0 (the device's rate) or in [4000, 384000] Hz, got {self.mic_rate}")


def open_camera(spec: str, options: CaptureOptions):
    """cv2.VideoCapture for an index ("0"), a file path or a URL; DeviceError if it does not open."""
    import cv2

    target = int(spec) if spec.isdigit() else spec
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        raise DeviceError(f"cannot open camera {spec!r} (no such device, file or stream; "
                          "`realtime devices` lists cameras)")
    if isinstance(target, int):
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, options.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, options.height)
        cap.set(cv2.CAP_PROP_FPS, options.fps)
    return cap


class Camera:
    """Frames with media times (seconds since t_start); a file plays at its own rate, like a camera."""

    def __init__(self, options: CaptureOptions, t_start: float):
        import cv2

        self.cap = open_camera(options.camera, options)
        self.t_start = t_start
        self.is_file = not options.camera.isdigit() and "://" not in options.camera
        self.file_fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def frames(self):
        n = 0
        while True:
            ok, image = self.cap.read()
            if not ok:
                return  # end of a file, or a camera that went away
            if self.is_file:
                t = n / self.file_fps
                time.sleep(max(0.0, self.t_start + t - time.time()))
            else:
                t = time.time() - self.t_start
            n += 1
            yield t, image

    def close(self) -> None:
        self.cap.release()


def camera_source(stage: Stage, options: CaptureOptions, session: str, sample_fps: float, t_start: float) -> None:
    """Send sampled frames stamped with session time; drop what the faces stage cannot take."""
    camera = Camera(options, t_start)
    out = stage.push(stage.endpoints.video)
    out.setsockopt(zmq.SNDHWM, 2)  # at most two frames wait: the rest are stale
    commands = stage.commands()
    stage.report("ready")
    seq, next_t = 0, 0.0
    for t, image in camera.frames():
        if (command := stage.command(commands)) is not None:
            if command["type"] == "finish":
                break
            stage.gen = command["gen"]  # a restarted chain: new frames are for it
        if t + 1e-6 < next_t:
            continue
        next_t = t + 1.0 / sample_fps
        try:
            bus.send_nowait(out, {"type": "frame", "session": session, "seq": seq, "t": t, "gen": stage.gen}, image)
        except zmq.Again:
            pass  # faces stage busy: drop this frame
        seq += 1
        stage.heartbeat()
    camera.close()
    eos = {"type": "eos", "session": session}
    if not camera.is_file:  # a file ends; a camera or stream that stops giving frames has gone away
        eos["lost"] = f"camera {options.camera}: no more frames (unplugged, or the stream ended)"
    stage.send(out, dict(eos, gen=stage.gen))


def find_microphone(pa, spec: str) -> int | None:
    """PyAudio device index for an index or a name fragment; None = default input."""
    if spec == "":
        return None
    inputs = [i for i in range(pa.get_device_count()) if pa.get_device_info_by_index(i)["maxInputChannels"] > 0]
    if spec.isdigit() and int(spec) in inputs:
        return int(spec)
    for i in inputs:
        if spec.lower() in pa.get_device_info_by_index(i)["name"].lower():
            return i
    raise DeviceError(f"no microphone matches {spec!r}; `realtime devices` lists microphones")


class Microphone:
    """Mono capture at the device's rate, resampled to sample_rate, in chunk_ms reads."""

    def __init__(self, options: CaptureOptions, chunk_ms: int, sample_rate: int):
        import av
        import pyaudio

        self.pa = pyaudio.PyAudio()
        try:
            index = find_microphone(self.pa, options.microphone)
            info = (self.pa.get_device_info_by_index(index) if index is not None
                    else self.pa.get_default_input_device_info())
            self.device_rate = options.mic_rate or int(info["defaultSampleRate"])
            self.frames = self.device_rate * chunk_ms // 1000
            self.stream = self.pa.open(format=pyaudio.paInt16, channels=1, rate=self.device_rate, input=True,
                                       input_device_index=index, frames_per_buffer=self.frames)
        except (OSError, IOError) as exc:
            self.pa.terminate()
            raise DeviceError(f"cannot open microphone {options.microphone or '(default)'}: {exc}") from exc
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)

    def read(self) -> np.ndarray:
        """The next chunk_ms of audio (float32 at sample_rate; sizes vary slightly with resampling)."""
        import av

        raw = np.frombuffer(self.stream.read(self.frames, exception_on_overflow=False), np.int16)
        frame = av.AudioFrame.from_ndarray(raw.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.device_rate
        out = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def close(self) -> None:
        self.stream.close()
        self.pa.terminate()


def microphone_source(stage: Stage, options: CaptureOptions, session: str, chunk_ms: int,
                      sample_rate: int, t_start: float, rewind_s: float = 60.0) -> None:
    """Send audio chunks stamped by sample count from the moment capture started.

    The last rewind_s seconds sent are kept, to be sent again to a restarted chain."""
    mic = Microphone(options, chunk_ms, sample_rate)
    out = stage.push(stage.endpoints.audio)
    commands = stage.commands()
    stage.report("ready")
    sent, seq = 0, 0
    t0 = time.time() - t_start  # media time of sample 0, on the session clock the camera uses too
    kept: deque[tuple[dict, np.ndarray]] = deque()
    eos = {"type": "eos", "session": session}
    try:
        while True:
            if (command := stage.command(commands)) is not None:
                if command["type"] == "finish":
                    return
                stage.gen = command["gen"]
                _resend(stage, out, kept, command["t"], sample_rate)
            try:
                samples = mic.read()
            except OSError as exc:  # unplugged, or its sound server is gone: the camera carries on
                eos["lost"] = f"microphone {options.microphone or '(default)'}: {exc}"
                return
            if samples.size:
                header = {"type": "audio", "session": session, "seq": seq, "t": t0 + sent / sample_rate}
                stage.send(out, dict(header, gen=stage.gen), samples)
                kept.append((header, samples))
                while kept and kept[-1][0]["t"] - kept[0][0]["t"] > rewind_s:
                    kept.popleft()
                sent, seq = sent + samples.size, seq + 1
            stage.heartbeat()
    finally:
        try:
            mic.close()
        except OSError:
            pass  # a device that is gone cannot be closed cleanly
        stage.send(out, dict(eos, gen=stage.gen))


def _resend(stage: Stage, out, kept, since: float, sample_rate: int) -> None:
    """Send the kept chunks that end after `since` again, in the stage's (new) generation."""
    if kept and kept[0][0]["t"] > since:
        print(f"realtime: microphone: only {kept[-1][0]['t'] - kept[0][0]['t']:.0f} s of audio kept; "
              f"{kept[0][0]['t'] - since:.1f} s before it are not sent again (raise pipeline.rewind_s)",
              file=sys.stderr, flush=True)
    for header, samples in kept:
        if header["t"] + samples.size / sample_rate > since:
            stage.send(out, dict(header, gen=stage.gen), samples)


def list_devices() -> dict[str, list[dict]]:
    """Cameras OpenCV can open (indices 0-9) and PyAudio input devices."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # probing absent indices warns

    cameras = []
    for index in range(10):
        cap = cv2.VideoCapture(index)
        if cap.isOpened():
            cameras.append({"index": index, "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))})
        cap.release()
    microphones = []
    try:
        import pyaudio
    except ImportError:
        return {"cameras": cameras, "microphones": [], "note": "pyaudio not installed (extra `live`)"}
    pa = pyaudio.PyAudio()
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if info["maxInputChannels"] > 0:
            microphones.append({"index": i, "name": info["name"], "rate": int(info["defaultSampleRate"])})
    pa.terminate()
    return {"cameras": cameras, "microphones": microphones}
