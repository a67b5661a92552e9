"""faster-whisper transcription of segmented synthetic speech (offline tiny.en)."""
from __future__ import annotations

import numpy as np
import pytest

import speech
from realtime.stages import asr
from realtime.stages.asr import AsrOptions, Transcriber
from realtime.stages.segmenter import StreamingSegmenter, VadOptions

pytestmark = pytest.mark.skipif(not speech.tools_available(), reason="needs espeak-ng and sox")

# Sentences the espeak voice says clearly enough for tiny.en; some others
# ("the weather is lovely today", digits) come back wrong even at low speed.
TEXTS = ["i cannot believe you did that",
         "please close the door when you leave",
         "this is the worst day of my life"]


@pytest.fixture(scope="module")
def transcriber():
    # Never reach for the hub in tests: the model comes from the cache or the
    # bundled offline package.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield Transcriber(AsrOptions(model="tiny.en", device="cpu", cpu_threads=2))


@pytest.fixture(scope="module")
def utterances():
    audio, _ = speech.session(TEXTS, gap_s=1.2)
    segmenter = StreamingSegmenter(VadOptions())
    return segmenter.feed(audio, 0.0) + segmenter.flush()


def test_segmented_utterances_are_transcribed(transcriber, utterances):
    assert len(utterances) == len(TEXTS)
    texts = [transcriber.transcribe(u.audio) for u in utterances]
    for reference, text in zip(TEXTS, texts):
        assert speech.wer(reference, text) < 0.3, (reference, text)


def test_same_audio_gives_same_text(transcriber, utterances):
    audio = utterances[0].audio
    assert transcriber.transcribe(audio) == transcriber.transcribe(audio.copy())


def test_cpu_defaults_to_int8(transcriber):
    assert (transcriber.device, transcriber.compute_type) == ("cpu", "int8")


def test_empty_audio_gives_empty_text(transcriber):
    assert transcriber.transcribe(np.zeros(0, np.float32)) == ""


def test_stereo_is_refused(transcriber):
    with pytest.raises(ValueError, match="mono"):
        transcriber.transcribe(np.zeros((1600, 2), np.float32))


@pytest.mark.parametrize("gpus, device, compute_type", [(0, "cpu", "int8"), (1, "cuda", "float16")])
def test_auto_picks_cuda_only_when_there_is_a_gpu(monkeypatch, gpus, device, compute_type):
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: gpus)
    assert asr.pick_device("auto") == device
    assert asr.pick_compute_type("auto", device) == compute_type
    assert asr.pick_device("cpu") == "cpu"
    assert asr.pick_compute_type("int8_float32", device) == "int8_float32"


@pytest.mark.parametrize("field, value", [("device", "tpu"), ("beam_size", 0), ("cpu_threads", -1)])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AsrOptions(**{field: value})


def test_speculation_is_used_when_the_silence_holds_and_dropped_when_speech_resumes(transcriber):
    """Speculative ASR as the asr stage runs it: transcribe each settled segment early, and
    take the early text only for the utterance with the same samples."""
    from realtime.stages.asr import Speculation

    first, second = speech.say("please close the door"), speech.say("when you leave")
    rate = speech.SAMPLE_RATE
    pause = np.zeros(int(0.4 * rate), np.float32)  # the VAD pads 0.2 s, closes after 0.5 s
    gap = np.zeros(int(1.2 * rate), np.float32)
    audio = np.concatenate([gap, first, pause, second, gap, speech.say(TEXTS[2]), gap])
    segmenter, speculation = StreamingSegmenter(VadOptions()), Speculation()
    speculated, results = [], []
    for i in range(0, len(audio), 512):
        for utt in segmenter.feed(audio[i:i + 512], i / rate):
            early = speculation.take(utt.start, utt.end, utt.audio)
            results.append((utt, early))
        settled = segmenter.settled()
        if settled is not None and (not speculated or speculated[-1].end != settled.end):
            speculated.append(settled)
            speculation.keep(settled.start, settled.end, settled.audio, transcriber.transcribe(settled.audio), 0.1)
    assert len(results) == 2 and len(speculated) == 3  # the pause, and each utterance's end
    (joined, early_joined), (last, early_last) = results
    # The speculation made at the pause was replaced: the joined utterance used its own.
    assert early_joined is not None and early_last is not None
    assert early_joined[0] == transcriber.transcribe(joined.audio)  # the same text as without speculation
    assert early_last[0] == transcriber.transcribe(last.audio)
    assert "leave" in early_joined[0].lower()
    # Dropped: the text made at the pause is not handed out for the longer utterance.
    stale = Speculation()
    stale.keep(speculated[0].start, speculated[0].end, speculated[0].audio, "at the pause", 0.1)
    assert stale.take(joined.start, joined.end, joined.audio) is None
    # Taken once: a second take (same utterance) finds nothing.
    assert speculation.take(last.start, last.end, last.audio) is None
    # Same times but other samples (a different stream) are not a hit either.
    same_times = Speculation()
    same_times.keep(last.start, last.end, last.audio * 0.5, "other", 0.1)
    assert same_times.take(last.start, last.end, last.audio) is None


def test_a_short_window_decodes_as_faster_whisper_decodes_its_own(transcriber, utterances):
    """The windowed decode is faster-whisper's decode of one window: in Whisper's 30 s window
    (3000 frames) it gives faster-whisper's own text, token for token."""
    for utterance in utterances:
        whole = transcriber._transcribe_whole(utterance.audio)
        assert transcriber._decode_window(utterance.audio, 3000) == whole
        assert whole  # the comparison is between texts, not two empty strings


@pytest.mark.parametrize("window_s, utterance_s, expected", [
    (10.0, 2.0, 10.0),    # a short utterance: the shortest window
    (10.0, 7.2, 15.0),    # twice the utterance, in whole seconds
    (10.0, 20.0, 30.0),   # never past Whisper's own window
    (30.0, 2.0, 30.0),    # window_s = 30: Whisper's window, always
])
def test_the_window_is_twice_the_utterance_at_least(window_s, utterance_s, expected):
    assert asr.window_seconds(window_s, utterance_s) == expected


def test_a_looping_decode_is_redone_in_whispers_window(transcriber, utterances):
    """In a 5 s window tiny.en says this 2 s utterance's sentence over and over (it does up to
    9 s); the loop is caught by Whisper's compression-ratio test and the utterance redone in the
    full window, so the text is faster-whisper's own."""
    short = Transcriber(AsrOptions(model="tiny.en", device="cpu", cpu_threads=2, window_s=5.0))
    audio = utterances[1].audio
    assert asr.window_seconds(5.0, audio.size / speech.SAMPLE_RATE) == 5.0
    assert short._decode_window(audio, 500) is None
    redone = short.loops_redone
    assert short.transcribe(audio) == transcriber._transcribe_whole(audio)
    assert short.loops_redone == redone + 1
    # The default window reads it once.
    assert transcriber._decode_window(audio, 1000) == transcriber._transcribe_whole(audio)


@pytest.mark.parametrize("window_s", [0.5, 31.0])
def test_a_window_outside_whispers_range_is_refused(window_s):
    with pytest.raises(ValueError, match="window_s"):
        AsrOptions(window_s=window_s)
