"""Speed of the whole pipeline: live latency, replay speed against bare faster-whisper, WER.

  python benchmarks/pipeline.py [--model BUNDLE] [--runs 3] [--live-runs 3] [--set SECTION.KEY=VALUE ...]

Everything runs as whole processes, as a user runs them:
- live: `realtime serve` with the session's mp4 as the camera and a PulseAudio null-sink
  microphone fed in real time by `paplay` (as tests/test_live.py does).  The end of each
  utterance's speech is taken from the audio itself (energy of the played file inside the
  utterance's known placement), as a wall-clock time: the moment paplay was started plus
  that offset.  Latency = the `timing.emitted_at` of the utterance message holding that end
  minus that time.  Time paplay and PulseAudio take to start playing counts as latency, so the
  figures are, if anything, too high: PulseAudio's null sink held the audio up to 2 s at
  times, which a second recorder on the virtual microphone (MicrophoneTap) measures.  The
  `arrival_` figures take the same times from the moment the tap heard the wav instead, what a
  real microphone would have given the pipeline (playback_delay_ms: the difference).  Window latency: a window update's `emitted_at` minus
  the wall time its end (its newest audio) was played.  serve prints the wall clock of its
  media time 0 (its sources stamp media time m as captured then + m), so `arrival_window_`
  delays run from the capture of the window's end; the plain ones add the device's delay.
  (Earlier results laid serve's media clock over the wav by the shift that best overlaps the
  utterance messages with the known speech: that shift sat 60-100 ms late, and the window
  delays with it; `media_offset_error_ms_median` says by how much in each run.)
- replay: `realtime replay` of the same mp4 against a bare faster-whisper script over the same
  file (same model, threads and decoding, its own VAD), both from process start to exit.
- per process (psutil on the process tree; stages name themselves rt-STAGE): CPU seconds and
  peak resident memory (VmHWM).

The session is synthetic (trainer.synth: espeak-ng speech, rendered face video), so this runs
anywhere; without --model the student is a random-init bundle (speed does not depend on its
weights; the transcripts, hence the WER, do not depend on it at all).

- sessions (--sessions 1,2,4): N `realtime replay --realtime` processes at once, each a whole
  session (source, VAD, ASR, faces, fusion), every fusion stage on one `realtime infer`
  (backend service, engines.service).  Latency as live, with the wall clock of each session's
  media time 0 printed by its source; per N, the p50/p95/p99 over every utterance of every
  session, and how many requests the service ran in each student batch.

With `--faces 1 2 4 8` the video is a gallery view instead: the session's audio with N real
faces side by side in 640x360 frames (benchmarks/face_media.grid), and for each N the replay
and live runs (`--runs`, `--live-runs`; 1 each is enough) report window latency, window
inference time and each stage's CPU seconds, prefixed `facesN_`; no bare faster-whisper runs.
Writes benchmarks/results/pipeline_faces.json then.

Writes benchmarks/results/pipeline.json (benchmarks.report keys; `metrics` flat, medians over runs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from benchmarks import transcripts  # noqa: E402
from benchmarks.report import check_tree, result_json, write  # noqa: E402

SAMPLE_RATE = 16000
ENERGY_FRAME = 160  # 10 ms frames for the end-of-speech search

# Bare faster-whisper on the whole file, as one process: the floor the pipeline's replay is held to.
BARE_WHISPER = r"""
import sys, time
from faster_whisper import WhisperModel
from common.offline import resolve_whisper_model
model = WhisperModel(resolve_whisper_model(sys.argv[2]), device="cpu", compute_type="int8",
                     cpu_threads=int(sys.argv[3]), num_workers=1)
segments, _ = model.transcribe(sys.argv[1], language="en", beam_size=1, temperature=0.0,
                               condition_on_previous_text=False, vad_filter=True, without_timestamps=True)
