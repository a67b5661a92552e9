"""The one feature assembler of training and serving: Windows -> the student's input arrays.

The fusion stage builds a `Window` per utterance from what the pipeline streamed
(transcript and dialogue context, the VAD's audio span, the face crops with their
media times); `trainer fit` and `trainer evaluate` build the same Window per corpus
utterance from a recording decoded once (`decode` + `Recording.window`).  Both turn
Windows into model inputs with the functions below, so the student sees the same
arrays for the same span whichever side computed them.

Text is the one part each side encodes itself: the runtime embeds with the bundle's
ONNX text encoder, the trainer with its PyTorch SentenceEncoder (the graph exported
from it).  What either encoder reads comes from `text_inputs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engines.dialogue import UNKNOWN_SPEAKER, Turn, text_input
from engines.faces import FaceFrame, FaceOptions, face_crops, speaking_face
from engines.preprocess import Preprocessing, audio_features, video_features

# The live VAD keeps this much audio before and after the speech it finds ([vad]
# speech_pad_ms, realtime.stages.segmenter.VadOptions).  Training pads manifest spans by the
# same amount (`pad_spans`), so utterances look alike in both places.
SPEECH_PAD_MS = 200

MEDIA_INPUTS = ("mel", "audio_mask", "video", "video_mask")


@dataclass
class Window:
    """One span of one session to score: any of its modalities may be absent."""

    start: float
    end: float
    text: str | None = None
    # Earlier turns of the session, oldest first: the dialogue context of `text`, read
    # when the bundle's text_pooling is "mask" (engines.dialogue.text_input).
    context: list[Turn] = field(default_factory=list)
    speaker: str = UNKNOWN_SPEAKER
    audio: np.ndarray | None = None  # 16 kHz mono float32 covering [start, end]
    crops: list = field(default_factory=list)  # (media time, grey crop or None)


# --------------------------------------------------------------------------- the cut


def sample_index(t: float, t0: float, sample_rate: int) -> int:
    """Index of media time t in audio whose first sample is at media time t0."""
    return int(round((t - t0) * sample_rate))


@dataclass
class Recording:
    """A whole session decoded once: the audio the replay source streams and the faces
    the face stage finds in it (every sampled frame, with its media time)."""

    audio: np.ndarray  # 16 kHz mono float32
    t0: float  # media time of audio[0]
    sample_rate: int
    frames: list[FaceFrame]  # in time order
    faces: FaceOptions = field(default_factory=FaceOptions)  # the speaker evidence's settings

    @property
    def audio_end(self) -> float:
        return self.t0 + self.audio.size / self.sample_rate

    def window(self, start: float, end: float, **text) -> Window:
        """The Window of span [start, end], clipped to the recorded audio as the live VAD's
        spans are, with the crops of the face that spoke (utterance_crops); `text` may
        give text, context and speaker."""
        if self.audio.size:
            start, end = max(start, self.t0), min(end, self.audio_end)
        a, b = (min(max(sample_index(t, self.t0, self.sample_rate), 0), self.audio.size) for t in (start, end))
        _, crops = utterance_crops(self.frames, start, end, self.faces)
        return Window(start=start, end=end, audio=self.audio[a:max(a, b)], crops=crops, **text)


def utterance_crops(frames: Sequence[FaceFrame], start: float, end: float,
                    options: FaceOptions) -> tuple[int | None, list]:
    """The speaking face of an utterance span (engines.faces.speaking_face) and the crops
    the model reads for it: that face's, or the main face's when no speaker can be told.
    The fusion stage and the trainer both cut utterances with this."""
    speaker = speaking_face(frames, start, end, options)
    return speaker, face_crops(frames, start, end, speaker)


def decode(path: str | Path, pre: Preprocessing, faces: FaceOptions) -> Recording:
    """Decode a recorded session as the pipeline sees it: audio at pre.sample_rate, frames
    at faces.sample_fps, every face tracked by one FaceTracker in frame order, as the
    face stage's tracker does."""
    from engines.faces import FaceTracker
    from engines.media import read_media

    audio, t0, frames = read_media(path, pre.sample_rate, faces.sample_fps)
    tracker = FaceTracker(faces, pre)
    return Recording(audio, t0, pre.sample_rate, [tracker.update(f.image, f.t) for f in frames], faces)


