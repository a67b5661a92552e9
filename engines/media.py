"""Decoding recorded sessions (PyAV): audio at 16 kHz mono and sampled video frames.

One decoder for the trainer (whole clips) and the replay source (a stream of
chunks), each item stamped with its media time in seconds from the file's start.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from common.errors import UserError


class MediaError(UserError, RuntimeError):
    """A media file that cannot be read; the message names the file."""


@dataclass
class AudioChunk:
    t: float  # media time of the first sample
    samples: np.ndarray  # float32 mono


@dataclass
class VideoFrame:
    t: float
    image: np.ndarray  # BGR uint8


def _last(logs) -> str:
    """The last warning FFmpeg logged: often the real cause (e.g. 'moov atom not found')."""
    lines = [text.strip().splitlines()[0] for _, _, text in logs if text.strip()]
    return f"; FFmpeg: {lines[-1]}" if lines else ""


def _reason(exc: Exception, logs) -> str:
    """FFmpeg's own words: the error, plus the last warning it logged (often the real cause)."""
    return (getattr(exc, "strerror", None) or str(exc)) + _last(logs)


def _decodable(container) -> list:
    """Audio and video streams FFmpeg has a decoder for (a truncated file may list streams without one)."""
    return [s for s in container.streams if s.type in ("audio", "video") and s.codec_context is not None]


def probe_media(path: str | Path, max_packets: int = 400) -> dict[str, bool]:
    """Check that `path` is media we can replay, before any stage starts; MediaError says why not.

    Opens the file, finds its audio and video streams and decodes packets until every
    stream has given a frame (or max_packets).  A file that passes may still be cut
    short later; that ends the replay early with the decoder's error.
    Returns which modalities the file has: {"audio": bool, "video": bool}.
    """
    import av
    import av.logging

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)  # so Capture sees FFmpeg's reasons; restored below
    try:
        with av.logging.Capture() as logs:
            try:
                with av.open(str(path)) as container:
                    streams = _decodable(container)
                    if not streams:
                        raise MediaError(f"{path}: no audio or video stream FFmpeg can decode "
                                         f"(truncated or not a media file?){_last(logs)}")
                    waiting = {s.index for s in streams}
                    for n, packet in enumerate(container.demux(streams)):
                        if packet.stream.index in waiting and packet.decode():
                            waiting.discard(packet.stream.index)
                        if not waiting or n >= max_packets:
                            break
                    if len(waiting) == len(streams):
                        raise MediaError(f"{path}: no frame could be decoded (truncated or corrupt?){_last(logs)}")
                    return {kind: any(s.type == kind for s in streams) for kind in ("audio", "video")}
            except (av.error.FFmpegError, UnicodeDecodeError) as exc:
                raise MediaError(f"{path}: not a readable media file: {_reason(exc, logs)}") from exc
    finally:
        av.logging.set_level(previous)


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
        streams = _decodable(container)
        if not streams:
            raise MediaError(f"{path}: no audio or video stream FFmpeg can decode")
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
    chunks: list[AudioChunk] = []
    frames: list[VideoFrame] = []
    for item in iter_media(path, sample_rate, video_fps):
        if isinstance(item, AudioChunk):
            chunks.append(item)
        else:
            frames.append(item)
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    start = chunks[0].t if chunks else 0.0
    return audio, start, frames


class MediaWriter:
    """Write BGR frames at a constant rate and mono float audio into one file (PyAV).

    Audio is encoded as it comes and interleaved with the video by time, so a
    long recording never sits in memory.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, sample_rate: int = 16000):
        import av

        self.fps, self.rate = fps, sample_rate
        self.container = av.open(str(path), "w")
        codec: Literal["libx264", "mpeg4"] = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.video_stream = self.container.add_stream(codec, rate=int(round(fps)))
        self.video_stream.width, self.video_stream.height = width, height
        self.video_stream.pix_fmt = "yuv420p"
        # One encoder thread: the same input gives the same bytes on every run.
        self.video_stream.codec_context.thread_count = 1
        if codec == "libx264":
            self.video_stream.options = {"preset": "veryfast", "crf": "23"}
        else:
            self.video_stream.bit_rate = 800_000
        self.audio_stream = self.container.add_stream("aac", rate=sample_rate, layout="mono")
        self.audio_stream.bit_rate = 64_000
        self.audio_stream.options = {"aac_coder": "fast"}
        self.frames = 0  # video frames written
        self.pending = np.zeros(0, np.float32)  # audio not yet encoded (AAC takes 1024-sample frames)
        self.samples = 0  # audio samples encoded

    def video(self, image_bgr: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image_bgr, format="bgr24")
        frame.pts = self.frames
        self.container.mux(self.video_stream.encode(frame))
        self.frames += 1

    def audio(self, samples: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, np.asarray(samples, np.float32).reshape(-1)])
        while self.pending.size >= 1024:
            self._encode(self.pending[:1024])
            self.pending = self.pending[1024:]

    def _encode(self, chunk: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self.samples
        self.container.mux(self.audio_stream.encode(frame))
        self.samples += chunk.size

    def close(self) -> None:
        if self.pending.size:
            self._encode(self.pending)
            self.pending = np.zeros(0, np.float32)
        self.container.mux(self.video_stream.encode(None))
        self.container.mux(self.audio_stream.encode(None))
        self.container.close()

    def __enter__(self) -> "MediaWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
