"""Streaming voice-activity segmentation: cut a live 16 kHz stream into utterances.

Uses the Silero VAD v6 ONNX model that ships inside faster-whisper, run frame by
frame with our own state handling, so utterances come out as soon as the
closing silence is heard rather than at the end of a file.

The decisions are made once per 512-sample VAD frame and depend only on the
samples, never on how they were chunked by the caller: feeding the same audio
in 160- or 4000-sample chunks gives identical utterances.

The segmenter stage (`segmenter`, a stage body for realtime.framework.run_stage) runs it on
the source's audio chunks and sends the utterance windows to the ASR.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.features import SPEECH_PAD_MS
from engines.preprocess import SAMPLE_RATE
from realtime import bus
from realtime.framework import Stage

logger = logging.getLogger(__name__)

FRAME = 512   # samples per VAD decision (32 ms); the v6 model's fixed window at 16 kHz
CONTEXT = 64  # samples of the previous frame that v6 expects in front of each frame
STATE_SHAPE = (1, 1, 128)  # the LSTM's h and c

# When an utterance must be force-cut, a pause at least this long inside it is
# a better cut point than the middle of a word (faster-whisper uses ~100 ms too).
CUT_PAUSE_MS = 100

# A caller's t0 may drift from our sample count by rounding; only warn beyond this.
T0_TOLERANCE_S = 0.02


@dataclass
class VadOptions:
    """How speech is found and cut into utterances."""

    threshold: float = 0.5  # speech probability at or above which a frame is speech; it opens an utterance
    neg_threshold: float | None = None  # probability below which a frame is silence; only silence
    # closes an utterance, and frames between the thresholds keep the state (hysteresis);
    # unset: max(threshold - 0.15, 0.01)
    min_speech_ms: int = 250  # utterances with less speech than this are dropped (clicks, coughs)
    min_silence_ms: int = 500  # silence that closes an utterance; also the latency from the end of speech
    speech_pad_ms: int = SPEECH_PAD_MS  # audio kept before and after the speech, so word edges the VAD
    # scores low survive; the padding after is at most the audio heard when the utterance
    # closes (at least min_silence_ms), and padding never overlaps the previous utterance;
    # `trainer fit` pads manifest spans by it too, so training cuts utterances alike
    max_utterance_s: float = 15.0  # longer speech is cut, at a pause when there is one, so that
    # no utterance, padding included, is much longer than this

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in (0, threshold={self.threshold}], "
                             f"got {self.neg_threshold}")
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_utterance_s * 1000 <= 2 * self.speech_pad_ms + self.min_speech_ms:
            raise ValueError(f"max_utterance_s must exceed 2 * speech_pad_ms + min_speech_ms "
                             f"({(2 * self.speech_pad_ms + self.min_speech_ms) / 1000} s), "
                             f"got {self.max_utterance_s}")

    @property
    def close_threshold(self) -> float:
        """neg_threshold with its default applied."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


@dataclass
class SpeechSegment:
    """One stretch of speech, padded."""

    start: float  # seconds of media time (the t0 clock of the first fed chunk)
    end: float  # start + len(audio) / sample_rate (settled(): the end the utterance will have)
    audio: np.ndarray  # float32 16 kHz samples covering [start, end] (settled(): the first asr_samples)
    asr_samples: int | None = None  # the leading samples the ASR transcribes (None: all): the
    # padding after the speech beyond the segmenter's asr_pad_ms is silence it need not wait for
    asr_lead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # the samples
    # just before `start` that only the ASR reads (asr_lead_ms): not part of the utterance


def silero_model_path() -> Path:
    """The silero_vad_v6.onnx inside the installed faster-whisper package."""
    # find_spec locates the package without importing it (which would load
    # CTranslate2 and PyAV just to learn a path).
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("faster-whisper is not installed; it provides the Silero VAD model")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise RuntimeError(f"Silero VAD v6 model not found at {path}; faster-whisper >= 1.2 ships it")
    return path