print(" ".join(s.text.strip() for s in segments))
"""


# --------------------------------------------------------------------------- the session


def make_session(out: Path, seed: int, utterances: int) -> tuple[Path, Path, list[dict], float]:
    """mp4, wav (its decoded audio), truth rows with `speech_end` (s, from the audio) and duration."""
    from engines.media import read_media
    from trainer.synth import generate

    manifest = generate(out, sessions=1, seed=seed, utterances_per_session=utterances, progress=False, workers=1)
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    media = out / rows[0]["file"]
    audio, _, _ = read_media(media, SAMPLE_RATE)
    for row, end in zip(rows, speech_ends(audio, rows)):
        row["speech_end"] = end
    wav = write_wav(out / "speech.wav", audio)
    return media, wav, rows, len(audio) / SAMPLE_RATE


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16-bit mono wav at SAMPLE_RATE: what paplay plays into the virtual microphone."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def speech_ends(audio: np.ndarray, rows: list[dict]) -> list[float]:
    """Per utterance, the end of its last 10 ms frame louder than 10x the room noise.

    Searched inside the utterance's placement (extended up to the next one), so the figure
    comes from the samples played, not from the VAD under test."""
    n = len(audio) // ENERGY_FRAME
    rms = np.sqrt(np.mean(audio[: n * ENERGY_FRAME].reshape(n, ENERGY_FRAME) ** 2, axis=1))
    speech = np.zeros(n, bool)
    for row in rows:
        speech[int(row["start"] * 100): int(row["end"] * 100) + 1] = True
    threshold = 10 * float(np.median(rms[~speech]))
    ends = []
    for i, row in enumerate(rows):
        lo = int(row["start"] * 100)
        hi = min(n, int(rows[i + 1]["start"] * 100) if i + 1 < len(rows) else n)
        loud = np.flatnonzero(rms[lo:hi] > threshold)
        ends.append((lo + loud[-1] + 1) / 100 if loud.size else row["end"])
    return ends


def gallery_media(out: Path, audio: np.ndarray, n: int, fps: float = 10.0) -> Path:
    """An mp4 of `audio` with n real faces side by side (a call's gallery view), each moving a
    pixel or two from frame to frame as a head does."""
    from benchmarks.face_media import FRAME_H, FRAME_W, grid, load_photos
    from engines.media import MediaWriter

    photos, rng, shift, fed = load_photos(None), np.random.default_rng(n), np.zeros(2), 0
    with MediaWriter(out, fps, FRAME_W, FRAME_H, SAMPLE_RATE) as writer:
        for i in range(int(np.ceil(len(audio) / SAMPLE_RATE * fps))):
            shift = np.clip(shift + rng.integers(-1, 2, 2), -3, 3)
            writer.video(grid(photos, n, (int(shift[0]), int(shift[1])))[0])
            until = min(len(audio), int((i + 1) * SAMPLE_RATE / fps))
            writer.audio(audio[fed:until])
            fed = max(fed, until)
        writer.audio(audio[fed:])
    return out


# --------------------------------------------------------------------------- processes


class TreeMonitor:
    """CPU seconds and peak RSS of a process and its descendants, sampled until stopped.

    With rss_every_s, also the tree's resident memory over time: `rss_history` holds
    (wall time, {name: summed VmRSS MB}) every rss_every_s (the soak benchmark's memory growth).
    Stages name themselves rt-STAGE (realtime.framework.name_process); the root is `main`."""

    def __init__(self, pid: int, every_s: float = 0.1, rss_every_s: float | None = None):
        import psutil

        self.root = psutil.Process(pid)
        self.every = every_s
        self.rss_every = rss_every_s
        self.rss_history: list[tuple[float, dict[str, float]]] = []
        self.seen: dict[int, dict] = {}  # pid -> name, cpu_s, peak_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self, proc, name: str) -> float:
        """Record the process's CPU time and peak RSS; its current RSS in MB (0 if it is gone)."""
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                peak = rss = 0.0
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
                    elif line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) / 1024
            entry = self.seen.setdefault(proc.pid, {"name": name, "cpu_s": 0.0, "peak_mb": 0.0})
            entry["name"] = name  # a stage renames itself after it starts
            entry["cpu_s"] = max(entry["cpu_s"], cpu.user + cpu.system)
            entry["peak_mb"] = max(entry["peak_mb"], peak)
            return rss
        except (OSError, ValueError, Exception):  # the process ended between listing and reading
            return 0.0

    def _run(self) -> None:
        import psutil

        next_rss = time.monotonic()
        while not self._stop.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                children = []
            rss = {"main": self._sample(self.root, "main")}
            for child in children:
                try:
                    name = child.name()
                except psutil.Error:
                    continue
                name = name[3:] if name.startswith("rt-") else "other"
                rss[name] = rss.get(name, 0.0) + self._sample(child, name)
            if self.rss_every and time.monotonic() >= next_rss:
                self.rss_history.append((time.time(), rss))
                next_rss = max(next_rss + self.rss_every, time.monotonic())  # no catching up after a stall
            self._stop.wait(self.every)

    def current_rss_mb(self) -> float:
        """The tree's summed RSS at the latest rss_history sample (0 before the first)."""
        return sum(self.rss_history[-1][1].values()) if self.rss_history else 0.0

    def stop(self) -> dict[str, dict]:
        """Per name (stage, main, other): summed CPU seconds and peak RSS in MB."""
        self._stop.set()
        self._thread.join()
        out: dict[str, dict] = {}
        for entry in self.seen.values():
            agg = out.setdefault(entry["name"], {"cpu_s": 0.0, "peak_mb": 0.0})
            agg["cpu_s"] += entry["cpu_s"]
            agg["peak_mb"] = max(agg["peak_mb"], entry["peak_mb"])
        return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def realtime_cmd(*args: str, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "realtime.cli", *args, *[a for s in sets for a in ("--set", s)]]


def dump_tree(pid: int) -> None:
    """Print where each process of a hung run is (py-spy dump), for the report."""
    import psutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            name = proc.name()
        except psutil.Error:
            continue
        out = subprocess.run([spy, "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=60)
        print(f"--- {name} ({proc.pid})\n{out.stdout[-3000:]}{out.stderr[-500:]}", file=sys.stderr, flush=True)


def code_root() -> str:
    """The checkout whose realtime package a run uses: the first entry of PYTHONPATH (see main)."""
    return os.environ["PYTHONPATH"].split(os.pathsep)[0]


def kill_tree(pid: int) -> None:
    """Kill a process and everything it started (a run that hangs must not outlive the benchmark)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def replay_run(media: Path, bundle: Path, work: Path, sets: list[str], timeout_s: float = 300,
               all_messages: bool = True) -> dict | None:
    """One replay as a whole process; None (reported) when it does not finish in timeout_s.
    all_messages=False: a plain `replay --out`, which writes the utterance results alone (and
    so, with no subscriber, scores no window updates)."""
    out = work / "replay.jsonl"
    cmd = realtime_cmd("replay", str(media), "--model", str(bundle), "--out", str(out),
                       *(["--all-messages"] if all_messages else []),
                       "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet", sets=sets)
    t0 = time.perf_counter()
    # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=code_root())
    monitor = TreeMonitor(proc.pid)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        dump_tree(proc.pid)
        kill_tree(proc.pid)
        _, err = proc.communicate()
        monitor.stop()
        print(f"replay did not finish in {timeout_s} s (not counted):\n{err[-2000:]}", file=sys.stderr, flush=True)
        return None
    wall = time.perf_counter() - t0
    procs = monitor.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"replay failed:\n{err}")
    messages = [json.loads(l) for l in out.read_text().splitlines()]
    return {"wall_s": wall, "messages": messages, "procs": procs}


def bare_whisper_run(media: Path, model: str, threads: int) -> dict:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", BARE_WHISPER, str(media), model, str(threads)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"bare faster-whisper failed:\n{result.stderr}")
    return {"wall_s": time.perf_counter() - t0, "text": result.stdout.strip()}


class MicrophoneTap:
    """A second recorder on the virtual microphone, from before the wav is played to the end:
    when did the played audio reach the microphone?

    PulseAudio's null sink held paplay's audio for 0.04 to 2 s before its monitor gave it out
    (2 s when paplay started within ~0.2 s of serve's first microphone read), a delay no real
    microphone has.  This reader makes it rarer but does not prevent it (1.7-1.9 s in 2 of 5
    runs), so it finds the wav in what it heard (cross-correlation) and dates its sample 0 by
    the read that returned it: `arrival_` latencies are taken from then, the plain ones from
    paplay's start.  Its own read (10 ms) counts as latency."""

    CHUNK = SAMPLE_RATE // 100

    def __init__(self, env: dict):
        import pyaudio

        os.environ.update({k: env[k] for k in ("XDG_RUNTIME_DIR", "PULSE_SOURCE")})  # the daemon serve uses
        os.environ.pop("PULSE_SERVER", None)
        self.pa = pyaudio.PyAudio()
        index = next((i for i in range(self.pa.get_device_count())
                      if self.pa.get_device_info_by_index(i)["name"] == "pulse"), None)
        if index is None:
            self.pa.terminate()
            raise RuntimeError("PyAudio has no pulse device (Debian package libasound2-plugins)")
        self.stream = self.pa.open(format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE, input=True,
                                   input_device_index=index, frames_per_buffer=self.CHUNK)
        self.chunks: list[np.ndarray] = []
        self.read_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            raw = self.stream.read(self.CHUNK, exception_on_overflow=False)
            self.read_at.append(time.time())
            self.chunks.append(np.frombuffer(raw, np.int16).astype(np.float32) / 32768)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.stream.close()
        self.pa.terminate()

    def arrival(self, wav: np.ndarray, after: float, search_s: float = 10.0) -> float:
        """Wall time at which the wav's sample 0 reached the microphone, the wav having been
        started at `after` (its first 5 s, located within search_s after that)."""
        if not self.chunks:
            raise RuntimeError("the microphone tap heard nothing")
        heard = np.concatenate(self.chunks)
        ends = np.cumsum([c.size for c in self.chunks])
        first = int(np.searchsorted(self.read_at, after))  # reads that returned after paplay started
        lo = int(ends[first - 1]) if first else 0
        segment = heard[lo: lo + int((search_s + 5) * SAMPLE_RATE)]
        probe = wav[: 5 * SAMPLE_RATE]
        n = 1 << int(np.ceil(np.log2(segment.size + probe.size)))
        corr = np.fft.irfft(np.fft.rfft(segment, n) * np.conj(np.fft.rfft(probe, n)), n)[: segment.size - probe.size + 1]
        if corr.size < 1 or corr.max() <= 0:
            raise RuntimeError("the played wav was not found in what the microphone heard")
        sample = lo + int(np.argmax(corr))
        chunk = int(np.searchsorted(ends, sample, side="right"))
        return self.read_at[chunk] - (int(ends[chunk]) - sample) / SAMPLE_RATE


class VirtualMicrophone:
    """A PulseAudio daemon with a null sink whose monitor is the source `virtmic` (as the fixture
    virtual_microphone of tests/conftest.py).

    The sink runs at the wav's 16 kHz and serve records the pulse device at its default 44.1 kHz,
    so PulseAudio upsamples what the microphone hears, a step no real microphone has.  Its default
    resampler (speex-float-1) kept 6% of the wav's 7-8 kHz energy and 55% of its 6-7 kHz, where
    sibilants are ("leaves" was heard "lean"); soxr-vhq keeps all below 7 kHz (31% of 7-8 kHz,
    which serve's own resampler to 16 kHz also cuts)."""

    def __init__(self, work: Path):
        for tool in ("pulseaudio", "paplay"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not installed (Debian package pulseaudio): no live runs")
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(work / "pulse"), PULSE_SOURCE="virtmic")
        os.makedirs(self.env["XDG_RUNTIME_DIR"], exist_ok=True)
        subprocess.run(["pulseaudio", "-D", "-n", "--exit-idle-time=-1", "--disallow-exit",
                        "--resample-method=soxr-vhq",
                        "--load=module-native-protocol-unix",
                        "--load=module-null-sink sink_name=virtmic_sink rate=16000 channels=1",
                        "--load=module-remap-source master=virtmic_sink.monitor source_name=virtmic"],
                       env=self.env, check=True, capture_output=True, timeout=30)

    def close(self) -> None:
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=30)


def live_run(media: Path, wav: Path, duration: float, bundle: Path, work: Path, mic: VirtualMicrophone,
             sets: list[str], loops: int = 1, endpoint: str | None = None, serve_args: tuple[str, ...] = (),
             monitor: dict | None = None, on_play: Callable | None = None) -> dict:
    """One `realtime serve` with the wav played into the microphone; its messages (--jsonl) and processes.

    `played_at`: the wall clock of the wav's sample 0 (paplay's start, its start-up counted as
    latency); `arrived_at`, when the tap heard it (one play only).  For a soak run, loops > 1 plays the wav that
    many times one after the other (`plays`: each play's start; serve is stopped 8 s after the
    last), serve_args adds options (`--camera-loop`), endpoint picks the public socket (so a
    subscriber can be there first), monitor passes TreeMonitor options (its `rss_history` is
    returned as `rss`), and on_play(i, played_at, monitor) is called as play i starts."""
    messages_path, log = work / "live.jsonl", work / "serve.log"
    # One play: serve stops itself 8 s after it; more: a backstop only, SIGTERM ends it on time.
    serve_s = duration + 8 if loops == 1 else loops * (duration + 5) + 60
    cmd = realtime_cmd("serve", "--model", str(bundle), "--camera", str(media), "--microphone", "pulse",
                       *serve_args, "--endpoint", endpoint or f"tcp://127.0.0.1:{free_port()}",
                       "--jsonl", str(messages_path), "--duration", str(serve_s), "--quiet", sets=sets)
    plays: list[float] = []
    tap = None
    with log.open("w") as err:
        serve = subprocess.Popen(cmd, env=mic.env, stdout=subprocess.DEVNULL, stderr=err, cwd=code_root())
        watch = TreeMonitor(serve.pid, **(monitor or {}))
        try:
            deadline = time.monotonic() + 300
            while "serving session" not in log.read_text():
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start:\n{log.read_text()}")
                time.sleep(0.05)
            tap = MicrophoneTap(mic.env) if loops == 1 else None  # an hour of audio is not kept
            for i in range(loops):
                if serve.poll() is not None:
                    raise RuntimeError(f"serve ended during play {i + 1} of {loops}:\n{log.read_text()[-3000:]}")
                plays.append(time.time())  # paplay's start
                if on_play:
                    on_play(i, plays[-1], watch)
                subprocess.run(["paplay", "--device=virtmic_sink", str(wav)], env=mic.env, check=True,
                               timeout=duration + 60)
            if loops > 1:
                time.sleep(8)  # the last utterance closes on the silence after it
                serve.send_signal(signal.SIGTERM)  # flushes every stage, as Ctrl-C does
            if serve.wait(timeout=300) != 0:
                raise RuntimeError(f"serve failed:\n{log.read_text()}")
        finally:
            if serve.poll() is None:
                kill_tree(serve.pid)
            if tap is not None:
                tap.stop()
    procs = watch.stop()
    messages = [json.loads(l) for l in messages_path.read_text().splitlines()]
    arrived_at = tap.arrival(read_wav(wav), after=plays[0]) if tap is not None else None
    clock = printed_clock(log.read_text())
    return {"played_at": plays[0], "arrived_at": arrived_at, "plays": plays, "messages": messages, "procs": procs,
            "rss": watch.rss_history,
            **({"clock": clock} if clock is not None else {})}


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def printed_clock(log: str) -> float | None:
    """The wall clock of media time 0 that serve or replay --realtime printed (realtime.stages.source.print_clock)."""
    from realtime.stages.source import CLOCK_LINE

    lines = [l for l in log.splitlines() if CLOCK_LINE in l]
    return float(lines[0].rsplit(CLOCK_LINE, 1)[1]) if lines else None


def start_service(bundle: Path, endpoint: str, log: Path, sets: list[str]) -> subprocess.Popen:
    """`realtime infer` as a process of its own, once it answers on `endpoint`."""
    cmd = realtime_cmd("infer", "--model", str(bundle), "--endpoint", endpoint, sets=sets)
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=code_root())
    deadline = time.monotonic() + 120
    while "inference service for" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_tree(proc.pid)
            raise RuntimeError(f"realtime infer did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc


def stop_service(proc: subprocess.Popen, log: Path) -> dict:
    """Stop `realtime infer`; its batch counts ({op: {requests per execution: executions}})."""
    proc.terminate()
    proc.wait(timeout=30)
    line = [l for l in log.read_text().splitlines() if "batches " in l]
    return json.loads(line[-1].split("batches ", 1)[1])["batches"] if line else {}


def sessions_run(n: int, media: Path, bundle: Path, work: Path, sets: list[str], timeout_s: float) -> dict:
    """n `realtime replay --realtime` sessions at once, every fusion stage on one `realtime infer`.

    Each session's media time 0 is on the wall clock its source prints (printed_clock), so the
    latency of an utterance is its message's emitted_at minus that clock plus the end of
    speech in the file: the same measure as the live runs, without a microphone per session.
    A session still running timeout_s after the start is killed and counted in `hung`; what it
    published by then (--out is written as it goes) is scored all the same."""
    endpoint = f"ipc://{work}/infer-{n}.sock"
    service_log = work / f"infer-{n}.log"
    service = start_service(bundle, endpoint, service_log, sets)
    runs = []
    try:
        procs = []
        for i in range(n):
            out, log = work / f"session-{n}-{i}.jsonl", work / f"session-{n}-{i}.log"
            cmd = realtime_cmd("replay", str(media), "--model", str(bundle), "--out", str(out), "--all-messages",
                               "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--quiet", "--realtime",
                               "--backend", "service", "--service-endpoint", endpoint, sets=sets)
            with log.open("w") as err:
                procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=code_root()), out, log))
        monitor = TreeMonitor(os.getpid())
        deadline, hung = time.monotonic() + timeout_s, 0
        for proc, out, log in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree(proc.pid)
                proc.wait()
                hung += 1
            else:
                if proc.returncode != 0:
                    raise RuntimeError(f"session replay failed:\n{log.read_text()[-3000:]}")
            media0 = printed_clock(log.read_text())  # the wav's sample 0 is media time 0
            runs.append({"played_at": media0, "clock": media0,
                         "messages": [json.loads(l) for l in out.read_text().splitlines()]})
        procs_seen = monitor.stop()
    finally:
        batches = stop_service(service, service_log)
    return {"runs": runs, "batches": batches, "procs": procs_seen, "hung": hung}