def pad_spans(spans: Sequence[tuple[float, float]], pad_s: float) -> list[tuple[float, float]]:
    """Spans of one recording widened as the live VAD widens the speech it finds: pad_s
    before and after, but never back over the previous span's padded end (the VAD never
    hands out audio twice).  Clipping to the recording happens at the cut
    (Recording.window).  Returned in the order given."""
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    out = [(0.0, 0.0)] * len(spans)  # each one set below
    previous_end = -np.inf
    for i in order:
        start, end = spans[i]
        padded = (max(start - pad_s, previous_end), end + pad_s)
        out[i] = padded
        previous_end = max(previous_end, padded[1])
    return out


# --------------------------------------------------------------------------- the arrays


def _text(window: Window) -> str:
    return window.text.strip() if window.text else ""


def text_inputs(windows: Sequence[Window], pre: Preprocessing) -> list[str]:
    """What the text encoder reads for each window ("" where a window has no text)."""
    return [text_input(pre, w.context, Turn(w.speaker, _text(w))) if _text(w) else "" for w in windows]


def text_embeddings(windows: Sequence[Window], pre: Preprocessing, embed: Callable[[list[str]], np.ndarray],
                    dim: int) -> np.ndarray:
    """(N, dim) float32: `embed` (either side's text encoder) of each window's text input;
    zeros where a window has no text (the presence mask hides them)."""
    inputs = text_inputs(windows, pre)
    out = np.zeros((len(windows), dim), dtype=np.float32)
    with_text = [i for i, t in enumerate(inputs) if t]
    if with_text:
        out[with_text] = embed([inputs[i] for i in with_text])
    return out


def media_shapes(pre: Preprocessing) -> dict[str, tuple[int, ...]]:
    """The shape of one window's row of each media input, in MEDIA_INPUTS order."""
    return {"mel": (pre.n_mels, pre.audio_frames), "audio_mask": (pre.audio_tokens,),
            "video": (pre.video_frames, pre.face_size, pre.face_size), "video_mask": (pre.video_frames,)}


def media_inputs(windows: Sequence[Window], pre: Preprocessing) -> dict[str, np.ndarray]:
    """mel (N, n_mels, audio_frames), audio_mask, video (N, video_frames, S, S), video_mask."""
    if not windows:
        return {k: np.zeros((0, *s), np.float32) for k, s in media_shapes(pre).items()}
    mels, amasks = zip(*(audio_features(w.audio, pre) for w in windows))
    videos, vmasks = zip(*(video_features(w.crops, w.start, w.end, pre) for w in windows))
    return {k: np.stack(v) for k, v in zip(MEDIA_INPUTS, (mels, amasks, videos, vmasks))}


def presence(windows: Sequence[Window], audio_mask: np.ndarray, video_mask: np.ndarray) -> np.ndarray:
    """(N, 3) float32: 1 where the window has text, and where audio and video are present
    (their mask has a real token)."""
    return np.stack([np.array([bool(_text(w)) for w in windows], dtype=bool).reshape(len(windows)),
                     np.asarray(audio_mask).any(1), np.asarray(video_mask).any(1)], axis=1).astype(np.float32)


def student_inputs(windows: Sequence[Window], pre: Preprocessing, embed: Callable[[list[str]], np.ndarray],
                   text_dim: int) -> dict[str, np.ndarray]:
    """Every input of the student (engines.student.INPUTS) for a batch of windows."""
    feeds = {"text_emb": text_embeddings(windows, pre, embed, text_dim), **media_inputs(windows, pre)}
    feeds["present"] = presence(windows, feeds["audio_mask"], feeds["video_mask"])
    return feeds
