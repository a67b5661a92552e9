"""Every face tracked with a stable id, and the speaking face named by its mouth.

Unit tests drive engines.faces with real face photos (the synthetic corpus's assets)
through the real Haar detector; the replay test runs a `trainer synth --people 2`
session through the whole pipeline and checks who it says spoke each utterance.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engines.faces import FaceFrame, FaceOptions, FaceTracker, SeenFace, speaking_face
from engines.preprocess import Preprocessing
from tests.conftest import free_port
from tests.helpers import run_replay
from trainer.synth.face import ASSETS

SIZE = 100  # face photo side in the test frames, pixels


def _frame(positions: list[tuple[int, int]]) -> np.ndarray:
    """A 320x240 frame with face photo A at each (x, y) top-left corner given (B at the second)."""
    frame = np.full((240, 320, 3), 120, np.uint8)
    for (x, y), name in zip(positions, ("face_a.jpg", "face_b.jpg")):
        frame[y:y + SIZE, x:x + SIZE] = cv2.resize(cv2.imread(str(ASSETS / name)), (SIZE, SIZE))
    return frame


def test_between_whole_searches_faces_are_followed_and_a_newcomer_waits_for_the_next():
    near = FaceTracker(FaceOptions(search_every=3), Preprocessing())
    whole = FaceTracker(FaceOptions(search_every=1), Preprocessing())
    # A drifts right 4 px a frame; B comes into view at frame 1.
    frames = [_frame([(20, 70)])] + [_frame([(20 + 4 * k, 70), (200, 70)]) for k in range(1, 6)]
    seen = [near.update(frame, 0.2 * k) for k, frame in enumerate(frames)]
    everywhere = [whole.update(frame, 0.2 * k) for k, frame in enumerate(frames)]
    # Frames 1 and 2 search near A only: B is found by the whole search of frame 3.
    assert [len(f.faces) for f in seen] == [1, 1, 1, 2, 2, 2]
    assert [len(f.faces) for f in everywhere] == [1, 2, 2, 2, 2, 2]
    left = lambda frame: next(f for f in frame.faces if f.box[0] < 160)
    assert len({left(f).id for f in seen[1:]}) == 1 and left(seen[1]).id is not None  # one track, confirmed
    for a, b in zip(seen, everywhere):  # where it looked near A, it found A where a whole search does
        assert np.abs(np.subtract(left(a).box, left(b).box)).max() <= 0.1 * SIZE


def test_a_confirmed_face_is_followed_by_its_look_and_lost_when_it_is_gone(monkeypatch):
    """Between whole searches a confirmed face's box goes where its last patch matches best:
    exactly the face's own shift, with no detector call; when the face is gone, the detector
    looks near its last box, finds nothing, and the face is not reported."""
    tracker = FaceTracker(FaceOptions(search_every=20), Preprocessing())
    calls = []
    real = tracker._cascade

    class Counting:  # the real cascade, its calls counted
        def detectMultiScale(self, *args, **kwargs):
            calls.append(1)
            return real.detectMultiScale(*args, **kwargs)

    tracker._cascade = Counting()
    seen = [tracker.update(_frame([(20 + 4 * k, 70 + k)]), 0.2 * k) for k in range(7)]
    assert all(len(f.faces) == 1 for f in seen) and seen[1].faces[0].id is not None
    assert len(calls) == 2  # the whole search of frame 0, the near search of the unconfirmed face in frame 1
    boxes = np.array([f.faces[0].box for f in seen[1:]])
    assert (np.diff(boxes[:, 0]) == 4).all() and (np.diff(boxes[:, 1]) == 1).all()  # the face's own shift
    assert (boxes[:, 2:] == boxes[0, 2:]).all()  # its size kept until the next whole search
    gone = tracker.update(_frame([]), 0.2 * 7)
    assert gone.faces == [] and len(calls) == 3  # the look did not match: the detector looked, found nothing


def test_ids_survive_a_short_absence_and_are_forgotten_after_the_ttl():
    # The whole frame searched every frame, so a face is seen the frame it is back.
    tracker = FaceTracker(FaceOptions(track_ttl_s=2.0, search_every=1), Preprocessing())
    both, only_a = _frame([(20, 70), (200, 70)]), _frame([(20, 70)])
    ids = lambda f: sorted((face.box[0] < 160, face.id) for face in f.faces)  # (is left, id)
    first = tracker.update(both, 0.0)
    assert [i for _, i in ids(first)] == [None, None]  # not confirmed yet: a one-frame detection gets no id
    two = tracker.update(both, 0.2)
    assert len(two.faces) == 2 and {i for _, i in ids(two)} == {1, 2}
    left_id = next(f.id for f in two.faces if f.box[0] < 160)
    # B leaves for 1.6 s (< ttl) while A moves a little: both keep their ids.
    t = 0.2
    for k in range(8):
        t += 0.2
        frame = tracker.update(_frame([(20 + 2 * k, 70)]), t)
        assert [f.id for f in frame.faces] == [left_id]
    t += 0.2
    assert ids(tracker.update(_frame([(36, 70), (200, 70)]), t)) == ids(two)
    # B away for longer than the ttl comes back as a new face, with a new id once confirmed.
    t_gone = t
    while t - t_gone <= 2.2:
        t += 0.2
        tracker.update(only_a, t)
    tracker.update(_frame([(36, 70), (200, 70)]), t + 0.2)
    back = tracker.update(_frame([(36, 70), (200, 70)]), t + 0.4)
    assert sorted(f.id for f in back.faces) == [left_id, 3]
    # The main face stays the one followed so far, not the larger newcomer.
    assert back.faces[back.main].id == left_id


def _looped_mouth_motion(crop: np.ndarray, previous: np.ndarray) -> float:
    """The measure written out shift by shift (as it was before the faces were batched)."""
    from engines.faces import MOUTH_COLS, MOUTH_ROWS, MOUTH_SHIFT

    s = crop.shape[0]
    (y0, y1), (x0, x1) = ((int(a * s), int(b * s)) for a, b in (MOUTH_ROWS, MOUTH_COLS))
    a, b = (cv2.GaussianBlur(c, (0, 0), 1.0).astype(np.float32) for c in (crop, previous))
    patch = a[y0:y1, x0:x1] - a[y0:y1, x0:x1].mean()
    r, best = MOUTH_SHIFT, np.inf
    for dy in range(-min(r, y0), min(r, s - y1) + 1):
        for dx in range(-min(r, x0), min(r, s - x1) + 1):
            other = b[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            best = min(best, float(np.abs(patch - (other - other.mean())).mean()))
    return best


def test_batched_mouth_motion_is_each_faces_own_and_looks_past_a_shift():
    from engines.faces import mouth_motions

    face = cv2.resize(cv2.cvtColor(cv2.imread(str(ASSETS / "face_a.jpg")), cv2.COLOR_BGR2GRAY), (64, 64))
    open_mouth = face.copy()
    open_mouth[44:54, 24:40] = 20  # a dark open mouth
    shifted = np.roll(face, (2, -1), axis=(0, 1))  # re-detection jitter, no motion
    pairs = [(open_mouth, face), (shifted, face), (face, face)]
    batched = mouth_motions([a for a, _ in pairs], [b for _, b in pairs])
    assert batched == pytest.approx([_looped_mouth_motion(a, b) for a, b in pairs], abs=1e-4)
    assert batched[0] > 5 * max(batched[1], 0.5) and batched[2] == pytest.approx(0.0, abs=1e-6)
    assert mouth_motions([open_mouth], [face])[0] == pytest.approx(batched[0], abs=1e-6)  # alone as in a batch
    assert mouth_motions([], []).shape == (0,)


def _frames(motions: list[dict[int, float | None]]) -> list[FaceFrame]:
    crop = np.zeros((4, 4), np.uint8)
    return [FaceFrame(0.2 * k, [SeenFace(i, (0, 0, 4, 4), crop, m) for i, m in seen.items()], 0)
            for k, seen in enumerate(motions)]


def test_the_speaker_is_the_face_whose_mouth_clearly_moves_most():
    opts = FaceOptions(speaker_margin=1.5, speaker_min_motion=0.5)
    clear = _frames([{1: 0.2, 2: 2.0}, {1: 0.4, 2: 1.6}, {1: 0.3, 2: 2.4}])
    assert speaking_face(clear, 0.0, 1.0, opts) == 2
    assert speaking_face(clear, 0.5, 1.0, opts) is None  # no frame in the span: nobody to tell
    close = _frames([{1: 1.5, 2: 2.0}, {1: 1.4, 2: 1.8}])
    assert speaking_face(close, 0.0, 1.0, opts) is None  # 1.3x is no clear winner
    still = _frames([{1: 0.1, 2: 0.3}, {1: 0.2, 2: 0.4}])
    assert speaking_face(still, 0.0, 1.0, opts) is None  # nobody's mouth moved: the voice is off screen
    # Face 2 seen in one frame of four: too little to compare, so face 1 wins alone.
    rare = _frames([{1: 1.0}, {1: 1.2}, {1: 0.9, 2: 9.0}, {1: 1.1}])
    assert speaking_face(rare, 0.0, 1.0, opts) == 1
    assert speaking_face(_frames([{None: 5.0}, {None: 5.0}]), 0.0, 1.0, opts) is None  # unconfirmed faces


def test_replay_names_who_speaks_with_stable_face_ids(bundle, two_people_session, tmp_path):
    from realtime import protocol

    truth = [json.loads(line) for line in (two_people_session / "manifest.jsonl").read_text().splitlines()]
    out = tmp_path / "out.jsonl"
    result = run_replay(two_people_session / truth[0]["file"], bundle, out, f"tcp://127.0.0.1:{free_port()}",
                     "--all-messages")
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    for body in messages:
        protocol.validate(body)
    windows = [m for m in messages if m["type"] == "window"]
    utterances = [m for m in messages if m["type"] == "utterance"]
    assert len(utterances) == len(truth)

    # Two faces, the same two ids in every window once both are confirmed (after the first frames).
    seen = [sorted(f["id"] for f in w["faces"]) for w in windows]
    assert all(ids == seen[-1] for ids in seen[2:]) and len(seen[-1]) == 2, seen
    assert all(set(f["video"]) == set(json.loads((bundle / "manifest.json").read_text())["labels"])
               for w in windows for f in w["faces"])
    # The boxes' frame is the video's own size (what a reader scales the boxes by).
    import cv2

    video = cv2.VideoCapture(str(two_people_session / truth[0]["file"]))
    size = [int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))]
    video.release()
    assert all(w["frame"] == size for w in windows[1:]), (size, [w.get("frame") for w in windows])
    assert all(0 <= f["box"][0] and f["box"][0] + f["box"][2] <= size[0] for w in windows for f in w["faces"])
    # Each id stays on its own side of the frame: A sits left, B right.
    centres: dict[int, list[float]] = {}
    for w in windows:
        for f in w["faces"]:
            centres.setdefault(f["id"], []).append(f["box"][0] + f["box"][2] / 2)
    person = {i: "A" if max(c) < 160 else "B" for i, c in centres.items() if max(c) < 160 or min(c) > 160}
    assert sorted(person.values()) == ["A", "B"], centres

    named = [person.get(u["speaker"]) for u in utterances]
    want = [t["speaker"] for t in truth]
    accuracy = np.mean([got == w for got, w in zip(named, want)])
    print(f"speaker attribution: {accuracy:.3f} ({named} vs {want})")
    # Never the wrong face; at most one utterance left unnamed (null: "cannot be told").  Replays
    # of this session gave 8 of 8 and, on a loaded machine, 7 of 8 with one null, so the issue's
    # 90% over all utterances is not held reliably yet (see the README).
    assert not any(got is not None and got != w for got, w in zip(named, want)), (named, want)
    assert accuracy >= 7 / 8, (named, want)


def test_a_gallery_of_eight_real_faces_is_eight_tracks_each_with_its_motion():
    """The gallery view benchmarks/faces_scaling.py measures: every face found where it is,
    each its own id, and every face's mouth motion measured in the one batched call."""
    from benchmarks.face_media import grid, load_photos, matches

    photos = load_photos(None)  # the repository's two faces and matplotlib's sample photo
    tracker = FaceTracker(FaceOptions(), Preprocessing())
    frames = [tracker.update(grid(photos, 8, shift)[0], 0.2 * k) for k, shift in enumerate([(0, 0), (1, 1), (2, 0)])]
    truth = grid(photos, 8)[1]
    last = frames[-1]
    assert matches(np.array([f.box for f in last.faces], np.float64), truth) == 8
    assert sorted(f.id for f in last.faces) == list(range(1, 9))
    assert all(f.motion is not None and f.motion >= 0 for f in last.faces)
    assert all(f.motion is None for f in frames[0].faces)  # nothing to compare the first sighting with