def sessions_metrics(n: int, rows: list[dict], result: dict) -> dict:
    scored = [live_latencies(run, rows) for run in result["runs"]]
    lat = [l for s in scored for l in s["latencies"]]
    delays = [d for s in scored for d in s["window_delays"]]
    student = {int(k): v for k, v in result["batches"].get("student", {}).items()}
    executions = sum(student.values())
    prefix = f"sessions_{n}_"
    return {f"{prefix}{k}": v for k, v in {
        "latency_p50_ms": round(1000 * pct(lat, 50), 1), "latency_p95_ms": round(1000 * pct(lat, 95), 1),
        "latency_p99_ms": round(1000 * pct(lat, 99), 1),
        "window_latency_p50_ms": round(1000 * pct(delays, 50), 1),
        "window_latency_p95_ms": round(1000 * pct(delays, 95), 1),
        "utterances_missed": sum(s["missed"] for s in scored),
        "sessions_hung_at_end": result["hung"],
        "load_1min_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was  # killed at the time limit (their messages still count)
        # Student executions of the service, and the mean requests (from any session) each held.
        "service_student_executions": executions,
        "service_student_requests_per_execution": round(
            sum(k * v for k, v in student.items()) / executions, 3) if executions else 0.0,
        "service_student_max_requests": max(student, default=0),
        **{f"cpu_s_{name}": round(p["cpu_s"], 2) for name, p in result["procs"].items()
           if name in ("asr", "faces", "fusion", "segmenter", "source")},
    }.items()}


