"""benchmarks/pipeline.py's MicrophoneTap: where in what it heard a played wav begins, in wall time."""
from __future__ import annotations

import numpy as np

from benchmarks.pipeline import SAMPLE_RATE, MicrophoneTap


def heard_tap(heard: np.ndarray, first_read_at: float, chunk: int) -> MicrophoneTap:
    """A tap as its reader thread leaves it, without a sound server: chunks and read times."""
    tap = object.__new__(MicrophoneTap)
    tap.chunks = [heard[i:i + chunk] for i in range(0, heard.size, chunk)]
    # Each read returns when its last sample has arrived, plus a few ms of the reader's own.
    tap.read_at = [first_read_at + (i + chunk) / SAMPLE_RATE + 0.003 for i in range(0, heard.size, chunk)]
    return tap


def test_the_wav_is_found_where_it_was_heard_and_dated_by_the_read_that_held_it():
    rng = np.random.default_rng(0)
    wav = np.zeros(6 * SAMPLE_RATE, np.float32)
    wav[SAMPLE_RATE // 2: 2 * SAMPLE_RATE] = rng.normal(0, 0.3, 3 * SAMPLE_RATE // 2)  # "speech" after a lead-in
    wav[3 * SAMPLE_RATE: 4 * SAMPLE_RATE] = rng.normal(0, 0.3, SAMPLE_RATE)
    delay = 1.2345  # the wav's sample 0 came 1.2345 s into the recording
    heard = rng.normal(0, 0.01, 10 * SAMPLE_RATE).astype(np.float32)  # room noise
    at = int(delay * SAMPLE_RATE)
    heard[at: at + wav.size] += wav[: heard.size - at]
    t0 = 1000.0
    tap = heard_tap(heard, t0, MicrophoneTap.CHUNK)
    arrived = tap.arrival(wav, after=t0 + 0.5)
    # Dated by the read that returned it: within one read (10 ms) and the reader's 3 ms after the truth.
    assert t0 + delay <= arrived <= t0 + delay + 0.010 + 0.003 + 1e-6
    # Found whatever the read size.
    assert abs(heard_tap(heard, t0, 1600).arrival(wav, after=t0) - (t0 + delay)) <= 0.1 + 0.003 + 1e-6


def test_a_recording_without_the_wav_is_an_error_not_a_time():
    import pytest

    tap = heard_tap(np.zeros(3 * SAMPLE_RATE, np.float32), 0.0, MicrophoneTap.CHUNK)
    with pytest.raises(RuntimeError, match="not found"):
        tap.arrival(np.ones(SAMPLE_RATE, np.float32), after=0.0)


def test_arrival_latencies_leave_out_the_virtual_devices_delay():
    from benchmarks.pipeline import live_latencies

    rows = [{"start": 1.0, "speech_end": 2.0}, {"start": 4.0, "speech_end": 5.5}]
    played, late = 100.0, 0.3  # the wav reached the microphone 0.3 s after paplay started
    shift = 0.5  # serve's media time of the wav's sample 0
    utterances = [{"type": "utterance", "start": r["start"] + shift - 0.2, "end": r["speech_end"] + shift + 0.2,
                   "text": "", "timing": {"asr_s": 0.4, "infer_s": 0.01,
                                          "emitted_at": played + late + r["speech_end"] + 0.7}} for r in rows]
    window = {"type": "window", "start": 1.0, "end": 3.0, "timing": {"infer_s": 0.01,
                                                                      "emitted_at": played + late + 3.0 - shift + 0.02}}
    run = {"played_at": played, "arrived_at": played + late, "messages": [*utterances, window]}
    got = live_latencies(run, rows)
    assert got["missed"] == 0
    assert np.allclose(got["latencies"], [1.0, 1.0], atol=1e-6)  # from paplay's start: the delay counts
    assert np.allclose(got["arrival_latencies"], [0.7, 0.7], atol=1e-6)  # from arrival: what the pipeline took
    assert np.allclose(got["arrival_window_delays"], [0.02], atol=0.011)  # the shift is searched in 10 ms steps


def test_paired_overhead_takes_each_replay_over_its_own_bare_run():
    """The machine drifts within a run: a replay is set against the bare faster-whisper run
    beside it, and the median taken over those pairs."""
    from benchmarks.pipeline import replay_metrics

    rows = [{"text": "hello there"}]
    utterance = {"type": "utterance", "text": "hello there", "timing": {"asr_s": 0.1, "infer_s": 0.01}}
    window = {"type": "window", "timing": {"infer_s": 0.005}}
    walls, bare_walls = [2.0, 3.0, 2.2], [1.0, 2.0, 1.0]  # the second pair ran on a slow machine
    replays = [{"wall_s": w, "messages": [utterance, window], "procs": {}} for w in walls]
    bares = [{"wall_s": b, "text": "hello there"} for b in bare_walls]
    got = replay_metrics("", rows, 10.0, replays, bares)
    assert got["overhead_ratio"] == round(2.2 / 1.0, 3)  # median over median mixes the moments
    assert got["overhead_ratio_paired"] == round(2.0, 3)  # 2.0, 1.5, 2.2
    assert got["wer"] == 0.0 and got["replay_deterministic"] == 1


def test_wer_by_phase_scores_the_recording_started_at_each_frame_phase():
    """The spread a single stream's WER is drawn from: real segmenter and ASR on real speech,
    the recording started at each phase of the VAD's frame."""
    import pytest

    from tests import speech

    if not speech.tools_available():
        pytest.skip("espeak-ng and sox are needed for test speech")
    from benchmarks.pipeline import wer_by_phase

    texts = ["the weather is lovely today", "please send me the report"]
    audio, _ = speech.session(texts, gap_s=1.0)
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), audio, np.zeros(SAMPLE_RATE, np.float32)])
    sets = ["asr.cpu_threads=1"]
    got = wer_by_phase(audio, [{"text": t} for t in texts], sets, phases=2)
    assert got["wer_phases"] == 2
    assert got["wer_phase_min"] <= got["wer_phase_median"] <= got["wer_phase_max"] <= 0.25
    wrong = wer_by_phase(audio, [{"text": "nothing like what was said at all"}], sets, phases=2)
    assert wrong["wer_phase_min"] >= 0.75  # it scores against the script it is given


