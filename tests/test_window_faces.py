"""The window updates' per-face video predictions, in process with the real engine (the
sockets around the fusion stage are exercised in test_end_to_end and test_faces)."""
from __future__ import annotations

import numpy as np


class Collect:
    """The publisher's part the fusion state uses; each body gets `next_window`, what the
    checkpoint sent with it (Fusion.checkpoint) says comes next."""

    def __init__(self):
        self.bodies, self.seq = [], 0
        self.state = lambda: None

    def publish(self, body):
        self.seq += 1
        state = self.state()
        self.bodies.append(dict(body, next_window=state and state["next_window"]))


def _windows(bundle, faces_per_frame: int, seconds: float = 3.0, at_once: bool = False):
    """Fusion fed `seconds` of audio and 5 fps frames holding `faces_per_frame` faces (ids 1, 2, ...;
    face 1 the main face throughout); its window messages, the engine and the frames' crops.
    at_once: nothing is scored until every message is in (a replay that runs ahead)."""
    import engines
    from realtime.fusion import Fusion, FusionOptions

    engine, out = engines.load(bundle), Collect()
    state = Fusion(engine, FusionOptions(window_rate=4.0, window_s=2.0), out)
    rng = np.random.default_rng(3)
    size = engine.pre.face_size
    frames = []
    for k in range(int(seconds * 5)):
        t = k / 5
        crops = rng.integers(0, 255, (faces_per_frame, size, size), dtype=np.uint8)
        frames.append((t, crops))
        header = {"type": "face", "t": t, "main": 0, "frame": [320, 240],
                  "faces": [{"id": i + 1, "box": [10 + 100 * i, 20, 60, 60], "motion": 0.0}
                            for i in range(faces_per_frame)]}
        state.on_message(header, crops, score=not at_once)
    for k in range(int(seconds / 0.1)):
        state.on_message({"type": "audio", "t": k * 0.1}, (rng.standard_normal(1600) * 0.05).astype(np.float32),
                         score=not at_once)
    for stream in ("video", "audio", "audio_copy"):
        state.on_message({"type": "eos", "stream": stream}, None, score=not at_once)
    state.score_ready()
    assert state.finished
    return [b for b in out.bodies if b["type"] == "window"], engine, frames


def _alone(engine, frames, start, end, face: int) -> dict:
    """The video peer of face `face`'s crops in [start, end], scored on their own."""
    from engines.runtime import Window

    crops = [(t, c[face]) for t, c in frames if start <= t <= end]
    (pred,) = engine.infer([Window(start, end, crops=crops)])
    return pred.peers["video"]


def _close(a: dict, b: dict) -> bool:
    return all(abs(a[k] - b[k]) <= 1e-5 for k in a) and a.keys() == b.keys()


def test_the_only_face_in_view_gets_the_windows_video_prediction(bundle):
    """With one face, the window's video is that face's: its prediction is the window's video
    peer (not scored twice), and it equals scoring the face's crops alone."""
    windows, engine, frames = _windows(bundle, faces_per_frame=1)
    assert len(windows) >= 8
    for w in windows:
        (face,) = w["faces"]
        assert face["id"] == 1 and face["video"] == w["peers"]["video"]
        assert _close(face["video"], _alone(engine, frames, w["start"], w["end"], 0))


def test_each_of_two_faces_gets_its_own_video_prediction(bundle):
    windows, engine, frames = _windows(bundle, faces_per_frame=2)
    assert len(windows) >= 8
    for w in windows:
        first, second = w["faces"]
        assert (first["id"], second["id"]) == (1, 2)
        assert first["video"] == w["peers"]["video"]  # face 1 is the main face in every frame
        assert _close(second["video"], _alone(engine, frames, w["start"], w["end"], 1))
        assert not _close(second["video"], first["video"])


def test_windows_due_at_once_are_scored_in_batches_with_the_same_results(bundle, monkeypatch):
    """A replay that runs ahead has many windows due at once: they are scored WINDOW_BATCH to an
    engine call, and each is published as when scored alone (probabilities, peers, faces, and the
    checkpoint that says which window comes next)."""
    import engines.runtime
    from realtime import fusion

    calls = []
    predict = engines.runtime.Engine.predict

    def counted(self, feeds):
        calls.append(len(feeds["present"]))
        return predict(self, feeds)

    monkeypatch.setattr(engines.runtime.Engine, "predict", counted)
    one_by_one, _, _ = _windows(bundle, faces_per_frame=2)
    assert set(calls) == {2}  # each window with its second face's own
    calls.clear()
    batched, _, _ = _windows(bundle, faces_per_frame=2, at_once=True)
    assert len(batched) == len(one_by_one) > fusion.WINDOW_BATCH
    assert calls[0] == 2 * fusion.WINDOW_BATCH and len(calls) == -(-len(batched) // fusion.WINDOW_BATCH)
    strip = lambda w: {k: v for k, v in w.items() if k != "timing"}
    assert [strip(w) for w in batched] == [strip(w) for w in one_by_one]