# --------------------------------------------------------------------------- scoring


def wer(rows: list[dict], texts: list[str]) -> float:
    """The word error rate of `texts` against the session's script `rows`."""
    return transcripts.wer([r["text"] for r in rows], texts)


def wer_by_phase(audio: np.ndarray, rows: list[dict], sets: list[str], phases: int) -> dict:
    """The WER of the pipeline's segmenter and ASR (in this process, with the run's settings) over
    the recording started 0, 32, 64, ... samples late: where the VAD's 512-sample frames fall.

    On six utterances (43 words) that grid alone moved the WER from 0.047 to 0.186, so a single
    stream's `wer` or `live_wer` is one draw from this spread, and live capture starts the stream
    at a phase of its own."""
    from benchmarks.asr_lead import segments
    from realtime.config import load_config
    from realtime.stages.asr import Transcriber

    cfg = load_config(None, sets)
    transcriber = Transcriber(cfg.asr)
    step = 512 // phases
    scores = []
    for phase in range(phases):
        padded = np.concatenate([np.zeros(phase * step, np.float32), audio])
        heard = segments(padded, cfg.asr.lead_ms, cfg.asr.pad_ms, cfg.vad)
        scores.append(wer(rows, [transcriber.transcribe(a) for a in heard]))
    return {"wer_phase_median": round(median(scores), 4), "wer_phase_min": round(min(scores), 4),
            "wer_phase_max": round(max(scores), 4), "wer_phases": phases}