class SileroVad:
    """Speech probability of consecutive 512-sample frames of one 16 kHz stream.

    faster-whisper feeds a whole file at once: the model treats the first input
    axis as time and carries its LSTM state across it. To stream, we pass one
    frame per call and carry the state (h, c) and the 64-sample context between
    calls ourselves; the probabilities equal faster-whisper's batch run.
    """

    def __init__(self, model_path: str | Path | None = None):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        # One frame is a tiny graph: extra threads cost more in hand-off than
        # they save, and the cores are needed by ASR and the face model.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(model_path or silero_model_path()), sess_options=opts, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next frame is treated as the first."""
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        """Probability that this frame (exactly FRAME float32 samples) is speech."""
        x = np.concatenate([self._context, frame])[np.newaxis, :]
        prob, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = frame[-CONTEXT:].copy()
        return float(prob.reshape(-1)[0])


class SampleBuffer:
    """The recent tail of the stream, addressed by absolute sample index.

    Dropping the head only moves an offset; the live part is copied into a new
    array when appending runs out of room, with twice the room it needs, so each
    sample is copied a bounded number of times and memory follows what is kept.
    """

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)
        self._head = 0  # index in _data of the first kept sample
        self.start = 0  # absolute index of the first kept sample
        self.end = 0  # absolute index one past the last sample

    def append(self, samples: np.ndarray) -> None:
        size = self.end - self.start
        if self._head + size + len(samples) > len(self._data):
            grown = np.empty(max(2 * (size + len(samples)), 8 * FRAME), dtype=np.float32)
            grown[:size] = self._data[self._head:self._head + size]
            self._data, self._head = grown, 0
        offset = self._head + size
        self._data[offset:offset + len(samples)] = samples
        self.end += len(samples)

    def get(self, start: int, end: int) -> np.ndarray:
        """A copy of samples [start, end); they must still be kept."""
        if not self.start <= start <= end <= self.end:
            raise IndexError(f"samples [{start}, {end}) outside kept [{self.start}, {self.end})")
        offset = self._head - self.start
        return self._data[offset + start:offset + end].copy()

    def discard_before(self, index: int) -> None:
        index = min(max(index, self.start), self.end)
        self._head += index - self.start
        self.start = index


