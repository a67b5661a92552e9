"""Speech to text for one utterance with faster-whisper (CTranslate2 Whisper).

The segmenter has already cut the stream at silences, so each call gets one
short utterance and Whisper's own VAD and long-form machinery are switched off.
Decoding is greedy at temperature 0 without sampling fallbacks, so the same
audio always gives the same text (tests and recorded sessions rely on it).

Whisper reads audio in 30 s windows, and faster-whisper pads every utterance to one; on the
CPU that encoder pass is most of the time an utterance takes.  A short utterance is read in
a shorter window instead (AsrOptions.window_s), decoded as faster-whisper decodes a window;
a decode that loops there is redone in the full window.

The ASR stage (`asr`, a stage body for realtime.framework.run_stage) transcribes the
segmenter's utterance windows and sends the transcripts, with their audio, on to fusion.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from common.devices import check_device, resolve_device
from engines.preprocess import SAMPLE_RATE
from realtime import bus
from realtime.framework import Stage

logger = logging.getLogger(__name__)

WHISPER_WINDOW_S = 30.0  # the audio Whisper was trained to read at once
FRAMES_PER_SECOND = 100  # log-mel frames (10 ms hop)
# An utterance gets a window at least this many times its length: Whisper learnt from windows
# mostly filled with speech or silence, never cut short, and on our dev speech 2x (10 s at least)
# did not raise the WER, on one sentence or two (benchmarks/asr_window.py).
WINDOW_PER_UTTERANCE = 2.0
# Whisper's own test for a looping decode (text that compresses this well repeats itself);
# a short window makes such loops likelier, so that text is redone in the full window.
LOOP_COMPRESSION_RATIO = 2.4


@dataclass
class AsrOptions:
    """Which Whisper model runs where."""

    model: str = "tiny.en"  # a Whisper size name ("tiny.en", "base", ...) or a local CTranslate2
    # model directory; offline: the bundled tiny.en (common.offline.resolve_whisper_model)
    device: str = "auto"  # auto (CUDA when CTranslate2 sees a GPU), cpu or cuda
    compute_type: str = "auto"  # CTranslate2 compute type; auto: int8 on the CPU, float16 on CUDA
    language: str | None = "en"  # spoken language code; English-only models need "en" (None,
    # from Python only, detects it per utterance: slower, and unstable on one-word utterances)
    beam_size: int = 1  # 1 = greedy, the fastest; larger trades speed for a little accuracy
    cpu_threads: int = 2  # CTranslate2 threads on the CPU (0: it decides); leave cores for VAD and faces
    pad_ms: int = 100  # of the silence kept after the speech ([vad] speech_pad_ms), how much
    # the ASR reads (at most that); the rest is for the model's audio, and the ASR need not wait for it
    lead_ms: int = 200  # audio before an utterance's padded start ([vad] speech_pad_ms) that the ASR
    # reads too, never reaching into the previous utterance's speech: the VAD finds a soft onset
    # late, and Whisper mishears a word it hears begun; the utterance itself does not change
    # (how 200 was chosen: docs/BENCHMARKS.md)
    speculative: bool = True  # transcribe an utterance as soon as the audio the ASR reads is
    # heard, while the VAD still waits for its closing silence (min_silence_ms - pad_ms earlier);
    # the text is used if the silence holds and dropped if speech resumes; same text either way;
    # live only (serve, replay --realtime): a replay as fast as it goes gains nothing from it
    window_s: float = 10.0  # the shortest stretch of audio Whisper's encoder reads per utterance: the
    # utterance, then silence; an utterance longer than half of it gets twice its length, at most 30 s,
    # Whisper's own window (30: Whisper's exact result); the encoder's time grows faster than its
    # input (how 10 was chosen: docs/BENCHMARKS.md)
    partial_every_s: float = 0.0  # > 0: transcribe an open utterance each time this many more
    # seconds of speech arrived (final: false); 0 = off; live, a partial is skipped while newer
    # work waits, so partials never delay final transcripts; a replay transcribes every one (the
    # same partials every run)

    def __post_init__(self) -> None:
        check_device(self.device, "[asr] device")
        if self.pad_ms < 0:
            raise ValueError(f"pad_ms must be >= 0, got {self.pad_ms}")
        if self.lead_ms < 0:
            raise ValueError(f"lead_ms must be >= 0, got {self.lead_ms}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0: CTranslate2 decides), got {self.cpu_threads}")
        if not 1.0 <= self.window_s <= WHISPER_WINDOW_S:
            raise ValueError(f"window_s must be between 1 and {WHISPER_WINDOW_S:g} seconds, got {self.window_s}")
        if self.partial_every_s < 0:
            raise ValueError(f"partial_every_s must be >= 0 (0: no partial transcripts), got {self.partial_every_s}")


def window_seconds(window_s: float, utterance_s: float) -> float:
    """The audio Whisper's encoder reads for an utterance this long (see AsrOptions.window_s)."""
    return min(max(window_s, math.ceil(WINDOW_PER_UTTERANCE * utterance_s)), WHISPER_WINDOW_S)


