"""Live sources: a camera (OpenCV) and a microphone (PyAudio), stamped with session time.

Both send the same messages as the replay source (`audio` chunks at 16 kHz mono,
`frame` images), so every later stage is shared by replay and serve.  Live
sources never wait for a slow consumer: a frame that cannot be queued is
dropped (stale video is worse than missing video), and audio is queued deeply
because the segmenter and ASR need every sample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import zmq

from realtime import bus
from realtime.stage import Stage


class DeviceError(RuntimeError):
    """A camera or microphone that cannot be opened; the message says which."""


@dataclass
class CaptureOptions:
    camera: str = "0"  # camera index, video file path or stream URL; "" for no camera
    width: int = 640  # requested capture size (the camera may pick the nearest it has)
    height: int = 480
    fps: float = 30.0  # requested capture rate
    microphone: str = ""  # PyAudio input device index or part of its name; "" = system default
    mic_rate: int = 0  # capture rate in Hz; 0 = the device's default rate

    def __post_init__(self):
        if self.width < 1 or self.height < 1 or self.fps <= 0:
            raise ValueError("width, height and fps must be > 0")


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


def camera_source(stage: Stage, options: CaptureOptions, session: str, sample_fps: float, t_start: float) -> None:
    """Send sampled frames stamped with seconds since t_start; drop what the faces stage cannot take."""
    import cv2

    cap = open_camera(options.camera, options)
    out = stage.push(stage.endpoints.video)
    out.setsockopt(zmq.SNDHWM, 2)  # at most two frames wait: the rest are stale
    # A file stands in for a camera in tests and demos: play it at its own rate.
    is_file = not options.camera.isdigit() and "://" not in options.camera
    file_fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    stage.report("ready")
    seq, next_t, n = 0, 0.0, 0
    while True:
        ok, image = cap.read()
        if not ok:
            break  # end of a file, or a camera that went away
        t = n / file_fps if is_file else time.time() - t_start
        n += 1
        if is_file:
            time.sleep(max(0.0, t_start + t - time.time()))
        if t + 1e-6 < next_t:
            continue
        next_t = t + 1.0 / sample_fps
        try:
            bus.send_nowait(out, {"type": "frame", "session": session, "seq": seq, "t": t}, image)
        except zmq.Again:
            pass  # faces stage busy: drop this frame
        seq += 1
        stage.heartbeat()
    cap.release()
    bus.send(out, {"type": "eos", "session": session})


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


def microphone_source(stage: Stage, options: CaptureOptions, session: str, chunk_ms: int,
                      sample_rate: int, t_start: float, seconds: float = 0.0) -> None:
    """Capture mono audio, resample to sample_rate, send chunk_ms chunks stamped by sample count."""
    import av
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        index = find_microphone(pa, options.microphone)
        info = pa.get_device_info_by_index(index) if index is not None else pa.get_default_input_device_info()
        rate = options.mic_rate or int(info["defaultSampleRate"])
        frames = rate * chunk_ms // 1000
        stream = pa.open(format=pyaudio.paInt16, channels=1, rate=rate, input=True,
                         input_device_index=index, frames_per_buffer=frames)
    except (OSError, IOError) as exc:
        pa.terminate()
        raise DeviceError(f"cannot open microphone {options.microphone or '(default)'}: {exc}") from exc
    out = stage.push(stage.endpoints.audio)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    stage.report("ready")
    sent, seq = 0, 0
    # Media time of sample 0: now, relative to the session clock the camera uses too.
    t0 = time.time() - t_start
    try:
        while not seconds or sent < seconds * sample_rate:
            raw = np.frombuffer(stream.read(frames, exception_on_overflow=False), np.int16)
            frame = av.AudioFrame.from_ndarray(raw.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                samples = resampled.to_ndarray().reshape(-1).astype(np.float32)
                bus.send(out, {"type": "audio", "session": session, "seq": seq, "t": t0 + sent / sample_rate},
                         samples)
                sent, seq = sent + samples.size, seq + 1
            stage.heartbeat()
    finally:
        stream.close()
        pa.terminate()
        bus.send(out, {"type": "eos", "session": session})


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