class StreamingSegmenter:
    """Feed audio as it arrives; get utterances once their closing silence is heard.

    All positions are absolute sample indices from the start of the stream;
    media times are the first chunk's t0 plus index / sample_rate.
    """

    def __init__(self, options: VadOptions | None = None, sample_rate: int = SAMPLE_RATE,
                 asr_pad_ms: int | None = None, asr_lead_ms: int = 0):
        """asr_pad_ms: of the padding after the speech, how much the ASR transcribes (at most
        speech_pad_ms, the default); segments carry that as `asr_samples`.
        asr_lead_ms: audio before an utterance's padded start that the ASR reads too, never
        reaching back into the previous utterance's speech; segments carry it as `asr_lead`."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate must be {SAMPLE_RATE} (the VAD model's rate); "
                             f"resample before feeding, got {sample_rate}")
        self.options = options or VadOptions()
        self.options.validate()  # the dataclass may have been changed after construction
        self.sample_rate = sample_rate
        ms = sample_rate / 1000
        self._min_speech = round(self.options.min_speech_ms * ms)
        self._min_silence = round(self.options.min_silence_ms * ms)
        self._pad = round(self.options.speech_pad_ms * ms)
        if asr_pad_ms is not None and asr_pad_ms < 0:
            raise ValueError(f"asr_pad_ms must be >= 0, got {asr_pad_ms}")
        self._asr_pad = self._pad if asr_pad_ms is None else min(self._pad, round(asr_pad_ms * ms))
        if asr_lead_ms < 0:
            raise ValueError(f"asr_lead_ms must be >= 0, got {asr_lead_ms}")
        self._asr_lead = round(asr_lead_ms * ms)
        self._cut_pause = round(CUT_PAUSE_MS * ms)
        # Speech between the paddings may use what the padding leaves of the limit.
        self._max_speech = round(self.options.max_utterance_s * sample_rate) - 2 * self._pad
        self._vad = SileroVad()
        self.reset()

    def reset(self) -> None:
        """Start a new stream (flush() does this after closing the last utterance)."""
        self._vad.reset()
        self._buffer = SampleBuffer()
        self._origin: float | None = None  # media time of sample 0
        self._warned_t0 = False
        self._vad_end = 0  # samples scored by the VAD so far (a multiple of FRAME)
        self._emitted_end = 0  # end of the last utterance handed out
        self._emitted_speech_end = 0  # end of its speech (its padding after is not speech)
        self._speech_start: int | None = None  # set while inside an utterance
        self._silence_start: int | None = None  # set while a possible closing silence runs
        self._pause: tuple[int, int] | None = None  # last pause inside the utterance, for cuts

    @property
    def buffered_samples(self) -> int:
        """Samples held right now (for monitoring; bounded by the options, not the stream)."""
        return self._buffer.end - self._buffer.start

    def feed(self, samples: np.ndarray, t0: float) -> list[SpeechSegment]:
        """Add the next chunk (any length); t0 is the media time of samples[0].

        Chunks are taken as contiguous; t0 anchors the clock on the first chunk, later
        ones are checked against it.  A gap before a chunk that comes outside any utterance
        is filled with silence (see _check_clock).
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono 1-D samples, got shape {samples.shape}")
        self._check_clock(t0)
        self._buffer.append(samples)
        utterances = []
        while self._buffer.end - self._vad_end >= FRAME:
            utterances += self._score_frame(self._buffer.get(self._vad_end, self._vad_end + FRAME))
        self._trim()
        return utterances

    def flush(self) -> list[SpeechSegment]:
        """End of stream: score the last partial frame, close any open utterance, reset."""
        utterances = []
        real_end = self._buffer.end
        if real_end > self._vad_end:
            partial = self._buffer.get(self._vad_end, real_end)
            utterances += self._score_frame(np.pad(partial, (0, FRAME - len(partial))))
        if self._speech_start is not None:
            end = self._silence_start if self._silence_start is not None else real_end
            utterances += self._close(end)
        self.reset()
        return utterances

    def open_utterance(self) -> SpeechSegment | None:
        """The utterance still being spoken, up to the audio scored so far (what a
        partial transcript is made of); None while there is no speech."""
        if self._speech_start is None:
            return None
        start = max(self._speech_start - self._pad, self._emitted_end)
        end = min(self._vad_end, self._buffer.end)
        return SpeechSegment(start=self._time(start), end=self._time(end), audio=self._buffer.get(start, end),
                             asr_lead=self._lead(start))

    def done_until(self) -> float:
        """Media time that every utterance still to come ends after: the speech start of the
        open utterance (its end, padded or cut, lies past it), else the audio scored so far
        (the next one's speech starts there at the earliest).  Every utterance ending at or
        before it has been handed out: what lets the fusion stage order results by media time."""
        return self._time(self._speech_start if self._speech_start is not None else self._vad_end)

    def settled(self) -> SpeechSegment | None:
        """The utterance that closes if the silence now running holds, once the part of it the
        ASR transcribes (up to asr_pad_ms of padding after the speech) is scored; else None.

        Its start, end and first asr_samples samples (all the audio it carries) are sample for
        sample those of the segment feed() will return when the silence reaches min_silence_ms,
        so the ASR's work on it early is valid for that utterance; if speech resumes first, the
        utterance that eventually closes is longer and differs.
        """
        if self._speech_start is None or self._silence_start is None:
            return None
        speech_end = self._silence_start
        if speech_end <= self._speech_start or speech_end - self._speech_start < self._min_speech:
            return None  # _close would drop it
        heard = speech_end + self._asr_pad
        if heard > min(self._vad_end, self._buffer.end):
            return None  # the padding the ASR reads is not all heard yet
        start = max(self._speech_start - self._pad, self._emitted_end)
        audio = self._buffer.get(start, heard)
        return SpeechSegment(start=self._time(start), end=self._time(speech_end + self._pad), audio=audio,
                             asr_samples=len(audio), asr_lead=self._lead(start))

    # -- per-frame state machine ------------------------------------------------

    def _score_frame(self, frame: np.ndarray) -> list[SpeechSegment]:
        pos = self._vad_end
        prob = self._vad(frame)
        self._vad_end += FRAME
        return self._decide(prob, pos)

    def _decide(self, prob: float, pos: int) -> list[SpeechSegment]:
        """Update the state with the frame starting at `pos`; return closed utterances."""
        opts = self.options
        if self._speech_start is None:
            if prob >= opts.threshold:
                self._speech_start, self._silence_start, self._pause = pos, None, None
            return []
        if prob >= opts.threshold and self._silence_start is not None:
            # Speech resumed: the silence was a pause, remembered as a cut point.
            if pos - self._silence_start >= self._cut_pause:
                self._pause = (self._silence_start, pos)
            self._silence_start = None
        elif prob < opts.close_threshold and self._silence_start is None:
            self._silence_start = pos
        frame_end = pos + FRAME
        if self._silence_start is not None and frame_end - self._silence_start >= self._min_silence:
            return self._close(self._silence_start)
        if frame_end - self._speech_start > self._max_speech:
            return self._force_cut(frame_end)
        return []

    def _close(self, speech_end: int) -> list[SpeechSegment]:
        """End the open utterance at `speech_end`; drop it if it is too short."""
        start = self._speech_start
        self._speech_start = self._silence_start = self._pause = None
        if speech_end <= start or speech_end - start < self._min_speech:
            return []  # too short, or nothing left after a cut at the very end
        return [self._emit(start, speech_end, pad_end=True)]

    def _force_cut(self, now: int) -> list[SpeechSegment]:
        """The utterance is too long: cut it, preferring a pause to mid-speech."""
        if self._silence_start is not None:
            return self._close(self._silence_start)
        # min(): in flush() the last frame is zero-padded past the real samples.
        cut = (self._pause[0] + self._pause[1]) // 2 if self._pause else min(now, self._buffer.end)
        # No padding at a cut: the next piece starts exactly where this one ends.
        piece = self._emit(self._speech_start, cut, pad_end=False)
        self._speech_start, self._pause = cut, None
        return [piece]

    def _emit(self, speech_start: int, speech_end: int, pad_end: bool) -> SpeechSegment:
        start = max(speech_start - self._pad, self._emitted_end)
        end = asr_end = speech_end
        if pad_end:
            # Only audio already scored: waiting for more would add latency and
            # make the result depend on chunking.
            end = min(speech_end + self._pad, self._vad_end, self._buffer.end)
            asr_end = min(speech_end + self._asr_pad, end)
        lead = self._lead(start)
        self._emitted_end, self._emitted_speech_end = end, speech_end
        return SpeechSegment(start=self._time(start), end=self._time(end), audio=self._buffer.get(start, end),
                             asr_samples=asr_end - start, asr_lead=lead)

    def _lead(self, start: int) -> np.ndarray:
        """The asr_lead_ms before `start`, cut where the previous utterance's speech ended.

        Silero scores a soft onset ("the", "how") as speech a frame or more late; the padding
        before it is then too short for Whisper, which mishears a word it hears begun."""
        return self._buffer.get(max(start - self._asr_lead, self._emitted_speech_end, 0), start)

    # -- bookkeeping ------------------------------------------------------------

    def _trim(self) -> None:
        """Drop samples no future utterance can include (bounded memory)."""
        anchor = self._speech_start if self._speech_start is not None else self._vad_end
        self._buffer.discard_before(max(anchor - self._pad - self._asr_lead, self._emitted_speech_end))

    def _check_clock(self, t0: float) -> None:
        if self._origin is None:
            self._origin = float(t0)
            return
        expected = self._time(self._buffer.end)
        gap = t0 - expected
        if abs(gap) > T0_TOLERANCE_S and not self._warned_t0:
            self._warned_t0 = True
            logger.warning("chunk t0=%.3f s but %.3f s expected from the samples fed; a gap between "
                           "utterances is heard as silence, otherwise chunks are treated as contiguous",
                           t0, expected)
        if gap > T0_TOLERANCE_S and self._speech_start is None:
            # Audio is missing (a microphone opened again after its source process died): heard
            # as the silence it was, so that times follow the clock again.  Inside an utterance
            # the chunks are joined instead, which does not cut it in two.
            self._buffer.append(np.zeros(round(gap * self.sample_rate), np.float32))

    def _time(self, index: int) -> float:
        return self._origin + index / self.sample_rate