def pick_device(device: str) -> str:
    """Resolve "auto" to cuda when CTranslate2 sees a GPU, else cpu."""
    def has_cuda() -> bool:
        import ctranslate2  # only where the answer needs it: it loads the CUDA libraries it finds

        return ctranslate2.get_cuda_device_count() > 0

    return resolve_device(device, has_cuda, "[asr] device", runtime="CTranslate2")


def pick_compute_type(compute_type: str, device: str) -> str:
    """Resolve "auto": int8 on cpu, float16 on cuda."""
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class Transcriber:
    """Loads the model once; transcribe() is then called per utterance."""

    def __init__(self, options: AsrOptions | None = None):
        from faster_whisper import WhisperModel

        from common.offline import resolve_whisper_model

        self.options = options or AsrOptions()
        self.model_path = resolve_whisper_model(self.options.model)
        self.device = pick_device(self.options.device)
        self.compute_type = pick_compute_type(self.options.compute_type, self.device)
        logger.info("ASR: %s on %s (%s)", self.model_path, self.device, self.compute_type)
        self._model = WhisperModel(self.model_path, device=self.device, compute_type=self.compute_type,
                                   cpu_threads=self.options.cpu_threads, num_workers=1)
        self.loops_redone = 0  # decodes in a short window that looped and were redone in Whisper's own
        if self.options.language is not None:  # the decoding prompt of _decode_window
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            self._tokenizer = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual,
                                        task="transcribe", language=self.options.language)
            self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
            self._suppressed = get_suppressed_tokens(self._tokenizer, [-1])

    def transcribe(self, audio: np.ndarray) -> str:
        """Text of one utterance (float32 mono at 16 kHz); "" for empty audio."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono 1-D samples, got shape {audio.shape}")
        if audio.size == 0:
            return ""
        seconds = window_seconds(self.options.window_s, audio.size / SAMPLE_RATE)
        if seconds < WHISPER_WINDOW_S and self.options.language is not None:
            text = self._decode_window(audio, int(seconds * FRAMES_PER_SECOND))
            if text is not None:
                return text
        return self._transcribe_whole(audio)

    def _transcribe_whole(self, audio: np.ndarray) -> str:
        """faster-whisper's own transcription: Whisper's 30 s window, long-form for longer audio."""
        segments, _info = self._model.transcribe(
            audio,
            language=self.options.language,
            beam_size=self.options.beam_size,
            temperature=0.0,  # a single temperature: no sampling fallback
            condition_on_previous_text=False,  # utterances are independent
            vad_filter=False,  # the segmenter already cut at silences
            without_timestamps=True,  # we only need the text; saves decoding steps
        )
        # segments is a lazy generator: decoding happens while it is consumed.
        return " ".join(segment.text.strip() for segment in segments).strip()

    def _decode_window(self, audio: np.ndarray, frames: int) -> str | None:
        """The text of audio that fits a window shorter than Whisper's, decoded as faster-whisper
        decodes one window (same prompt, suppressions and no-speech test: at 3000 frames the
        text is the same as _transcribe_whole's); None when the decode loops."""
        import ctranslate2
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_compression_ratio

        model = self._model
        features = model.feature_extractor(audio)[:, :-1]  # faster-whisper drops the last frame too
        features = pad_or_trim(features, frames)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
                                     to_cpu=False)
        result = model.model.generate(
            encoded, [self._prompt], beam_size=self.options.beam_size, patience=1, length_penalty=1,
            repetition_penalty=1, no_repeat_ngram_size=0, max_length=model.max_length, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppressed,
            max_initial_timestamp_index=round(1.0 / model.time_precision))[0]
        tokens = result.sequences_ids[0]
        average_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > 0.6 and average_logprob <= -1.0:  # faster-whisper's defaults
            return ""
        text = self._tokenizer.decode(tokens).strip()
        if get_compression_ratio(text) > LOOP_COMPRESSION_RATIO:
            self.loops_redone += 1
            logger.debug("ASR: looping decode in a %d-frame window, redone in Whisper's own", frames)
            return None
        return text