def test_plain_replays_are_set_against_their_bare_runs_and_checked_against_the_full_ones():
    from benchmarks.pipeline import plain_metrics

    utterance = {"type": "utterance", "text": "hi", "seq": 3, "timing": {"asr_s": 0.1}}
    full = {"wall_s": 3.0, "messages": [{"type": "window", "seq": 2}, utterance], "procs": {}}
    plain = lambda wall, text: {"wall_s": wall, "procs": {"a": {"cpu_s": 1.0}, "b": {"cpu_s": 0.5}},
                                "messages": [{**utterance, "seq": 1, "text": text, "timing": {"asr_s": 0.2}}]}
    bares = [{"wall_s": 1.0}, {"wall_s": 2.0}, {"wall_s": 1.0}]
    got = plain_metrics("", [full], [plain(2.0, "hi"), plain(3.0, "hi"), plain(1.5, "hi")], bares)
    assert got["overhead_ratio_plain_paired"] == 1.5  # 2.0, 1.5, 1.5
    assert got["plain_replay_wall_s"] == 2.0 and got["plain_replay_cpu_s"] == 1.5
    assert got["plain_same_utterances"] == 1  # seq and timing aside
    assert plain_metrics("", [full], [plain(2.0, "ho")], bares)["plain_same_utterances"] == 0


def test_window_delays_come_from_the_clock_serve_prints_where_there_is_one():
    """The utterance messages' spans sit later than the speech (the VAD pads both sides but
    closes late), so the shift found from them is off; serve's printed clock is not."""
    from benchmarks.pipeline import live_latencies

    rows = [{"start": 1.0, "speech_end": 2.0}]
    played, late, clock = 100.0, 0.3, 99.5  # media time 0 was captured at 99.5: the wav's sample 0 at media 0.8
    # The message's span is late by 0.15 s at its end, as the VAD's close is.
    utterance = {"type": "utterance", "start": 1.8 - 0.2, "end": 2.8 + 0.35, "text": "",
                 "timing": {"asr_s": 0.4, "infer_s": 0.01, "emitted_at": played + late + 2.0 + 0.7}}
    window = {"type": "window", "start": 1.0, "end": 3.0,
              "timing": {"infer_s": 0.01, "emitted_at": clock + 3.0 + 0.05}}  # 50 ms after its end was captured
    run = {"played_at": played, "arrived_at": played + late, "clock": clock, "messages": [utterance, window]}
    got = live_latencies(run, rows)
    assert np.allclose(got["arrival_window_delays"], [0.05], atol=1e-6)
    assert np.allclose(got["window_delays"], [0.05 + late], atol=1e-6)  # from paplay's start: the device's delay too
    assert np.allclose(got["arrival_latencies"], [0.7], atol=1e-6)  # utterances: as before
    assert got["offset_error"] > 0.05  # the shift from the messages lies late
    without = live_latencies({k: v for k, v in run.items() if k != "clock"}, rows)
    assert without["arrival_window_delays"][0] > got["arrival_window_delays"][0] + 0.05
