"""The speech of a synthetic session: espeak-ng with per-emotion prosody, mixed on one timeline."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape

import numpy as np

from engines.preprocess import SAMPLE_RATE
from trainer.synth.plan import PlannedLine, Speaker, average

LEAD_IN_S = 0.6
TRAIL_S = 0.8
GAP_S = (0.7, 1.5)  # silence between utterances, drawn uniformly
NOISE_STD = 0.0015  # faint hiss, as in a real room; keeps silence from being exact zeros
WORD_GAP = 3  # espeak -g, 10 ms units: short pauses between words help recognition


@dataclass(frozen=True)
class Prosody:
    pitch: float = 0.0  # added to the speaker's espeak -p (0..99)
    speed: float = 1.0  # factor on the speaker's espeak -s (words per minute)
    loudness_db: float = -25.0  # RMS level of the utterance, dB full scale
    pitch_range: float = 100.0  # SSML <prosody range>, percent of the voice's default


# Textbook acoustic correlates of each emotion, exaggerated enough to be
# learnable yet mild enough that Whisper still understands the words.
# Loudness is set by scaling the samples rather than espeak's -a: espeak-ng's
# voices differ in level by several dB and loud settings clip.
LABEL_PROSODY = {
    "neutral": Prosody(),
    "happiness": Prosody(pitch=15, speed=1.08, loudness_db=-22, pitch_range=160),  # high, lively
    "sadness": Prosody(pitch=-16, speed=0.8, loudness_db=-33, pitch_range=35),  # low, flat, slow, quiet
    "anger": Prosody(pitch=5, speed=1.1, loudness_db=-17, pitch_range=125),  # loud and fast
    "surprise": Prosody(pitch=32, speed=1.0, loudness_db=-22, pitch_range=190),  # very high, wide swings
}


def prosody_for(labels: list[str], audio_cue: bool) -> Prosody:
    """Prosody of the labels (a blend for a pair), neutral without the cue."""
    if not audio_cue:
        return LABEL_PROSODY["neutral"]
    return average([LABEL_PROSODY[label] for label in labels])


def jitter_prosody(rng: np.random.Generator, p: Prosody) -> Prosody:
    # People never say two sentences identically; the jitter also keeps a
    # model from keying on exact parameter values.
    return replace(
        p,
        pitch=p.pitch + rng.uniform(-4, 4),
        speed=p.speed * rng.uniform(0.95, 1.05),
        loudness_db=p.loudness_db + rng.uniform(-1.5, 1.5),
    )


def require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng not found on PATH: the synthetic corpus needs it for speech; "
            "install the Debian package espeak-ng (apt-get install espeak-ng)"
        )
    return exe


def espeak(text: str, speaker: Speaker, p: Prosody) -> np.ndarray:
    """Speech for one sentence as float32 at SAMPLE_RATE, silence trimmed."""
    pitch = int(round(np.clip(speaker.pitch + p.pitch, 0, 99)))
    speed = int(round(np.clip(speaker.speed * p.speed, 80, 450)))
    # Pitch range has no command-line flag, only SSML; text is escaped for it.
    ssml = f'<speak><prosody range="{p.pitch_range:.0f}%">{escape(text)}</prosody></speak>'
    cmd = [require_espeak(), "-v", speaker.voice, "-p", str(pitch), "-s", str(speed),
           "-g", str(WORD_GAP), "-m", "-z", "--stdin", "--stdout"]
    proc = subprocess.run(cmd, input=ssml.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    audio, rate = parse_wav(proc.stdout)
    audio = trim_silence(resample(audio, rate, SAMPLE_RATE))
    return set_loudness(audio, p.loudness_db + speaker.loudness_db)


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono PCM from espeak-ng's stdout WAV.

    When writing to a pipe espeak-ng cannot seek back to fill in the sizes,
    so the header's lengths are bogus and the `wave` module is no use; the
    data simply runs to the end.
    """
    if data[:4] != b"RIFF" or data[36:40] != b"data":
        raise RuntimeError("espeak-ng produced no WAV data")
    rate = int.from_bytes(data[24:28], "little")
    pcm = np.frombuffer(data[44 : 44 + (len(data) - 44) // 2 * 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by cutting or padding the spectrum.

    Utterances are a few seconds long, so one FFT over the whole clip is
    cheap and needs neither scipy nor a sox round trip.
    """
    if rate == target or audio.size == 0:
        return audio
    n_out = int(round(audio.size * target / rate))
    # Zero-pad to a length whose FFTs are fast (few, small prime factors) and
    # that maps to a whole number of output samples; the padding is cut off.
    step = rate // np.gcd(rate, target)
    blocks = _smooth_at_least(-(-audio.size // step))
    padded = np.pad(audio, (0, blocks * step - audio.size))
    n_padded_out = blocks * step * target // rate
    spectrum = np.fft.rfft(padded)[: n_padded_out // 2 + 1]
    out = np.fft.irfft(spectrum, n_padded_out) * (n_padded_out / padded.size)
    return out[:n_out].astype(np.float32)


def _smooth_at_least(n: int) -> int:
    """Smallest integer >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def trim_silence(audio: np.ndarray, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading and trailing near-silence so manifest times bound the speech."""
    loud = np.flatnonzero(np.abs(audio) > 0.02 * max(float(np.abs(audio).max()), 1e-6))
    if loud.size == 0:
        return audio
    margin = int(margin_s * SAMPLE_RATE)
    return audio[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def set_loudness(audio: np.ndarray, level_db: float) -> np.ndarray:
    """Scale to an RMS level in dBFS, softly limiting the peaks of loud speech."""
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    if rms == 0.0:
        return audio
    return soft_limit(audio * (10 ** (level_db / 20) / rms))


def soft_limit(audio: np.ndarray, knee: float = 0.7, ceiling: float = 0.95) -> np.ndarray:
    """Compress only the samples above `knee` so none passes `ceiling`.

    Turning a whole shouted sentence down until its highest peak fits would
    make it no louder than calm speech; squashing just the peaks keeps the
    level difference, much as a shouting voice itself saturates.
    """
    magnitude = np.abs(audio)
    over = magnitude > knee
    squashed = knee + (ceiling - knee) * np.tanh((magnitude[over] - knee) / (ceiling - knee))
    out = audio.astype(np.float32, copy=True)
    out[over] = np.sign(audio[over]) * squashed
    return out


def mix_session(rng: np.random.Generator, utterances: list[PlannedLine]) -> np.ndarray:
    """Place utterances on the timeline with silent gaps; returns the session audio.

    Sets each utterance's start_sample, the placement the manifest reports.
    """
    pos = int(round(LEAD_IN_S * SAMPLE_RATE))
    for i, utt in enumerate(utterances):
        if i > 0:
            pos += int(round(rng.uniform(*GAP_S) * SAMPLE_RATE))
        utt.start_sample = pos
        pos = utt.end_sample
    total = pos + int(round(TRAIL_S * SAMPLE_RATE))
    mix = rng.normal(0.0, NOISE_STD, total).astype(np.float32)
    for utt in utterances:
        mix[utt.start_sample : utt.end_sample] += utt.audio
    return np.clip(mix, -1.0, 1.0)