class Speculation:
    """The ASR's early result for an utterance whose closing silence is still running.

    The segmenter offers the utterance as it will be if the silence holds
    (StreamingSegmenter.settled); its text is kept here and handed out only for the
    utterance with the very same samples, so the text never depends on timing: a hit gives
    what transcribing the final audio would have given.
    """

    def __init__(self) -> None:
        self._kept: tuple[float, float, np.ndarray, str, float] | None = None

    def keep(self, start: float, end: float, audio: np.ndarray, text: str, asr_s: float) -> None:
        self._kept = (start, end, np.array(audio, dtype=np.float32), text, asr_s)

    def take(self, start: float, end: float, audio: np.ndarray) -> tuple[str, float] | None:
        """(text, asr_s) kept for exactly this utterance, else None; either way it is forgotten."""
        kept, self._kept = self._kept, None
        if kept is None or (kept[0], kept[1]) != (start, end) or not np.array_equal(kept[2], audio):
            return None
        return kept[3], kept[4]


def asr(stage: Stage, asr_options, ordered: bool = False) -> None:
    """faster-whisper on each utterance window; the audio travels on to fusion.

    ordered (replay): the segmenter's `progress` goes on to fusion behind the transcripts
    before it, and every partial is transcribed: skipping one while newer work waits would
    make a replay's partial transcripts depend on the machine's speed."""
    inbox, out = stage.pull(stage.endpoints.utterances), stage.push(stage.endpoints.fusion)
    transcriber = Transcriber(asr_options)
    speculation = Speculation()
    stage.report("ready")
    while True:
        header, audio = stage.recv(inbox, bus.UTTERANCES_IN)
        if header["type"] == "eos":
            stage.send(out, dict(header, stream="transcripts"))  # every transcript is out
            return
        if header["type"] == "progress":
            stage.send(out, header)
            continue
        if header["type"] == "speculative" or (header["type"] == "partial" and not ordered):
            if inbox.poll(0):
                continue  # newer audio is waiting (a speculative's own final, at worst): do that first
        lead = header.get("asr_lead", 0)  # audio before the utterance, for the ASR only
        heard = audio[: lead + header.get("asr_samples", len(audio) - lead)]  # the trailing silence past it is not read
        audio = audio[lead:]
        if header["type"] == "speculative":
            t0 = time.perf_counter()
            speculation.keep(header["start"], header["end"], heard, transcriber.transcribe(heard),
                             time.perf_counter() - t0)
            continue
        early = speculation.take(header["start"], header["end"], heard) if header["type"] == "utterance" else None
        if early is not None:
            text, asr_s = early  # transcribed while the closing silence was still being timed
        else:
            t0 = time.perf_counter()
            text = transcriber.transcribe(heard)
            asr_s = time.perf_counter() - t0
        fields = {k: header[k] for k in ("session", "seq", "start", "end")}
        if header["type"] == "partial":
            stage.send(out, {"type": "partial_transcript", **fields, "text": text, "asr_s": asr_s})
        else:
            stage.send(out, {"type": "transcript", **fields, "text": text, "asr_s": asr_s,
                             "early": early is not None}, audio)