def media_offset(rows: list[dict], utterances: list[dict], lo: float = 0.0, hi: float = 120.0) -> float:
    """Media time (serve's session clock) of the wav's sample 0: the shift that best lays the
    utterance messages' spans over the known spans of speech (searched in 10 ms steps from lo to hi).

    The messages' spans carry the VAD's padding on both sides, so the overlap is as large over
    a plateau about twice the padding wide: its middle is taken (the first shift of it would be
    early by the padding, 200 ms).  Used to pair messages with spoken utterances and to place
    window ends on the wall clock."""
    shifts = np.arange(lo, hi, 0.01)
    overlaps = np.array([sum(max(0.0, min(r["speech_end"] + shift, u["end"]) - max(r["start"] + shift, u["start"]))
                             for r in rows for u in utterances) for shift in shifts])
    best = np.flatnonzero(overlaps >= overlaps.max() - 1e-9)
    run = best[: int(np.argmax(np.diff(best) > 1)) + 1] if np.any(np.diff(best) > 1) else best  # the first plateau
    return float(shifts[run].mean())


def live_latencies(run: dict, rows: list[dict]) -> dict:
    """End of speech -> utterance message, per spoken utterance; window update delays.

    Window delays need the wall time at which a window's end was captured.  With `clock` (the
    wall clock of the run's media time 0, which serve and replay --realtime print) that is clock
    + end; without, the media time of the wav's sample 0 is taken from where the utterance
    messages lie (media_offset), which put it 60-100 ms late: the VAD closes an utterance
    later after the speech than it opens it before, so the centred spans sit late."""
    utterances = [m for m in run["messages"] if m["type"] == "utterance"]
    shift = media_offset(rows, utterances) if utterances else 0.0
    latencies = []
    for row in rows:
        # The message that holds the end of this speech (the last piece, if the VAD cut it).
        end = row["speech_end"] + shift
        holding = [u for u in utterances if u["start"] <= end <= u["end"] + 0.1]
        if holding:
            message = max(holding, key=lambda u: u["end"])
            latencies.append(message["timing"]["emitted_at"] - (run["played_at"] + row["speech_end"]))
    windows = [m for m in run["messages"] if m["type"] == "window"]
    # From when the wav reached the microphone (MicrophoneTap), where that was measured.
    arrival = run.get("arrived_at")
    late = arrival - run["played_at"] if arrival is not None else None
    if "clock" in run:  # from the capture of the window's end; from paplay's start adds the device's delay
        captured = [m["timing"]["emitted_at"] - (run["clock"] + m["end"]) for m in windows]
        window_delays = [d + late for d in captured] if late is not None else captured
        arrival_window_delays = captured if late is not None else []
    else:  # media time 0 as paplay played it, from where the messages lie
        clock = run["played_at"] - shift
        window_delays = [m["timing"]["emitted_at"] - (clock + m["end"]) for m in windows]
        arrival_window_delays = [d - late for d in window_delays] if late is not None else []
    return {"latencies": latencies, "missed": len(rows) - len(latencies),
            "window_delays": window_delays,
            "arrival_latencies": [x - late for x in latencies] if late is not None else [],
            "arrival_window_delays": arrival_window_delays,
            # media_offset's shift less the media time of the wav's sample 0 by the clock
            # (arrived_at - clock): how late the offset found from the messages lies.
            "offset_error": (shift - (arrival - run["clock"])
                             if "clock" in run and arrival is not None and utterances else None),
            "asr_s": [u["timing"]["asr_s"] for u in utterances],
            "asr_early": [u["timing"].get("asr_early", False) for u in utterances], "infer_s": [u["timing"]["infer_s"] for u in utterances],
            "texts": [u["text"] for u in utterances]}


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def proc_metrics(prefix: str, runs: list[dict]) -> dict:
    names = sorted({n for r in runs for n in r["procs"]})
    out = {}
    for name in names:
        present = [r["procs"][name] for r in runs if name in r["procs"]]
        out[f"{prefix}_cpu_s_{name}"] = round(median([p["cpu_s"] for p in present]), 2)
        out[f"{prefix}_peak_rss_mb_{name}"] = round(median([p["peak_mb"] for p in present]), 1)
    return out


