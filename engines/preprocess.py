"""The one preprocessing code that the trainer and the runtime share.

Training and serving call the same functions with the same parameters (stored
in the bundle's manifest), so the model never sees features at serving time
that differ from the ones it was trained on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Hz: the one audio rate of the project, from decoding to the VAD, the ASR and the model;
# Silero VAD and Whisper hear only this rate, so realtime serves it alone.
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Preprocessing:
    """Feature parameters; written into every bundle's manifest."""

    sample_rate: int = SAMPLE_RATE  # Hz; every audio stage works at this rate (realtime serves 16000 only:
    # its VAD and ASR models hear that rate; a bundle at another is refused)
    n_fft: int = 400  # STFT window in samples (25 ms)
    hop: int = 160  # samples between log-mel frames (10 ms)
    n_mels: int = 64  # mel bands
    max_audio_s: float = 8.0  # longer utterances keep their last max_audio_s seconds
    audio_patch: int = 8  # log-mel frames per audio token (80 ms)
    video_frames: int = 8  # face crops per utterance window, evenly spaced in time
    face_size: int = 64  # side of the square grey face crop in pixels, as FER2013 models take
    tubelet: tuple[int, int, int] = (2, 16, 16)  # frames x height x width of one video token
    text_max_tokens: int = 64  # text tokens kept (mean pooling cuts the end, mask pooling the oldest context)
    text_pooling: str = "mean"  # what the text encoder reads (engines.dialogue.text_input):
    # mean: the utterance alone, the mean of its token states (for a frozen sentence
    #   encoder such as all-MiniLM-L6-v2: a dialogue prompt only blurs its embedding);
    # mask: TelME's prompt "<s1> past... [SEP] Now <s1> feels [MASK]", its mask token's
    #   state (for an encoder fine-tuned on such prompts: `trainer teach`, then
    #   [train] text_encoder)
    text_context_turns: int = 0  # past turns of the session in the prompt (needs text_pooling = "mask");
    # -1 = all of them (in training the whole dialogue so far, live the whole session), as a
    # teacher tuned with max_turns None read them; text_max_tokens still cuts the oldest
    text_sep: str = ""  # separator token of the mask prompt; "" = the encoder's own (trainer fit fills it in)
    text_mask: str = ""  # mask token of the mask prompt; "" = the encoder's own (trainer fit fills it in)

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop", "n_mels", "max_audio_s", "audio_patch", "video_frames",
                     "face_size", "text_max_tokens"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if len(self.tubelet) != 3 or min(self.tubelet) < 1:
            raise ValueError(f"tubelet must be three sizes >= 1 (frames, height, width), got {self.tubelet}")
        if self.text_pooling not in ("mean", "mask"):
            raise ValueError(f"text_pooling must be mean or mask, got {self.text_pooling!r}")
        if self.text_context_turns < -1:
            raise ValueError(f"text_context_turns must be >= 0, or -1 for all, got {self.text_context_turns}")
        if self.text_context_turns and self.text_pooling != "mask":
            raise ValueError("text_context_turns needs text_pooling = \"mask\": dialogue context goes "
                             "into the prompt, which only mask pooling reads")

    @property
    def context_turns(self) -> int | None:
        """text_context_turns as a limit: None = all past turns."""
        return None if self.text_context_turns == -1 else self.text_context_turns

    @property
    def audio_frames(self) -> int:
        return int(round(self.max_audio_s * self.sample_rate / self.hop))

    @property
    def audio_tokens(self) -> int:
        return self.audio_frames // self.audio_patch

    @property
    def video_tokens(self) -> int:
        t, h, w = self.tubelet
        return (self.video_frames // t) * (self.face_size // h) * (self.face_size // w)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        data = dict(data)
        data["tubelet"] = tuple(data["tubelet"])
        return cls(**data)


@lru_cache(maxsize=4)
def _hann(n_fft: int) -> np.ndarray:
    """The periodic Hann window of an n_fft-sample frame, float32."""
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale, shape (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(audio: np.ndarray, p: Preprocessing) -> np.ndarray:
    """Log-mel spectrogram of 16 kHz mono float audio, shape (n_mels, frames).

    Scaled as Whisper does (log10, floor 8 below the peak, (x + 4) / 4), which
    keeps loudness information: loudness is an emotion cue.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size < p.n_fft:
        audio = np.pad(audio, (0, p.n_fft - audio.size))
    # Frames as a strided view of the audio (no gathered copy; it ran every window update).
    frames = np.lib.stride_tricks.sliding_window_view(audio, p.n_fft)[:: p.hop] * _hann(p.n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = mel_filterbank(p.sample_rate, p.n_fft, p.n_mels) @ power.T
    logmel = np.log10(np.maximum(mel, 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).astype(np.float32)


def audio_features(audio: np.ndarray | None, p: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size log-mel input and its per-token mask for one utterance.

    Returns mel (n_mels, audio_frames) and mask (audio_tokens,) with 1 where a
    token holds real audio.  Absent audio gives zeros and an all-zero mask.
    """
    mel = np.zeros((p.n_mels, p.audio_frames), dtype=np.float32)
    mask = np.zeros((p.audio_tokens,), dtype=np.float32)
    if audio is None or len(audio) == 0:
        return mel, mask
    spec = log_mel(audio, p)[:, -p.audio_frames:]
    mel[:, : spec.shape[1]] = spec
    mask[: int(np.ceil(spec.shape[1] / p.audio_patch))] = 1.0
    return mel, mask


def face_crop(frame_bgr: np.ndarray, box: tuple[int, int, int, int], p: Preprocessing) -> np.ndarray:
    """Square grey crop around a face box (x, y, w, h), resized to face_size, uint8."""
    import cv2

    x, y, w, h = box
    side = int(max(w, h) * 1.1)  # a small margin keeps the chin and brows
    cx, cy = x + w // 2, y + h // 2
    x0, y0 = max(cx - side // 2, 0), max(cy - side // 2, 0)
    crop = frame_bgr[y0 : y0 + side, x0 : x0 + side]
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return cv2.resize(grey, (p.face_size, p.face_size), interpolation=cv2.INTER_AREA)


def sample_times(start: float, end: float, n: int) -> np.ndarray:
    """n media times spread evenly over [start, end] (centres of n equal slots)."""
    return start + (np.arange(n) + 0.5) * (end - start) / n


def video_features(
    crops: list[tuple[float, np.ndarray | None]], start: float, end: float, p: Preprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """Face crops of one window as model input.

    `crops` holds (media time, grey crop or None when that frame had no face).
    For each of video_frames evenly spaced times the nearest frame is taken.
    Returns video (video_frames, face_size, face_size) normalised to about
    zero mean, and mask (video_frames,) with 1 where a face was found.
    """
    video = np.zeros((p.video_frames, p.face_size, p.face_size), dtype=np.float32)
    mask = np.zeros((p.video_frames,), dtype=np.float32)
    if not crops:
        return video, mask
    times = np.array([t for t, _ in crops])
    for i, t in enumerate(sample_times(start, end, p.video_frames)):
        _, crop = crops[int(np.argmin(np.abs(times - t)))]
        if crop is not None:
            video[i] = (crop.astype(np.float32) / 255.0 - 0.5) / 0.25
            mask[i] = 1.0
    return video, mask
