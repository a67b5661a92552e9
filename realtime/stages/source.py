"""The sources: a session's media, as audio chunks and video frames stamped with media time.

Replay (`media_source`) reads a recorded session: audio in fixed chunks and video frames, as
fast as the consumers take them (or at the pace it was recorded).  Live, a camera (OpenCV) or
the screen (FFmpeg's x11grab through PyAV), and a microphone or what the computer plays
(PyAudio), stamped with session time (`camera_source`, `microphone_source`); `list_devices`
says what can be captured here.

All send the same messages (`audio` chunks at 16 kHz mono, `frame` images), so every later
stage is shared by replay and serve.  Live sources never wait for a slow consumer: a frame
that cannot be queued is dropped (stale video is worse than missing video), and audio is
queued deeply because the segmenter and ASR need every sample.

After a processing stage fails, the supervisor restarts the processing chain and
sends a `rewind`: replay's source reads its file again from the checkpoint's media time;
the microphone sends its last `rewind_s` seconds of audio again from there (it keeps them
for that), so no utterance is lost; the camera only moves on to the new generation (resent
video would be stale).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from common.errors import UserError
from realtime import bus
from realtime.framework import Stage, StageError


CLOCK_LINE = "media time 0 is wall clock "  # benchmarks/pipeline.py finds this on stderr


def print_clock(doing: str, wall: float) -> None:
    """The wall clock of media time 0 on stderr (sources stamp media time m as wall + m): what
    a latency measurement needs (benchmarks/pipeline.py)."""
    print(f"realtime: {doing}; {CLOCK_LINE}{wall:.6f}", file=sys.stderr, flush=True)


def _media_messages(path: str, session: str, chunk_ms: int, video_fps: float, sample_rate: int):
    """A recording as the source sends it: (stream, header, array, media time it is complete).

    Deterministic: every pass over the same file gives the same chunks with the same
    seq, so a rewind resends exactly what was sent before.
    """
    from engines.media import AudioChunk, iter_media

    chunk = sample_rate * chunk_ms // 1000
    pending = np.zeros(0, np.float32)
    pending_t = 0.0
    seq = 0
    for item in iter_media(path, sample_rate, video_fps):
        if isinstance(item, AudioChunk):
            if pending.size == 0:
                pending_t = item.t
            pending = np.concatenate([pending, item.samples])
            while pending.size >= chunk:
                yield ("audio", {"type": "audio", "session": session, "seq": seq, "t": pending_t}, pending[:chunk],
                       pending_t + chunk / sample_rate)
                pending, pending_t, seq = pending[chunk:], pending_t + chunk / sample_rate, seq + 1
        else:
            yield "video", {"type": "frame", "session": session, "seq": seq, "t": item.t}, item.image, item.t
            seq += 1
    if pending.size:
        yield ("audio", {"type": "audio", "session": session, "seq": seq, "t": pending_t}, pending,
               pending_t + pending.size / sample_rate)
    for stream in ("audio", "video"):
        yield stream, {"type": "eos", "session": session}, None, math.inf


def media_source(stage: Stage, path: str, session: str, chunk_ms: int, video_fps: float,
                 sample_rate: int, realtime: bool = False, rewindable: bool = False,
                 since: float = -math.inf) -> None:
    """Replay a recorded session: audio in fixed chunks, video frames, as fast as consumers take them.

    With realtime, each item waits until its media time has passed on the wall clock
    since the first one, so the stream comes out at the pace it was recorded (a
    dashboard, or a listener, sees the session as it would have seen it live).

    With rewindable (under a supervisor that restarts stages), the source stays until the
    supervisor says `finish`: a `rewind` makes it send the file again, from the rewind's
    media time on and stamped with the new generation, to a restarted processing chain.
    The file is the source's buffer: it is read again, so nothing is held in memory.
    since: the media time to start from (a source restarted after its predecessor died), as if
    a rewind to it had come first.
    """
    out = {"audio": stage.push(stage.endpoints.audio), "video": stage.push(stage.endpoints.video)}
    commands = stage.commands() if rewindable else None
    stage.report("ready")
    clock0 = time.monotonic() - max(since, 0.0)  # a restarted source goes on at its pace from `since`
    if realtime and since == -math.inf:  # the wall clock of media time 0: what a latency measurement needs
        # (benchmarks/pipeline.py); a restarted source's clock is not the session's
        print_clock(f"replaying {session} at its own pace", time.time())
    while True:
        command = None
        for stream, header, array, complete_at in _media_messages(path, session, chunk_ms, video_fps, sample_rate):
            # A rewind resends what the chain still needs: each audio chunk that ends after
            # `since` (so the one holding it is whole) and each frame from `since` on.
            if complete_at < since or (header["type"] == "audio" and complete_at == since):
                continue
            if realtime:
                # An audio chunk is complete only at its end; a frame exists at its own time.
                while (wait := clock0 + complete_at - time.monotonic()) > 0 and complete_at < math.inf:
                    time.sleep(min(wait, 0.5))
                    stage.heartbeat()
            stage.send(out[stream], dict(header, gen=stage.gen), array)
            if commands is not None and (command := stage.command(commands)) is not None:
                break
        if commands is None:
            return
        while command is None:  # all sent: wait for a rewind or the end of the session
            command = stage.command(commands, timeout_s=60.0)
        if command["type"] == "finish":
            return
        stage.gen, since = command["gen"], command["t"]


class DeviceError(StageError, UserError):
    """A camera or microphone that cannot be opened; the message says which."""


@dataclass
class CaptureOptions:
    camera: str = "0"  # camera index, video file (played at its own rate), stream URL, or screen[:X,Y,W,H]
    # (the X screen, or its region W x H pixels at X,Y, e.g. a call's gallery view); "" = none
    width: int = 640  # requested camera width (the camera may pick the nearest size it has)
    height: int = 480  # requested camera height
    fps: float = 30.0  # requested camera frame rate
    microphone: str = ""  # PyAudio input device index or part of its name, or monitor (what this computer
    # plays: the PulseAudio/PipeWire monitor of the default output); "" = system default
    mic_rate: int = 0  # capture rate in Hz; 0 = the device's default (resampled to 16 kHz)
    camera_loop: bool = False  # a video file camera starts again at its end instead of ending, its
    # media time going on (a camera for hours from one short file: the soak benchmark)

    def __post_init__(self):
        if self.camera_loop and (self.camera == "" or self.camera.isdigit() or "://" in self.camera
                                 or is_screen(self.camera)):
            raise ValueError(f"camera_loop needs a video file camera, not {self.camera!r}")
        if self.width < 1 or self.height < 1 or self.fps <= 0:
            raise ValueError("width, height and fps must be > 0")
        if self.mic_rate != 0 and not 4000 <= self.mic_rate <= 384_000:
            raise ValueError(f"mic_rate must be 0 (the device's rate) or in [4000, 384000] Hz, got {self.mic_rate}")
        if is_screen(self.camera):
            parse_screen(self.camera)  # a malformed region is bad input, refused before anything starts


SCREEN, MONITOR = "screen", "monitor"  # the camera and microphone names that capture the call itself


def is_screen(spec: str) -> bool:
    return spec == SCREEN or spec.startswith(SCREEN + ":")


def parse_screen(spec: str) -> tuple[int, int, int, int] | None:
    """The region (x, y, width, height) of a `screen:X,Y,W,H` camera; None for the whole `screen`."""
    if spec == SCREEN:
        return None
    parts = spec[len(SCREEN) + 1:].split(",")
    usage = (f"camera {spec!r}: expected screen or screen:X,Y,W,H (the region's left, top, width and "
             "height in pixels, e.g. screen:0,0,1280,720)")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(usage)
    x, y, w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ValueError(f"{usage}; width and height must be > 0")
    return x, y, w, h


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
    """Frames with media times (seconds since t_start); a file plays at its own rate, like a camera,
    and with options.camera_loop starts again at its end, its frames' times going on."""

    paced = False  # gives frames at its own rate, to be sampled

    def __init__(self, options: CaptureOptions, t_start: float):
        import cv2

        self.options = options
        self.cap = open_camera(options.camera, options)
        self.t_start = t_start
        self.is_file = not options.camera.isdigit() and "://" not in options.camera
        self.loop = options.camera_loop and self.is_file
        self.file_fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.skip_until = 0.0  # a file's frames before this media time are dropped (skip_to)
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def skip_to(self, t: float) -> None:
        """Start a file's frames at media time t (a camera reopened mid-session), its earlier frames
        read and dropped (seeking is codec-dependent)."""
        self.skip_until = t

    def frames(self):
        n, this_pass = 0, 0
        while True:
            ok, image = self.cap.read()
            if not ok and self.loop and this_pass:  # (a file that gave no frame at all ends)
                self.cap.release()
                self.cap = open_camera(self.options.camera, self.options)  # reopened: seeking is codec-dependent
                this_pass = 0
                continue
            if not ok:
                return  # end of a file, or a camera that went away
            this_pass += 1
            if self.is_file and n / self.file_fps < self.skip_until:
                n += 1
                continue
            if self.is_file:
                t = n / self.file_fps
                time.sleep(max(0.0, self.t_start + t - time.time()))
            else:
                t = time.time() - self.t_start
            n += 1
            yield t, image

    def close(self) -> None:
        self.cap.release()