def segmenter(stage: Stage, vad_options, partial_every_s: float = 0.0, speculative: bool = False,
              asr_pad_ms: int | None = None, asr_lead_ms: int = 0, progress: bool = False) -> None:
    """Streaming voice activity detection: audio chunks in, utterance windows out.

    With partial_every_s > 0 the utterance still being spoken also goes to the ASR,
    as a `partial`, each time that much more speech has been heard.  With speculative,
    an utterance whose closing silence has begun goes to the ASR as a `speculative` as
    soon as the audio the ASR reads is heard (asr_pad_ms of padding after the speech), so the
    ASR runs while the silence is still being timed.

    With progress (replay), a `progress` message follows the utterances each chunk closed
    whenever StreamingSegmenter.done_until moved: through the ASR it tells fusion which
    transcripts can still come, so fusion publishes in media-time order.  It goes before
    any speculative or partial of that chunk, whose ends lie past it, so the ASR finds no
    progress queued behind a speculative and still speculates.
    """
    inbox, out = stage.pull(stage.endpoints.audio), stage.push(stage.endpoints.utterances)
    # Fusion also gets every chunk, for its window updates between utterances.
    audio_copy = stage.push(stage.endpoints.fusion)
    vad = StreamingSegmenter(vad_options, asr_pad_ms=asr_pad_ms, asr_lead_ms=asr_lead_ms)
    stage.report("ready")
    seq = 0
    partial_at: tuple[float, float] | None = None  # (start, end) of the last partial sent
    speculated: tuple[float, float] | None = None  # (start, end) of the last speculative sent
    done_until = -math.inf  # the last progress sent

    def emit(kind: str, utt) -> None:
        nonlocal seq
        asr = {} if utt.asr_samples is None else {"asr_samples": utt.asr_samples}
        audio = utt.audio
        if utt.asr_lead.size:  # the audio before the utterance that only the ASR reads travels in front
            asr["asr_lead"] = utt.asr_lead.size
            audio = np.concatenate([utt.asr_lead, utt.audio])
        stage.send(out, {"type": kind, "session": header["session"], "seq": seq,
                         "start": utt.start, "end": utt.end, **asr}, audio)
        seq += 1

    while True:
        header, samples = stage.recv(inbox, bus.AUDIO_IN)
        if header["type"] == "audio":
            stage.send(audio_copy, {k: header[k] for k in ("type", "session", "seq", "t")}, samples)
            found = vad.feed(samples, header["t"])
        else:  # eos
            found = vad.flush()
        for utt in found:
            emit("utterance", utt)
            partial_at = None
        if progress and header["type"] == "audio" and vad.done_until() != done_until:
            done_until = vad.done_until()
            stage.send(out, {"type": "progress", "session": header["session"], "t": done_until})
        if header["type"] == "eos":
            # Fusion learns that every audio chunk is in (its windows need that), then the ASR passes eos on.
            # A lost microphone is announced from here, not after the ASR has caught up.
            copy_eos = {"type": "eos", "session": header.get("session", ""), "stream": "audio"}
            stage.send(audio_copy, dict(copy_eos, lost=header["lost"]) if "lost" in header else copy_eos)
            stage.send(out, header)
            return
        settled = vad.settled() if speculative else None
        if settled is not None and (settled.start, settled.end) != speculated:
            emit("speculative", settled)
            speculated = (settled.start, settled.end)
        current = vad.open_utterance() if partial_every_s > 0 else None
        if current is not None:
            last = partial_at if partial_at and partial_at[0] == current.start else (current.start, current.start)
            if current.end - last[1] >= partial_every_s:
                emit("partial", current)
                partial_at = (current.start, current.end)
