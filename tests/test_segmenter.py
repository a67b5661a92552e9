"""The streaming VAD segmenter on synthetic speech (espeak-ng)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import speech
from realtime.stages.segmenter import FRAME, SileroVad, StreamingSegmenter, VadOptions

pytestmark = pytest.mark.skipif(not speech.tools_available(), reason="needs espeak-ng and sox")

SR = speech.SAMPLE_RATE
TEXTS = ["i cannot believe you did that",
         "please close the door when you leave",
         "this is the worst day of my life"]
T0 = 10.0  # media time of the first sample: utterance times must be offset by it


@pytest.fixture(scope="module")
def talk():
    return speech.session(TEXTS, gap_s=1.2)


def run(audio: np.ndarray, chunk: int, options: VadOptions | None = None, t0: float = T0):
    """Feed audio in fixed-size chunks with correct t0s, then flush."""
    segmenter = StreamingSegmenter(options or VadOptions())
    utterances = []
    for i in range(0, len(audio), chunk):
        utterances += segmenter.feed(audio[i:i + chunk], t0 + i / SR)
    return utterances + segmenter.flush()


def test_finds_each_utterance_where_it_was_spoken(talk):
    audio, spans = talk
    utterances = run(audio, chunk=4000)
    assert len(utterances) == len(spans)
    for utterance, (start, end) in zip(utterances, spans):
        assert utterance.start - T0 == pytest.approx(start, abs=0.3)
        assert utterance.end - T0 == pytest.approx(end, abs=0.3)
        # The audio is exactly the stream between start and end.
        first = round((utterance.start - T0) * SR)
        assert len(utterance.audio) == round((utterance.end - utterance.start) * SR)
        assert np.array_equal(utterance.audio, audio[first:first + len(utterance.audio)])
        assert utterance.audio.dtype == np.float32


def test_chunk_size_does_not_change_the_result(talk):
    audio, _ = talk
    reference = run(audio, chunk=len(audio))
    for chunk in (160, 333, 512, 4000):
        utterances = run(audio, chunk)
        assert [(u.start, u.end) for u in utterances] == [(u.start, u.end) for u in reference], chunk
        assert all(np.array_equal(u.audio, r.audio) for u, r in zip(utterances, reference))


def test_open_utterance_is_the_start_of_the_one_that_closes(talk):
    """What partial transcripts are made of: the audio of the utterance so far."""
    audio, _ = talk
    segmenter = StreamingSegmenter(VadOptions())
    chunk, seen, closed = 1600, [], []
    for i in range(0, len(audio), chunk):
        closed += segmenter.feed(audio[i:i + chunk], T0 + i / SR)
        current = segmenter.open_utterance()
        if current is not None:
            seen.append(current)
    closed += segmenter.flush()
    assert segmenter.open_utterance() is None
    assert len(seen) > 3 * len(closed)  # every utterance was open over several chunks
    for partial in seen:
        final = next(u for u in closed if u.start == partial.start)
        assert len(partial.audio) == round((partial.end - partial.start) * SR)
        n = min(len(partial.audio), len(final.audio))
        assert np.array_equal(partial.audio[:n], final.audio[:n])


def test_streaming_vad_matches_faster_whisper_batch(talk):
    from faster_whisper.vad import get_vad_model

    audio, _ = talk
    audio = np.pad(audio, (0, -len(audio) % FRAME))
    vad = SileroVad()
    streamed = np.array([vad(frame) for frame in audio.reshape(-1, FRAME)])
    batch = get_vad_model()(audio).reshape(-1)
    np.testing.assert_allclose(streamed, batch, atol=1e-5)


def test_memory_stays_bounded_in_silence():
    options = VadOptions(speech_pad_ms=200)
    segmenter = StreamingSegmenter(options)
    noise = np.random.default_rng(0).normal(0, 1e-3, 60 * SR).astype(np.float32)
    chunk = 1600
    for i in range(0, len(noise), chunk):
        assert segmenter.feed(noise[i:i + chunk], i / SR) == []
        assert segmenter.buffered_samples <= 0.2 * SR + FRAME + chunk


def test_long_speech_is_cut_into_bounded_pieces():
    text = ("the quick brown fox jumps over the lazy dog and then it runs all the way "
            "back home to tell everybody what happened in the forest today")
    audio, [(start, end)] = speech.session([text], gap_s=1.0)
    assert end - start > 5.0  # long enough for at least two cuts at 2.5 s
    options = VadOptions(max_utterance_s=2.5)
    segmenter = StreamingSegmenter(options)
    pieces, most_kept = [], 0
    for i in range(0, len(audio), 800):
        pieces += segmenter.feed(audio[i:i + 800], i / SR)
        most_kept = max(most_kept, segmenter.buffered_samples)
    pieces += segmenter.flush()
    assert len(pieces) >= 3
    assert all(p.end - p.start <= options.max_utterance_s + FRAME / SR for p in pieces)
    # Pieces follow each other without overlap and together cover the speech.
    assert all(b.start >= a.end for a, b in zip(pieces, pieces[1:]))
    assert pieces[0].start <= start + 0.1 and pieces[-1].end >= end - 0.1
    assert most_kept <= (options.max_utterance_s + 0.2) * SR + 800 + FRAME


class AlwaysSpeech:
    """A stand-in VAD that hears speech everywhere, to drive the state machine fast."""

    def __call__(self, frame):
        return 1.0

    def reset(self):
        pass


def test_flush_at_any_sample_gives_valid_pieces():
    # The stream may end anywhere, including inside the zero-padded last frame
    # of an utterance that is being force-cut.
    options = VadOptions(max_utterance_s=1.0, speech_pad_ms=100, min_speech_ms=0)
    segmenter = StreamingSegmenter(options)
    segmenter._vad = AlwaysSpeech()
    audio = np.zeros(3 * SR, np.float32)
    for stop in range(SR // 2, len(audio), 31):
        pieces = segmenter.feed(audio[:stop], 0.0) + segmenter.flush()
        assert pieces[0].start == 0.0 and pieces[-1].end == stop / SR
        assert all(b.start == a.end for a, b in zip(pieces, pieces[1:]))  # contiguous
        assert all(0 < p.end - p.start <= options.max_utterance_s for p in pieces)


def test_speech_shorter_than_min_speech_is_dropped():
    audio, _ = speech.session(["yes"], gap_s=1.0)
    assert len(run(audio, 512, VadOptions(min_speech_ms=100))) == 1
    assert run(audio, 512, VadOptions(min_speech_ms=1500)) == []


def test_flush_closes_open_utterance_and_resets(talk):
    audio, spans = talk
    cut = round((spans[1][0] + 0.8) * SR)  # stream ends in the middle of utterance 2
    segmenter = StreamingSegmenter(VadOptions())
    first = segmenter.feed(audio[:cut], 0.0)
    assert len(first) == 1
    [last] = segmenter.flush()
    assert last.end == pytest.approx(cut / SR)
    assert last.start == pytest.approx(spans[1][0], abs=0.3)
    # After flush the segmenter is fresh: a new stream with a new clock.
    again = segmenter.feed(audio, 100.0) + segmenter.flush()
    assert [round(u.start - 100.0, 3) for u in again] == [round(u.start - T0, 3) for u in run(audio, 4000)]


def test_warns_once_when_t0_is_not_contiguous(talk, caplog):
    audio, _ = talk
    segmenter = StreamingSegmenter(VadOptions())
    with caplog.at_level(logging.WARNING, logger="realtime.stages.segmenter"):
        segmenter.feed(audio[:8000], 0.0)
        segmenter.feed(audio[8000:16000], 5.0)  # should have been 0.5
        segmenter.feed(audio[16000:24000], 9.0)
    assert len([r for r in caplog.records if "t0" in r.getMessage()]) == 1


def test_a_gap_between_utterances_is_heard_as_silence_and_one_inside_is_joined(talk):
    """Audio missing from the stream (a microphone reopened after its source process died,
    issue 25): between utterances the clock jumps with it; inside one, the utterance stays whole
    (the same count) and the clock jumps once it is over."""
    audio, spans = talk
    chunk, gap = 800, 0.7  # longer than the closing silence (500 ms): silence there would cut
    between = int((spans[0][1] + spans[1][0]) / 2 * SR) // chunk * chunk
    inside = int((spans[1][0] + spans[1][1]) / 2 * SR) // chunk * chunk
    for cut, later in ((between, slice(1, None)), (inside, slice(2, None))):
        segmenter = StreamingSegmenter(VadOptions())
        got = []
        for i in range(0, len(audio), chunk):
            got += segmenter.feed(audio[i:i + chunk], T0 + i / SR + (gap if i >= cut else 0.0))
        got += segmenter.flush()
        assert len(got) == len(spans), (cut, [(u.start, u.end) for u in got])
        # After the gap (inside an utterance: once that utterance is over), times follow the clock.
        for u, (start, end) in zip(got[later], spans[later]):
            assert u.start - T0 == pytest.approx(start + gap, abs=0.3)
        assert got[0].start - T0 == pytest.approx(spans[0][0], abs=0.3)


@pytest.mark.parametrize("field, value", [
    ("threshold", 0.0), ("threshold", 1.0), ("neg_threshold", 0.9), ("neg_threshold", 0.0),
    ("min_speech_ms", -1), ("min_silence_ms", -5), ("speech_pad_ms", -1), ("max_utterance_s", 0.3),
])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        VadOptions(**{field: value})


def test_other_sample_rates_are_refused():
    with pytest.raises(ValueError, match="sample_rate"):
        StreamingSegmenter(VadOptions(), sample_rate=8000)


def test_stereo_is_refused():
    with pytest.raises(ValueError, match="mono"):
        StreamingSegmenter(VadOptions()).feed(np.zeros((100, 2), np.float32), 0.0)


def _speculate(audio: np.ndarray, chunk: int, options: VadOptions | None = None):
    """Feed in chunks; returns (utterances, settled segments in the order first offered)."""
    segmenter = StreamingSegmenter(options or VadOptions())
    utterances, offered = [], []
    for i in range(0, len(audio), chunk):
        utterances += segmenter.feed(audio[i:i + chunk], T0 + i / SR)
        settled = segmenter.settled()
        if settled is not None and (not offered or (offered[-1].start, offered[-1].end) != (settled.start, settled.end)):
            offered.append(settled)
    return utterances + segmenter.flush(), offered


@pytest.mark.parametrize("asr_pad_ms", [None, 100])
def test_settled_is_the_utterance_that_closes_before_its_silence_ends(talk, asr_pad_ms):
    """What speculative ASR transcribes: the very samples the ASR reads of the utterance that
    closes (its padding after the speech cut to asr_pad_ms), offered min_silence_ms - asr_pad_ms
    before it closes (300 ms with the whole 200 ms padding, 400 ms with 100 of it)."""
    audio, spans = talk
    opts = VadOptions()
    segmenter = StreamingSegmenter(opts, asr_pad_ms=asr_pad_ms)
    pad = opts.speech_pad_ms if asr_pad_ms is None else asr_pad_ms
    offered_at, closed_at, offered, closed = [], [], [], []
    chunk = 160
    for i in range(0, len(audio), chunk):
        found = segmenter.feed(audio[i:i + chunk], T0 + i / SR)
        closed += found
        closed_at += [i + chunk] * len(found)
        settled = segmenter.settled()
        if settled is not None and (not offered or offered[-1].end != settled.end):
            offered.append(settled)
            offered_at.append(i + chunk)
    assert len(closed) == len(spans) == len(offered)
    for early, final in zip(offered, closed):
        assert (early.start, early.end) == (final.start, final.end)
        assert early.asr_samples == final.asr_samples == len(early.audio)
        assert np.array_equal(early.audio, final.audio[:final.asr_samples])
        # The ASR skips exactly the padding past asr_pad_ms; the utterance keeps all of it.
        assert len(final.audio) - final.asr_samples == (opts.speech_pad_ms - pad) * SR // 1000
    saved_ms = [(c - o) / SR * 1000 for o, c in zip(offered_at, closed_at)]
    expected = opts.min_silence_ms - pad
    assert all(expected - 2 * FRAME / SR * 1000 <= s <= expected + FRAME / SR * 1000 for s in saved_ms), saved_ms


def test_settled_is_not_the_utterance_when_speech_resumes():
    """A pause longer than the padding but shorter than min_silence_ms: a settled segment is
    offered at the pause, and the utterance that finally closes is a different, longer one."""
    first, second = speech.say("please close the door"), speech.say("when you leave")
    pause = np.zeros(int(0.4 * SR), np.float32)  # > speech_pad_ms 200, < min_silence_ms 500
    gap = np.zeros(int(1.2 * SR), np.float32)
    audio = np.concatenate([gap, first, pause, second, gap])
    utterances, offered = _speculate(audio, chunk=512)
    assert len(utterances) == 1  # the pause did not close it
    assert len(offered) == 2  # one at the pause, one at the end
    at_pause, at_end = offered
    assert at_pause.end < utterances[0].end
    assert (at_end.start, at_end.end) == (utterances[0].start, utterances[0].end)
    assert np.array_equal(at_end.audio, utterances[0].audio)


def test_asr_lead_is_the_audio_before_the_utterance_and_stops_at_the_previous_speech(talk):
    """[asr] lead_ms: the ASR also reads the audio just before an utterance's padded start, which
    is the stream's own samples there, up to lead_ms, never the previous utterance's speech; the
    utterances themselves (spans, audio, what the ASR reads after the start) do not change, and
    settled() offers the same lead as the utterance that closes."""
    audio, _ = talk
    plain = run(audio, chunk=333)
    lead_ms = 1000  # longer than the 1.2 s gaps leave before the padding (1.2 s less 0.2 s of padding
    # on each side): the leads of the later utterances must be cut at the previous speech
    segmenter = StreamingSegmenter(VadOptions(), asr_lead_ms=lead_ms)
    led, offered = [], []
    for i in range(0, len(audio), 333):
        led += segmenter.feed(audio[i:i + 333], T0 + i / SR)
        settled = segmenter.settled()
        if settled is not None and (not offered or offered[-1].end != settled.end):
            offered.append(settled)
    led += segmenter.flush()
    assert [(u.start, u.end, u.asr_samples) for u in led] == [(u.start, u.end, u.asr_samples) for u in plain]
    assert all(np.array_equal(u.audio, p.audio) for u, p in zip(led, plain))
    assert all(p.asr_lead.size == 0 for p in plain)  # no lead unless asked
    previous_speech_end = 0
    for u in led:
        first = round((u.start - T0) * SR)
        lead = u.asr_lead
        assert 0 < lead.size <= lead_ms * SR // 1000
        assert lead.dtype == np.float32 and np.array_equal(lead, audio[first - lead.size:first])
        assert first - lead.size >= previous_speech_end  # never the previous utterance's speech
        previous_speech_end = round((u.end - T0) * SR) - VadOptions().speech_pad_ms * SR // 1000
    assert led[0].asr_lead.size == lead_ms * SR // 1000  # nothing before the first utterance to stop it
    assert any(u.asr_lead.size < lead_ms * SR // 1000 for u in led[1:])
    for early, final in zip(offered, led):
        assert np.array_equal(early.asr_lead, final.asr_lead)


def test_asr_lead_must_not_be_negative():
    with pytest.raises(ValueError, match="asr_lead_ms must be >= 0"):
        StreamingSegmenter(VadOptions(), asr_lead_ms=-1)