class Screen:
    """The X screen, or a region of it, as a camera: FFmpeg's x11grab (in PyAV's wheels) grabs
    it `fps` times a second, so a call application's window is read as it is shown."""

    is_file = False
    paced = True  # grabbed at the rate asked for: every frame is wanted

    def __init__(self, options: CaptureOptions, t_start: float, fps: float):
        import av

        self.t_start = t_start
        display = os.environ.get("DISPLAY", "")
        if not display:
            raise DeviceError(f"camera {options.camera}: no X display to capture ($DISPLAY is not set; "
                              "run inside the desktop session, or set DISPLAY, e.g. DISPLAY=:0)")
        if "x11grab" not in av.formats_available:
            raise DeviceError(f"camera {options.camera}: this PyAV build has no x11grab input (pip install -U av)")
        grab = {"framerate": f"{fps:g}", "draw_mouse": "0",  # no pointer drawn over the faces
                # Probing the stream would read ~2 s of frames first and deliver them stale.
                "analyzeduration": "0", "probesize": "32"}
        region = parse_screen(options.camera)
        whole = self._open(display, display, grab)
        screen = (whole.streams.video[0].codec_context.width, whole.streams.video[0].codec_context.height)
        if region is None:
            self.container = whole
        else:
            # The whole screen's grab is closed only once the region's is open: an X server whose
            # last client leaves resets itself (Xvfb, a kiosk's server), and a connection made
            # during the reset fails with an I/O error.
            try:
                x, y, w, h = region
                if x + w > screen[0] or y + h > screen[1]:
                    raise DeviceError(f"camera {options.camera}: the region ends at {x + w},{y + h}, outside "
                                      f"display {display}'s {screen[0]}x{screen[1]} screen")
                self.container = self._open(f"{display}+{x},{y}", display, dict(grab, video_size=f"{w}x{h}"))
            finally:
                whole.close()
        stream = self.container.streams.video[0]
        self.size = (stream.codec_context.width, stream.codec_context.height)

    @staticmethod
    def _open(url: str, display: str, options: dict):
        import av

        try:
            return av.open(url, format="x11grab", options=options)
        except av.error.FFmpegError as exc:
            raise DeviceError(f"cannot open X display {display!r} ($DISPLAY) to capture the screen: {exc} "
                              "(is an X server running there, and may this user connect to it?)") from exc

    def frames(self):
        import av

        try:
            for frame in self.container.decode(video=0):
                yield time.time() - self.t_start, frame.to_ndarray(format="bgr24")
        except av.error.FFmpegError:
            return  # the X server went away: the camera is lost, like an unplugged one

    def close(self) -> None:
        self.container.close()


