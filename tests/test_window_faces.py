"""The window updates' per-face video predictions, in process with the real engine (the
sockets around the fusion stage are exercised in test_end_to_end and test_faces)."""
from __future__ import annotations

import numpy as np

from tests.streams import CollectingPublisher


def _windows(bundle, faces_per_frame: int, seconds: float = 3.0):
    """Fusion fed `seconds` of audio and 5 fps frames holding `faces_per_frame` faces (ids 1, 2, ...;
    face 1 the main face throughout); its window messages, the engine and the frames' crops."""
    import engines
    from realtime.stages.fusion import Fusion, FusionOptions

    engine, out = engines.load(bundle), CollectingPublisher()
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
        state.on_message(header, crops)
    for k in range(int(seconds / 0.1)):
        state.on_message({"type": "audio", "t": k * 0.1}, (rng.standard_normal(1600) * 0.05).astype(np.float32))
    for stream in ("video", "transcripts", "audio"):
        state.on_message({"type": "eos", "stream": stream}, None)
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


def test_window_updates_off_keep_every_crop_an_utterance_needs(bundle):
    """[fusion] window_rate = 0: no window update, and an utterance whose transcript comes after
    its frames and audio (as the ASR's always does) still reads every crop of its span."""
    import engines
    from realtime.stages.fusion import Fusion, FusionOptions

    engine, out = engines.load(bundle), CollectingPublisher()
    state = Fusion(engine, FusionOptions(window_rate=0), out)
    rng = np.random.default_rng(5)
    size = engine.pre.face_size
    frames = []
    for k in range(20):  # 4 s at 5 fps, each frame followed by its 200 ms of audio
        t = k / 5
        crops = rng.integers(0, 255, (1, size, size), dtype=np.uint8)
        frames.append((t, crops))
        state.on_message({"type": "face", "t": t, "main": 0, "frame": [320, 240],
                          "faces": [{"id": 1, "box": [10, 20, 60, 60], "motion": 0.0}]}, crops)
        state.on_message({"type": "audio", "t": t}, (rng.standard_normal(3200) * 0.05).astype(np.float32))
    audio = state.audio.span(0.5, 2.5)
    state.on_message({"type": "transcript", "start": 0.5, "end": 2.5, "text": "so it goes", "asr_s": 0.1}, audio)
    for stream in ("video", "transcripts", "audio"):
        state.on_message({"type": "eos", "stream": stream}, None)
    assert state.finished
    assert [b["type"] for b in out.bodies] == ["transcript", "utterance"]  # no window update
    utterance = out.bodies[1]
    assert "video" in utterance["modalities"]
    assert _close(utterance["peers"]["video"], _alone(engine, frames, 0.5, 2.5, 0))