def plain_metrics(prefix: str, replays: list[dict], plains: list[dict], bares: list[dict]) -> dict:
    """The plain replays (`replay --out`, utterance results only) against the bare runs beside them."""
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "seq", "session")}
    utterances = lambda run: [strip(m) for m in run["messages"] if m["type"] == "utterance"]
    cpu = lambda run: sum(p["cpu_s"] for p in run["procs"].values())
    return {f"{prefix}{k}": v for k, v in {
        "plain_replay_wall_s": round(median([p["wall_s"] for p in plains]), 3),
        "overhead_ratio_plain_paired": round(median([p["wall_s"] / b["wall_s"] for p, b in zip(plains, bares)]), 3),
        "plain_replay_cpu_s": round(median([cpu(p) for p in plains]), 2),
        "plain_same_utterances": int(all(utterances(p) == utterances(replays[0]) for p in plains)),
    }.items()}


def replay_metrics(prefix: str, rows: list[dict], duration: float, replays: list[dict], bares: list[dict]) -> dict:
    replay_wall, bare_wall = median([r["wall_s"] for r in replays]), median([b["wall_s"] for b in bares])
    texts = [[m["text"] for m in r["messages"] if m["type"] == "utterance"] for r in replays]
    utt = [m for r in replays for m in r["messages"] if m["type"] == "utterance"]
    win = [m for r in replays for m in r["messages"] if m["type"] == "window"]
    # Windows interleave with utterances by arrival, so compare each type's messages in order.
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "seq", "session")}
    by_type = lambda run: {t: [strip(m) for m in run["messages"] if m["type"] == t]
                           for t in ("utterance", "window", "transcript", "status")}
    same = all(by_type(r) == by_type(replays[0]) for r in replays)
    return {f"{prefix}{k}": v for k, v in {
        "replay_wall_s": round(replay_wall, 3), "bare_whisper_wall_s": round(bare_wall, 3),
        "replay_speed": round(duration / replay_wall, 3), "overhead_ratio": round(replay_wall / bare_wall, 3),
        # Each replay over the bare run right after it: the machine's speed drifts within a run
        # (bare runs of one run spanned 1.23-1.67 s), and a pair shares its moment.
        "overhead_ratio_paired": round(median([r["wall_s"] / b["wall_s"] for r, b in zip(replays, bares)]), 3),
        "wer": round(wer(rows, texts[0]), 4), "bare_whisper_wer": round(wer(rows, [bares[0]["text"]]), 4),
        "replay_deterministic": int(same),  # every message but timing, seq and session the same in every run
        "replay_asr_ms_p50": round(1000 * median([u["timing"]["asr_s"] for u in utt]), 1),
        "replay_asr_early_fraction": round(float(np.mean([u["timing"].get("asr_early", False) for u in utt])), 3),
        "replay_utterance_infer_ms_p50": round(1000 * median([u["timing"]["infer_s"] for u in utt]), 2),
        "replay_window_infer_ms_p50": round(1000 * median([w["timing"]["infer_s"] for w in win]), 2),
        **proc_metrics("replay", replays)}.items()}


def live_metrics(prefix: str, rows: list[dict], lives: list[dict]) -> dict:
    lat = [l for r in lives for l in r["latencies"]]
    delays = [d for r in lives for d in r["window_delays"]]
    return {f"{prefix}{k}": v for k, v in {
        "latency_p50_ms": round(1000 * pct(lat, 50), 1), "latency_p95_ms": round(1000 * pct(lat, 95), 1),
        "latency_p99_ms": round(1000 * pct(lat, 99), 1),
        "latency_p50_ms_run_median": round(1000 * median([median(r["latencies"]) for r in lives]), 1),
        "window_latency_p50_ms": round(1000 * pct(delays, 50), 1),
        "window_latency_p95_ms": round(1000 * pct(delays, 95), 1),
        "live_utterances_missed": sum(r["missed"] for r in lives),
        **arrival_metrics(lives),
        "live_wer": round(median([wer(rows, r["texts"]) for r in lives]), 4),
        "live_asr_ms_p50": round(1000 * median([a for r in lives for a in r["asr_s"]]), 1),
        "live_asr_early_fraction": round(float(np.mean([e for r in lives for e in r["asr_early"]])), 3),
        "live_utterance_infer_ms_p50": round(1000 * median([a for r in lives for a in r["infer_s"]]), 2),
        **proc_metrics("live", lives)}.items()}