def open_video(options: CaptureOptions, t_start: float, fps: float | None = None):
    """The camera of `options`: the screen for screen[:X,Y,W,H], else OpenCV's camera, file or URL.
    fps caps how often the screen is grabbed: frames the consumer would skip are wasted work."""
    if is_screen(options.camera):
        return Screen(options, t_start, min(options.fps, fps) if fps else options.fps)
    return Camera(options, t_start)


def _lost_on_reopen(stage: Stage, out, session: str, why: str, error: DeviceError, reopened: bool) -> None:
    """A source that cannot open its device: at the start that is the error (the session does not
    begin); when reopened after its process died, the device is lost (why) and the session goes on."""
    if not reopened:
        raise error
    stage.report("ready")
    stage.send(out, {"type": "eos", "session": session, "lost": why, "gen": stage.gen})


def camera_source(stage: Stage, options: CaptureOptions, session: str, sample_fps: float, t_start: float,
                  reopened: bool = False) -> None:
    """Send sampled frames stamped with session time; drop what the faces stage cannot take.

    reopened: the camera's last source process died (the supervisor starts this one); one that
    cannot be opened now is lost, and a file plays on from the session's time, not from 0."""
    out = stage.push(stage.endpoints.video)
    try:
        camera = open_video(options, t_start, sample_fps)
    except DeviceError as exc:
        return _lost_on_reopen(stage, out, session, f"camera {options.camera}: {exc}", exc, reopened)
    if reopened and isinstance(camera, Camera) and camera.is_file:
        camera.skip_to(time.time() - t_start)
    out.setsockopt(zmq.SNDHWM, 2)  # at most two frames wait: the rest are stale
    commands = stage.commands()
    stage.report("ready")
    seq, next_t = 0, 0.0
    for t, image in camera.frames():
        if (command := stage.command(commands)) is not None:
            if command["type"] == "finish":
                break
            stage.gen = command["gen"]  # a restarted chain: new frames are for it
        # A paced source (the screen, grabbed at sample_fps) gives only frames we want: sampled
        # by time, each that came a few ms early would be dropped and the rate halved.
        if t + 1e-6 < next_t and not camera.paced:
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


