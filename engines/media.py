"""Decoding recorded sessions (PyAV): audio at 16 kHz mono and sampled video frames.

One decoder for the trainer (whole clips) and the replay source (a stream of
chunks), each item stamped with its media time in seconds from the file's start.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


class MediaError(RuntimeError):
    """A media file that cannot be read; the message names the file."""


@dataclass
class AudioChunk:
    t: float  # media time of the first sample
    samples: np.ndarray  # float32 mono


@dataclass
class VideoFrame:
    t: float
    image: np.ndarray  # BGR uint8


def iter_media(
    path: str | Path, sample_rate: int = 16000, video_fps: float = 5.0
) -> Iterator[AudioChunk | VideoFrame]:
    """Audio chunks and video frames (at most video_fps per second) in file order.

    Audio times are counted in samples from the first audio packet, so they do
    not drift with the container's rounding.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise MediaError(f"{path}: not a readable media file ({exc})") from exc
    with container:
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        if not streams:
            raise MediaError(f"{path}: has neither audio nor video")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        audio_pos = 0  # samples emitted so far
        audio_start: float | None = None
        next_frame_t = 0.0
        try:
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        if audio_start is None:
                            audio_start = float(frame.time or 0.0)
                        for out in resampler.resample(frame):
                            samples = out.to_ndarray().reshape(-1).astype(np.float32)
                            yield AudioChunk(audio_start + audio_pos / sample_rate, samples)
                            audio_pos += samples.size
                    elif isinstance(frame, av.VideoFrame) and frame.time is not None:
                        # Decode every frame (the codec needs it), convert only those we use.
                        if frame.time + 1e-6 >= next_frame_t:
                            next_frame_t = frame.time + 1.0 / video_fps
                            yield VideoFrame(float(frame.time), frame.to_ndarray(format="bgr24"))
            if audio_start is not None:
                for out in resampler.resample(None):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32)
                    yield AudioChunk(audio_start + audio_pos / sample_rate, samples)
                    audio_pos += samples.size
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: decoding failed at {audio_pos / sample_rate:.2f} s ({exc})") from exc


def read_media(path: str | Path, sample_rate: int = 16000, video_fps: float = 5.0):
    """Whole file: (audio float32 array, audio start time, list of VideoFrame)."""
    chunks, frames = [], []
    for item in iter_media(path, sample_rate, video_fps):
        (chunks if isinstance(item, AudioChunk) else frames).append(item)
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    start = chunks[0].t if chunks else 0.0
    return audio, start, frames
