"""faster-whisper transcription of segmented synthetic speech (offline tiny.en)."""
from __future__ import annotations

import numpy as np
import pytest

import speech
from realtime import asr
from realtime.asr import AsrOptions, Transcriber
from realtime.segmenter import StreamingSegmenter, VadOptions

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