def default_monitor() -> str:
    """The monitor source (`SINK.monitor`) of the sound server's default output: PulseAudio, or
    PipeWire through its pulse server; DeviceError saying why when there is none."""
    pactl = shutil.which("pactl")
    if pactl is None:
        raise DeviceError(f"microphone {MONITOR}: needs pactl to find the default output's monitor "
                          "(Debian package pulseaudio-utils)")
    env = dict(os.environ, LC_ALL="C")  # `pactl info` translates its field names otherwise

    def pactl_out(*args: str) -> str:
        result = subprocess.run([pactl, *args], env=env, capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            reason = "; ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
            raise DeviceError(f"microphone {MONITOR}: cannot reach the sound server (PulseAudio or PipeWire): "
                              f"{reason or f'pactl {args[0]} failed'}")
        return result.stdout

    sink = next((line.split(":", 1)[1].strip() for line in pactl_out("info").splitlines()
                 if line.startswith("Default Sink:")), "")
    sink = "" if sink in ("(null)", "n/a") else sink  # how PulseAudio and PipeWire say there is no output
    sources = [line.split("\t")[1] for line in pactl_out("list", "short", "sources").splitlines() if "\t" in line]
    monitor = f"{sink}.monitor"
    if not sink or monitor not in sources:
        raise DeviceError(f"microphone {MONITOR}: the default output {sink or '(none)'} has no monitor source "
                          f"(sources: {', '.join(sources) or 'none'})")
    return monitor


class Microphone:
    """Mono capture at the device's rate, resampled to sample_rate, in chunk_ms reads."""

    def __init__(self, options: CaptureOptions, chunk_ms: int, sample_rate: int):
        import av
        import pyaudio

        device = options.microphone
        if device == MONITOR:
            # The pulse ALSA device (libasound2-plugins) records from $PULSE_SOURCE: set in this
            # process, it takes what the default output plays, as `--microphone pulse` does for a source.
            os.environ["PULSE_SOURCE"] = default_monitor()
            device = "pulse"
        self.pa = pyaudio.PyAudio()
        try:
            index = find_microphone(self.pa, device)
            info = (self.pa.get_device_info_by_index(index) if index is not None
                    else self.pa.get_default_input_device_info())
            self.device_rate = options.mic_rate or int(info["defaultSampleRate"])
            self.frames = self.device_rate * chunk_ms // 1000
            self.stream = self.pa.open(format=pyaudio.paInt16, channels=1, rate=self.device_rate, input=True,
                                       input_device_index=index, frames_per_buffer=self.frames)
        except DeviceError as exc:
            self.pa.terminate()
            if options.microphone == MONITOR:
                raise DeviceError(f"microphone {MONITOR}: PyAudio has no pulse device to record "
                                  f"{os.environ['PULSE_SOURCE']} (Debian package libasound2-plugins)") from exc
            raise
        except (OSError, IOError) as exc:
            self.pa.terminate()
            raise DeviceError(f"cannot open microphone {options.microphone or '(default)'}: {exc}") from exc
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.started: float | None = None  # wall-clock time of the first sample, once read

    def read(self) -> np.ndarray:
        """The next chunk_ms of audio (float32 at sample_rate; sizes vary slightly with resampling)."""
        import av

        raw = np.frombuffer(self.stream.read(self.frames, exception_on_overflow=False), np.int16)
        if self.started is None:
            # A device may start only at the first read, which can take a second (PulseAudio's
            # ALSA plugin: ~1 s); its first samples are the ones just read, not ones from the open.
            self.started = time.time() - raw.size / self.device_rate
        frame = av.AudioFrame.from_ndarray(raw.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.device_rate
        out = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def close(self) -> None:
        self.stream.close()
        self.pa.terminate()


def microphone_source(stage: Stage, options: CaptureOptions, session: str, chunk_ms: int,
                      sample_rate: int, t_start: float, rewind_s: float = 60.0, reopened: bool = False) -> None:
    """Send audio chunks stamped by sample count from the moment the first sample was captured.

    The last rewind_s seconds sent are kept, to be sent again to a restarted chain.
    reopened: the microphone's last source process died (the supervisor starts this one): one
    that cannot be opened now is lost, and the segmenter hears the gap as silence."""
    out = stage.push(stage.endpoints.audio)
    try:
        mic = Microphone(options, chunk_ms, sample_rate)
    except DeviceError as exc:
        return _lost_on_reopen(stage, out, session, f"microphone {options.microphone or '(default)'}: {exc}", exc,
                               reopened)
    commands = stage.commands()
    stage.report("ready")
    sent, seq = 0, 0
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
                t0 = mic.started - t_start  # media time of sample 0, on the session clock the camera uses too
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


def call_sources() -> dict[str, dict]:
    """What `--camera screen` and `--microphone monitor` would capture here, or why they cannot."""
    found = {}
    try:
        screen = Screen(CaptureOptions(camera=SCREEN), time.time(), 1.0)
        screen.close()
        found["screen"] = {"display": os.environ["DISPLAY"], "width": screen.size[0], "height": screen.size[1]}
    except DeviceError as exc:
        found["screen"] = {"error": str(exc)}
    try:
        found["monitor"] = {"source": default_monitor()}
    except DeviceError as exc:
        found["monitor"] = {"error": str(exc)}
    return found


def list_devices() -> dict:
    """Cameras OpenCV can open (indices 0-9), PyAudio input devices, the screen and the monitor."""
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
        return {"cameras": cameras, "microphones": [], **call_sources(), "note": "pyaudio not installed (extra `live`)"}
    pa = pyaudio.PyAudio()
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if info["maxInputChannels"] > 0:
            microphones.append({"index": i, "name": info["name"], "rate": int(info["defaultSampleRate"])})
    pa.terminate()
    return {"cameras": cameras, "microphones": microphones, **call_sources()}
