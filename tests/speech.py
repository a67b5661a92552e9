"""Synthetic test speech: espeak-ng voices resampled by sox to 16 kHz mono float32.

Real speech (not tones or noise) is needed because the VAD and Whisper are
trained on speech; espeak-ng is deterministic, offline and fast, so the same
text always gives the same samples.

    audio = say("hello there", speed=140, pitch=70)
    audio, spans = session(["one", "two", "three"], gap_s=1.2)
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess

import numpy as np

from engines.preprocess import SAMPLE_RATE

# prosody keyword -> espeak-ng flag (value ranges are espeak-ng's).
_PROSODY_FLAGS = {
    "speed": "-s",      # words per minute, default 175
    "pitch": "-p",      # 0..99, default 50
    "amplitude": "-a",  # 0..200, default 100
    "word_gap": "-g",   # extra pause between words, units of 10 ms
}

# Samples quieter than this fraction of the peak count as the silence espeak
# puts around a phrase; trimming it makes `session` spans the speech itself.
_EDGE_LEVEL = 0.01


def tools_available() -> bool:
    """True when espeak-ng and sox are installed (tests skip otherwise)."""
    return bool(shutil.which("espeak-ng") and shutil.which("sox"))


def say(text: str, voice: str = "en-us", **prosody: int) -> np.ndarray:
    """Speak `text`; float32 samples at 16 kHz, edge silence trimmed."""
    unknown = set(prosody) - set(_PROSODY_FLAGS)
    if unknown:
        raise TypeError(f"unknown prosody {sorted(unknown)}; known: {sorted(_PROSODY_FLAGS)}")
    # Cached: tests speak the same phrases many times; a copy keeps callers
    # from mutating the cached array.
    return _say_cached(text, voice, tuple(sorted(prosody.items()))).copy()


def session(texts: list[str], gap_s: float, voice: str = "en-us", **prosody: int
            ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Phrases separated by `gap_s` of silence, with the same silence before and after.

    Returns the audio and, per phrase, its (start, end) in seconds.
    """
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
    pieces, spans, cursor = [gap], [], len(gap)
    for text in texts:
        speech = say(text, voice, **prosody)
        spans.append((cursor / SAMPLE_RATE, (cursor + len(speech)) / SAMPLE_RATE))
        pieces += [speech, gap]
        cursor += len(speech) + len(gap)
    return np.concatenate(pieces), spans


@functools.lru_cache(maxsize=64)
def _say_cached(text: str, voice: str, prosody: tuple[tuple[str, int], ...]) -> np.ndarray:
    flags = [arg for key, value in prosody for arg in (_PROSODY_FLAGS[key], str(int(value)))]
    # -z: no extra pause after the last sentence; --stdout: WAV on stdout.
    wav = subprocess.run(["espeak-ng", "-v", voice, "-z", *flags, "--stdout", text],
                         check=True, capture_output=True).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1",
                          "-e", "floating-point", "-b", "32", "-L", "-"],
                         input=wav, check=True, capture_output=True).stdout
    return _trim(np.frombuffer(raw, dtype="<f4").astype(np.float32))


def _trim(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > _EDGE_LEVEL * np.abs(audio).max(initial=0.0))
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0]: loud[-1] + 1]


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation, as WER is usually scored."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / reference length."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    # distances[j] = edits turning ref[:i] into hyp[:j], one row i at a time.
    distances = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        diagonal, distances[0] = distances[0], i
        for j, hyp_word in enumerate(hyp, start=1):
            substitution = diagonal + (ref_word != hyp_word)
            diagonal = distances[j]
            distances[j] = min(substitution, distances[j] + 1, distances[j - 1] + 1)
    return distances[-1] / max(len(ref), 1)
