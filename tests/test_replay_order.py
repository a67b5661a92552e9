"""Replay publishes in media-time order: the same messages, in the same order with the same
seq, whatever the moments the stages' results reach fusion (docs/PROTOCOL.md: Ordering).  In process
with the real engine for two arrival orders made on purpose, then two real replays of one
recorded session through real processes while the CPU is busy."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.streams import CollectingPublisher

# What may differ between two replays: the session id (new each run) and the timing.
strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "session")}


def _inputs(size: int):
    """One session as fusion's inputs, each with the media time at which a fast ASR would
    deliver it: 6 s of audio (0.1 s chunks), 5 fps frames of one face, and the ASR's stream
    (progress as the segmenter sends it, a partial, the final transcript of [1.0, 2.5])."""
    rng = np.random.default_rng(5)
    media = []
    for k in range(60):
        media.append((k / 10, {"type": "audio", "t": k / 10}, (rng.standard_normal(1600) * 0.05).astype(np.float32)))
    for k in range(30):
        face = {"type": "face", "t": k / 5, "main": 0, "frame": [320, 240],
                "faces": [{"id": 1, "box": [10, 20, 60, 60], "motion": float(k % 3)}]}
        media.append((k / 5, face, rng.integers(0, 255, (1, size, size), dtype=np.uint8)))
    speech = (rng.standard_normal(24000) * 0.05).astype(np.float32)
    asr = [(t / 10, {"type": "progress", "t": t / 10}, None) for t in range(1, 11)]  # silence until 1.0 s
    asr.append((2.0, {"type": "partial_transcript", "start": 1.0, "end": 2.0, "text": "hello", "asr_s": 0.1}, None))
    asr.append((3.0, {"type": "transcript", "start": 1.0, "end": 2.5, "text": "hello there", "asr_s": 0.2}, speech))
    asr += [(t / 10, {"type": "progress", "t": t / 10}, None) for t in range(30, 61)]  # silence after
    return sorted(media, key=lambda m: m[0]), asr


def _published(engine, ordered: bool, asr_late: bool) -> list[dict]:
    """What fusion publishes when the ASR's results arrive as it goes (asr_late False) or
    only after all the media (a slow ASR)."""
    from realtime.stages.fusion import Fusion, FusionOptions

    out = CollectingPublisher()
    state = Fusion(engine, FusionOptions(window_rate=4.0, window_s=2.0), out, ordered=ordered)
    media, asr = _inputs(engine.pre.face_size)
    arrivals = media + asr if asr_late else sorted(media + asr, key=lambda m: m[0])  # stable: media first
    for _, header, array in arrivals:
        state.on_message(header, array)
    for stream in ("video", "audio", "transcripts"):
        state.on_message({"type": "eos", "stream": stream}, None)
    assert state.finished
    return [{k: v for k, v in b.items() if k != "timing"} for b in out.bodies]


def test_ordered_fusion_publishes_the_same_whenever_the_transcripts_arrive(bundle):
    import engines

    engine = engines.load(bundle)
    fast, slow = (_published(engine, ordered=True, asr_late=late) for late in (False, True))
    assert fast == slow
    kinds = [(b["type"], b.get("final"), b["end"]) for b in fast]
    # Merged by media time, an ASR result before a window that ends with it: the partial
    # between the windows ending at 1.75 and 2.0, the final transcript and its utterance
    # between those ending at 2.25 and 2.5, and windows every 0.25 s to the audio's end.
    i = kinds.index(("transcript", False, 2.0))
    assert kinds[i - 1] == ("window", None, 1.75) and kinds[i + 1] == ("window", None, 2.0)
    j = kinds.index(("transcript", True, 2.5))
    assert kinds[j - 1] == ("window", None, 2.25) and kinds[j + 1: j + 3] == [("utterance", None, 2.5),
                                                                              ("window", None, 2.5)]
    assert [e for t, _, e in kinds if t == "window"] == [k / 4 for k in range(1, 25)]
    # Live, each goes out as soon as it can: the same inputs come out in another order.
    assert _published(engine, ordered=False, asr_late=False) != _published(engine, ordered=False, asr_late=True)


@pytest.mark.parametrize("people", [1, 2])
def test_two_replays_give_the_same_messages_in_the_same_order_while_the_cpu_is_busy(
        bundle, held_out_session, two_people_session, people):
    """Also with two people in view (`trainer synth --people 2`), where who speaks (`speaker`)
    follows from the faces' motion as the frames' media times align with the speech."""
    from realtime.config import load_config
    from realtime.pipeline import replay
    from tests.conftest import free_port

    media = next((held_out_session if people == 1 else two_people_session).glob("*.mp4"))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # competes with the stages
    try:
        runs = []
        for _ in range(2):
            config = load_config(None, [f"model.bundle={bundle}", f"stream.endpoint=tcp://127.0.0.1:{free_port()}"])
            got: list[dict] = []
            replay(media, config, on_message=got.append)
            runs.append(got)
    finally:
        busy.kill()
        busy.wait()
    first, second = ([strip(m) for m in run] for run in runs)
    assert first == second
    types = [m["type"] for m in first]
    assert types[0] == "status" and types[-1] == "status"
    utterances = [i for i, t in enumerate(types) if t == "utterance"]
    assert utterances and "window" in types[utterances[0]:]  # windows and utterances interleave
    assert [m["seq"] for m in first] == list(range(len(first)))
    if people == 2:  # both people were named as speakers, the same in each run (compared above)
        speakers = {m.get("speaker") for m in first if m["type"] == "utterance"}
        assert len(speakers - {None}) == 2, speakers