def arrival_metrics(lives: list[dict]) -> dict:
    """The virtual device's delay (paplay's start to the wav reaching MicrophoneTap: counted in
    the plain latencies, not in the arrival_ ones) and the latencies measured from arrival."""
    delays = [r["arrived_at"] - r["played_at"] for r in lives]
    pooled = lambda key: [x for r in lives for x in r[key]]
    errors = [r["offset_error"] for r in lives if r.get("offset_error") is not None]
    return {"playback_delay_ms_median": round(1000 * median(delays), 1),
            "playback_delay_ms_max": round(1000 * max(delays), 1),
            **({"media_offset_error_ms_median": round(1000 * median(errors), 1)} if errors else {}),
            **{f"arrival_{name}": round(1000 * pct(pooled(key), q), 1)
               for name, key, q in (("latency_p50_ms", "arrival_latencies", 50),
                                    ("latency_p95_ms", "arrival_latencies", 95),
                                    ("latency_p99_ms", "arrival_latencies", 99),
                                    ("window_latency_p50_ms", "arrival_window_delays", 50),
                                    ("window_latency_p95_ms", "arrival_window_delays", 95))}}


def faces_metrics(n: int, replays: list[dict], lives: list[dict]) -> dict:
    """The `--faces` figures of one number of faces in view, prefixed facesN_."""
    out: dict[str, float] = {}
    count = lambda runs: median([len(m.get("faces", [])) for r in runs for m in r["messages"] if m["type"] == "window"])
    if replays:
        win = [m["timing"]["infer_s"] for r in replays for m in r["messages"] if m["type"] == "window"]
        out.update({"replay_wall_s": round(median([r["wall_s"] for r in replays]), 3),
                    "replay_window_infer_ms_p50": round(1000 * pct(win, 50), 2),
                    "replay_window_infer_ms_p95": round(1000 * pct(win, 95), 2),
                    "replay_faces_per_window": count(replays), **proc_metrics("replay", replays)})
    if lives:
        delays = [d for r in lives for d in r["window_delays"]]
        lat = [l for r in lives for l in r["latencies"]]
        win = [m["timing"]["infer_s"] for r in lives for m in r["messages"] if m["type"] == "window"]
        out.update({"window_latency_p50_ms": round(1000 * pct(delays, 50), 1),
                    "window_latency_p95_ms": round(1000 * pct(delays, 95), 1),
                    "live_window_infer_ms_p50": round(1000 * pct(win, 50), 2),
                    "latency_p50_ms": round(1000 * pct(lat, 50), 1),
                    "live_utterances_missed": sum(r["missed"] for r in lives),
                    **arrival_metrics(lives),
                    "live_faces_per_window": count(lives), **proc_metrics("live", lives)})
    return {f"faces{n}_{k}": v for k, v in out.items()}


