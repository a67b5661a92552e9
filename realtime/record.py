"""`realtime record`: save a live session (camera + microphone) to a file that replay reads.

The camera is written at a constant frame rate (a frame is repeated when the
camera is late and skipped when it is early), the audio at 16 kHz mono, so the
file's media time matches the wall-clock time of the session.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np

from engines.preprocess import SAMPLE_RATE
from realtime.stages.source import CaptureOptions, Microphone, open_video


def record(out: str | Path, capture: CaptureOptions, duration_s: float = 0.0, fps: float = 15.0,
           stop: threading.Event | None = None, chunk_ms: int = 100, on_ready=None) -> dict:
    """Record until duration_s (0: until `stop` is set); returns what was written.

    Reads of chunk_ms: larger reads than the pipeline's keep the device buffer
    from overflowing while this process also encodes video.
    """
    from engines.media import MediaWriter

    stop = stop or threading.Event()
    t_start = time.time()
    camera = open_video(capture, t_start, fps) if capture.camera else None
    mic = Microphone(capture, chunk_ms, SAMPLE_RATE)
    chunks: queue.Queue = queue.Queue()

    def listen() -> None:  # own thread: the microphone must be read continuously
        while not stop.is_set():
            chunks.put(mic.read())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    if on_ready:
        on_ready()  # devices are open and capturing
    width, height = camera.size if camera else (320, 240)
    # H.264's 4:2:0 frames have even sides; a screen region may not: drop its last row or column.
    width, height = width - width % 2, height - height % 2
    blank = np.zeros((height, width, 3), np.uint8)
    try:
        with MediaWriter(out, fps, width, height, SAMPLE_RATE) as writer:
            frames = camera.frames() if camera else None
            last = blank
            while not stop.is_set() and not (duration_s and time.time() - t_start >= duration_s):
                if frames is not None:
                    item = next(frames, None)
                    if item is None:
                        frames = None  # the camera (or file) ended; keep recording sound
                    else:
                        last = item[1][:height, :width]
                else:
                    time.sleep(1.0 / fps)
                # Constant rate: write the newest image for every frame slot that has passed.
                while writer.frames < int((time.time() - t_start) * fps):
                    writer.video(last)
                while not chunks.empty():
                    writer.audio(chunks.get())
            stop.set()
            listener.join(2)
            while not chunks.empty():
                writer.audio(chunks.get())
            return {"path": str(out), "seconds": writer.samples / SAMPLE_RATE + writer.pending.size / SAMPLE_RATE,
                    "frames": writer.frames}
    finally:
        stop.set()
        if camera:
            camera.close()
        mic.close()