def faces_mode(args, sets: list[str], work: Path, media: Path, wav: Path, rows: list[dict], duration: float,
               bundle: Path) -> dict:
    """--faces: each number of faces in view, its replay and live runs in turn."""
    from engines.media import read_media

    audio = read_media(media, SAMPLE_RATE)[0]
    metrics: dict[str, float] = {}
    mic = VirtualMicrophone(work) if args.live_runs else None
    try:
        for n in args.faces:
            gallery = gallery_media(work / f"faces{n}.mp4", audio, n)
            replays = [replay_run(gallery, bundle, work, sets) for _ in range(args.runs)]
            metrics[f"faces{n}_replay_hung"] = sum(r is None for r in replays)
            replays = [r for r in replays if r]
            lives = []
            for _ in range(args.live_runs):
                run = live_run(gallery, wav, duration, bundle, work, mic, sets)
                run.update(live_latencies(run, rows))
                lives.append(run)
            found = faces_metrics(n, replays, lives)
            metrics.update(found)
            print(f"{n} faces: " + ", ".join(f"{k[len(f'faces{n}_'):]} {v}" for k, v in found.items()
                                             if "rss" not in k), flush=True)
    finally:
        if mic:
            mic.close()
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model bundle (default: a random-init bundle made here)")
    parser.add_argument("--runs", type=int, default=3, help="replay runs, and bare faster-whisper runs")
    parser.add_argument("--live-runs", type=int, default=3, help="live serve runs (0: none)")
    parser.add_argument("--seed", type=int, default=4242, help="synthetic session seed")
    parser.add_argument("--utterances", type=int, default=6, help="utterances in the session")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="setting passed to every realtime run, e.g. asr.speculative=false (repeatable)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the realtime code in DIR (e.g. `git archive main | tar -x -C DIR`), "
                             "each of its runs next to one of this checkout's, so both see the same machine "
                             "state; its metrics are prefixed baseline_")
    parser.add_argument("--baseline-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="setting for the baseline runs only (repeatable)")
    parser.add_argument("--asr-model", default="tiny.en", help="the Whisper model (as [asr] model)")
    parser.add_argument("--asr-threads", type=int, default=2, help="as [asr] cpu_threads, for bare faster-whisper")
    parser.add_argument("--sessions", default="", metavar="N,N,...",
                        help="also run N concurrent real-time replays sharing one `realtime infer` "
                             "(backend service), for each N: end-of-speech latency as N grows")
    parser.add_argument("--faces", type=int, nargs="+", choices=[1, 2, 4, 8],
                        help="instead: a gallery view of each of these numbers of real faces (see above)")
    parser.add_argument("--plain", action="store_true",
                        help="each replay run also as a plain `replay --out` (utterance results only, so "
                             "no window updates are scored): plain_* and overhead_ratio_plain_paired")
    parser.add_argument("--wer-phases", type=int, default=16, choices=[0, 1, 2, 4, 8, 16, 32],
                        help="also score the segmenter and ASR in this process with the recording started at "
                             "this many phases of the VAD's 32 ms frame (wer_phase_*: the spread a single "
                             "stream's WER is drawn from; 0: not)")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/pipeline.json "
                                                 "(pipeline_faces.json with --faces)")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / f"benchmarks/results/{'pipeline_faces' if args.faces else 'pipeline'}.json"
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pythonpath = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [pythonpath])])
    sets = [f"asr.model={args.asr_model}", f"asr.cpu_threads={args.asr_threads}", *args.sets]
    # (prefix, code root, settings): the code a run imports comes first on its PYTHONPATH.
    variants = [("", ROOT, sets)]
    if args.baseline:
        variants.insert(0, ("baseline_", args.baseline.resolve(), [*sets, *args.baseline_set]))
    started, load_at_start = time.perf_counter(), list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        media, wav, rows, duration = make_session(work / "session", args.seed, args.utterances)
        print(f"session: {duration:.1f} s, {len(rows)} utterances", flush=True)
        if args.model:
            bundle = args.model
        else:
            from benchmarks.engine_latency import tiny_bundle

            bundle = tiny_bundle(work / "bundle", "fp32")
        metrics: dict[str, float] = {"media_s": round(duration, 2), "utterances": len(rows)}
        if args.faces:
            metrics.update(faces_mode(args, sets, work, media, wav, rows, duration, bundle))
            write(args.out, result_json(
                "pipeline_faces", started, args.asr_threads, metrics, faces=args.faces,
                bundle=str(args.model) if args.model else "random-init bundle (speed does not depend on weights)",
                settings=sets, runs={"replay": args.runs, "live": args.live_runs},
                load_average={"start": load_at_start, "end": list(os.getloadavg())},
                notes="a gallery of N real faces (benchmarks/face_media.py) over the synthetic session's audio; "
                      "window latency: emitted_at minus the wall time the window's end was played"))
            return 0

        def use(code: Path) -> None:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [pythonpath])])

        replays = {prefix: [] for prefix, _, _ in variants}
        plains = {prefix: [] for prefix, _, _ in variants}
        failures = {prefix: 0 for prefix, _, _ in variants}
        bares = {prefix: [] for prefix, _, _ in variants}
        for i in range(args.runs):  # interleaved, so every variant sees the same machine state
            for prefix, code, settings in variants:
                use(code)
                run = replay_run(media, bundle, work, settings)
                plain = replay_run(media, bundle, work, settings, all_messages=False) if args.plain else None
                if run is None or (args.plain and plain is None):
                    failures[prefix] += 1
                    continue
                replays[prefix].append(run)
                bares[prefix].append(bare_whisper_run(media, args.asr_model, args.asr_threads))
                if plain is not None:
                    plains[prefix].append(plain)
                print(f"{prefix or 'this '}replay {i + 1}: {replays[prefix][-1]['wall_s']:.2f} s, "
                      + (f"plain {plain['wall_s']:.2f} s, " if plain else "")
                      + f"bare faster-whisper {bares[prefix][-1]['wall_s']:.2f} s", flush=True)
        if args.runs:
            for prefix, _, _ in variants:
                metrics[f"{prefix}replay_hung"] = failures[prefix]
                if replays[prefix]:
                    metrics.update(replay_metrics(prefix, rows, duration, replays[prefix], bares[prefix]))
                if plains[prefix]:
                    metrics.update(plain_metrics(prefix, replays[prefix], plains[prefix], bares[prefix]))

        lives = {prefix: [] for prefix, _, _ in variants}
        if args.live_runs:
            mic = VirtualMicrophone(work)
            try:
                for i in range(args.live_runs):
                    for prefix, code, settings in variants:
                        use(code)
                        run = live_run(media, wav, duration, bundle, work, mic, settings)
                        run.update(live_latencies(run, rows))
                        lives[prefix].append(run)
                        print(f"{prefix or 'this '}live {i + 1}: latency ms "
                              + " ".join(f"{1000 * l:.0f}" for l in run["latencies"])
                              + f" (missed {run['missed']})", flush=True)
            finally:
                mic.close()
            for prefix, _, _ in variants:
                metrics.update(live_metrics(prefix, rows, lives[prefix]))
        if args.wer_phases:
            metrics.update(wer_by_phase(read_wav(wav), rows, sets, args.wer_phases))
            print(f"WER over {args.wer_phases} frame phases: median {metrics['wer_phase_median']}, "
                  f"{metrics['wer_phase_min']} to {metrics['wer_phase_max']}", flush=True)
        counts = [int(n) for n in args.sessions.split(",") if n.strip()]
        for n in counts:
            use(ROOT)
            result = sessions_run(n, media, bundle, work, sets, timeout_s=duration + 60 + 30 * n)
            metrics.update(sessions_metrics(n, rows, result))
            print(f"{n} sessions: latency p95 {metrics[f'sessions_{n}_latency_p95_ms']} ms, "
                  f"student requests per batch {metrics[f'sessions_{n}_service_student_requests_per_execution']}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    write(args.out, result_json(
        "pipeline", started, args.asr_threads, metrics,
        bundle=str(args.model) if args.model else "random-init bundle (speed does not depend on weights)",
        settings=sets, runs={"replay": args.runs, "live": args.live_runs, "sessions": args.sessions},
        baseline=({"code": str(args.baseline), "settings": [*sets, *args.baseline_set]} if args.baseline else None),
        load_average={"start": load_at_start, "end": list(os.getloadavg())},  # 1, 5, 15 min: is the machine quiet?
        notes="latency: utterance message emitted_at minus (paplay start + end of speech in the file, by "
              "energy); medians over runs; percentiles over all utterances of all runs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
