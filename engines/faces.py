"""Face detection, tracking and speaker evidence, shared by the trainer and the runtime.

OpenCV's Haar cascade finds every face of a sampled frame (it ships inside
opencv-python(-headless) 4.x, needs no download and runs in a few milliseconds
on a downscaled frame).  `FaceTracker` gives each face a stable id for the
session: a detection continues the track whose last box is nearest (within
`track_distance` face widths), and a track unseen for `track_ttl_s` seconds of
media time is forgotten, so a face that is occluded or leaves the frame for a
moment comes back with its id.  For each face it also measures how much its
mouth moved since the previous sampled frame; `speaking_face` compares that
evidence across the faces of an utterance's span to name who spoke it.

The trainer (engines.features.decode) and the face stage run the same tracker
on the same frames, so training sees the crops the pipeline picks.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engines.preprocess import Preprocessing, face_crop


@dataclass
class FaceOptions:
    sample_fps: float = 5.0  # video frames looked at per second; expressions change slower than this
    detect_width: int = 320  # frames are downscaled to this width for detection
    min_face: int = 40  # smallest face side in pixels at detect_width
    scale_factor: float = 1.1  # Haar image pyramid step
    min_neighbors: int = 4  # Haar detections that must agree
    track_ttl_s: float = 3.0  # seconds of media time a face may go unseen (occluded, out of frame) and keep its id
    track_distance: float = 0.75  # a detection continues a track when its centre lies within this many
    # face widths of the track's last box centre
    search_every: int = 5  # the whole frame is searched for faces every this many sampled frames (once a
    # second at 5 fps); in the frames between, each face seen in the frame before is looked for near its
    # last box only (the box grown by half its width on every side): followed by its look once confirmed,
    # else by the detector (faces 0.7-1.4x its size), a fraction of a whole search's cost; so a face that
    # comes into view is found within this many frames; 1: always whole
    confirm_frames: int = 2  # sightings before a face gets an id, so a one-frame false detection never does
    speaker_margin: float = 1.5  # the speaker's mean mouth motion over an utterance must be at least this many
    # times any other face's; otherwise the utterance has no speaker (null)
    speaker_min_motion: float = 0.5  # mean mouth motion over an utterance (grey levels per pixel between
    # sampled frames, above the face's quiet level) below which no face counts as speaking

    def __post_init__(self):
        if self.sample_fps <= 0:
            raise ValueError("sample_fps must be > 0")
        if self.detect_width < 64:
            raise ValueError("detect_width must be >= 64")
        if self.scale_factor <= 1.0:
            raise ValueError("scale_factor must be > 1")
        if self.min_face < 1:
            raise ValueError("min_face must be >= 1")
        if self.min_neighbors < 0:
            raise ValueError("min_neighbors must be >= 0")
        if self.track_ttl_s < 0:
            raise ValueError("track_ttl_s must be >= 0")
        if self.track_distance <= 0:
            raise ValueError("track_distance must be > 0")
        if self.search_every < 1:
            raise ValueError("search_every must be >= 1")
        if self.confirm_frames < 1:
            raise ValueError("confirm_frames must be >= 1")
        if self.speaker_margin < 1.0:
            raise ValueError("speaker_margin must be >= 1")
        if self.speaker_min_motion < 0:
            raise ValueError("speaker_min_motion must be >= 0")


Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels


@dataclass
class SeenFace:
    """One face in one sampled frame."""

    id: int | None  # the track's stable id; None until it has been seen confirm_frames times
    box: Box
    crop: np.ndarray  # normalised grey crop (engines.preprocess.face_crop)
    motion: float | None  # mouth motion since the previous sampled frame, above the face's quiet level
    # (_Track.motion); None if the face was not seen in that frame


@dataclass
class FaceFrame:
    """Every face of one sampled frame, and which of them is the main face."""

    t: float  # media time
    faces: list[SeenFace]
    main: int | None = None  # index in faces of the main face (None: no face)

    @property
    def main_crop(self) -> np.ndarray | None:
        return None if self.main is None else self.faces[self.main].crop

    def crop_of(self, face_id: int | None) -> np.ndarray | None:
        """The crop of face `face_id`, or the main face's when face_id is None."""
        if face_id is None:
            return self.main_crop
        return next((f.crop for f in self.faces if f.id == face_id), None)


# Between whole searches a face is looked for within NEAR of its width around its last box: at
# 5 fps a face in a call moves and grows far less between frames.  There a confirmed face is
# followed by its look: the previous frame's patch in its box is matched over that region
# (normalised correlation), a tenth of a Haar search's time, and the box lands where the face
# best matches itself, without a detector's pixel or two of jitter; the box keeps its size until
# the next whole search.  A face not yet confirmed (FaceOptions.confirm_frames), or one whose best
# match is under FOLLOW_MATCH (it turned, or something else is there now: a cut in the video), is
# searched for in that region with the detector instead, at NEAR_SIZES times its last size.
NEAR, NEAR_SIZES = 0.5, (0.7, 1.4)
FOLLOW_MATCH = 0.6
MOUTH_ROWS, MOUTH_COLS = (0.62, 0.92), (0.25, 0.75)  # the mouth in face_crop's square (box + 10%)
MOUTH_SHIFT = 3  # pixels of re-detection jitter the motion measure looks past
QUIET_FRAMES = 50  # a face's recent motions its quiet level is taken from (10 s at 5 fps)
QUIET_PERCENTILE = 25  # the quiet level: this percentile of them


def mouth_motions(crops: Sequence[np.ndarray], previous: Sequence[np.ndarray]) -> np.ndarray:
    """Mouth motion of each face between its crop and its previous one, all faces at once.

    The box is found anew in every frame, so the crops are off by a pixel or two: a face's
    change is the smallest over shifts of up to MOUTH_SHIFT pixels, after a light blur
    and less each patch's mean (a change of light is no motion).  Every shift of every
    face is one array operation (the faces of a frame share the crop size), so the cost
    of a face is a few small blurs, not a Python loop over the shifts."""
    import cv2

    if not len(crops):
        return np.zeros(0)
    s = crops[0].shape[0]
    (y0, y1), (x0, x1) = ((int(a * s), int(b * s)) for a, b in (MOUTH_ROWS, MOUTH_COLS))
    r = MOUTH_SHIFT
    up, down, left, right = min(r, y0), min(r, s - y1), min(r, x0), min(r, s - x1)
    blur = lambda c: cv2.GaussianBlur(c, (0, 0), 1.0).astype(np.float32)
    a = np.stack([blur(c)[y0:y1, x0:x1] for c in crops])  # (n, h, w)
    b = np.stack([blur(c)[y0 - up:y1 + down, x0 - left:x1 + right] for c in previous])
    patch = a - a.mean(axis=(1, 2), keepdims=True)
    others = sliding_window_view(b, a.shape[1:], axis=(1, 2))  # (n, shifts y, shifts x, h, w)
    others = others - others.mean(axis=(-2, -1), keepdims=True)
    change = np.abs(patch[:, None, None] - others).mean(axis=(-2, -1))  # (n, shifts y, shifts x)
    return change.reshape(len(crops), -1).min(axis=1).astype(np.float64)


class _Track:
    def __init__(self, box: np.ndarray, t: float):
        self.box, self.last_t, self.hits = box, t, 0
        self.id: int | None = None
        self.crop: np.ndarray | None = None
        self.motions: deque[float] = deque(maxlen=QUIET_FRAMES)

    def motion(self, raw: float) -> float:
        """Mouth motion since the track's last crop (raw: mouth_motions), above the face's
        own quiet level.

        Even a still mouth shows some change (re-detection jitter, head turns, video
        noise), more for one face than another; taking off each face's quiet level (a low
        percentile of its recent motions) leaves what its mouth did, comparable across faces."""
        self.motions.append(raw)
        return max(0.0, raw - float(np.percentile(self.motions, QUIET_PERCENTILE)))


class FaceTracker:
    """Finds every face of each sampled frame (given in time order) and tracks it."""

    def __init__(self, options: FaceOptions, preprocessing: Preprocessing):
        import cv2
        import cv2.data  # cv2 imports it too; named here for its stubs, which leave it out

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(
                f"OpenCV Haar cascade not found at {path}: install opencv-python-headless<5 "
                "(OpenCV 5 ships no cascades)"
            )
        self.options = options
        self.preprocessing = preprocessing
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._previous_t: float | None = None  # time of the previous frame: motion is between neighbours
        self._last_centre: tuple[float, float] | None = None
        self._frames = 0  # frames given so far (whole searches are every search_every of them)
        self._previous_grey: np.ndarray | None = None  # the frame before, where faces are followed from

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray:
        """(n, 4) boxes (x, y, w, h) in frame pixels of every face found in the whole frame."""
        h, w = frame_bgr.shape[:2]
        return self._search(frame_bgr, (0, 0, w, h), self.options.min_face, None)

    def _search(self, frame_bgr: np.ndarray, region: Box, min_side: float, max_side: float | None) -> np.ndarray:
        """Faces in `region` of the frame (x, y, w, h), sides in detect_width pixels; frame boxes."""
        import cv2

        x, y, w, h = region
        scale = min(1.0, self.options.detect_width / frame_bgr.shape[1])  # the whole frame's, for any region
        part = frame_bgr[y:y + h, x:x + w]
        small = cv2.resize(part, None, fx=scale, fy=scale) if scale < 1 else part
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small)
        side = int(round(min_side))
        boxes = self._cascade.detectMultiScale(
            grey,
            scaleFactor=self.options.scale_factor,
            minNeighbors=self.options.min_neighbors,
            minSize=(side, side),
            maxSize=(0, 0) if max_side is None else (int(round(max_side)),) * 2,  # (0, 0): OpenCV's default, no bound
        )
        return np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale) + [x, y, 0, 0]

    def _find(self, frame_bgr: np.ndarray, grey: np.ndarray) -> np.ndarray:
        """The faces of this frame: a whole search every search_every frames, else each face
        seen in the frame before followed near its last box (FaceOptions.search_every)."""
        import cv2

        self._frames += 1
        if (self._frames - 1) % self.options.search_every == 0 or self._previous_grey is None:
            return self.detect(frame_bgr)
        fh, fw = grey.shape[:2]
        scale = min(1.0, self.options.detect_width / fw)
        found: list[np.ndarray] = []
        for track in self._tracks:
            if track.last_t != self._previous_t:
                continue
            x, y, w, h = (int(v) for v in track.box)
            patch = self._previous_grey[max(0, y):y + h, max(0, x):x + w]
            x0, y0 = int(max(0, x - NEAR * w)), int(max(0, y - NEAR * h))
            x1, y1 = int(min(fw, x + (1 + NEAR) * w)), int(min(fh, y + (1 + NEAR) * h))
            box = None
            # Only a confirmed face is followed by its look: a patch always matches itself, so a
            # one-frame false detection followed so would be confirmed by the next frame.
            if track.id is not None and patch.shape == (h, w) and x1 - x0 >= w and y1 - y0 >= h:
                score = cv2.matchTemplate(grey[y0:y1, x0:x1], patch, cv2.TM_CCOEFF_NORMED)
                _, best, _, (dx, dy) = cv2.minMaxLoc(score)
                if best >= FOLLOW_MATCH:
                    box = np.array([x0 + dx, y0 + dy, w, h], np.float64)
            if box is None:
                boxes = self._search(frame_bgr, (x0, y0, x1 - x0, y1 - y0),
                                     max(self.options.min_face, NEAR_SIZES[0] * w * scale), NEAR_SIZES[1] * w * scale)
                if not len(boxes):
                    continue
                centre = track.box[:2] + track.box[2:] / 2  # the one nearest the face's last centre
                box = boxes[np.argmin(np.linalg.norm(boxes[:, :2] + boxes[:, 2:] / 2 - centre, axis=1))]
            if not any(np.abs(box - other).max() < 0.25 * w for other in found):  # two faces' regions
                found.append(box)
        return np.array(found).reshape(-1, 4)

    def update(self, frame_bgr: np.ndarray, t: float) -> FaceFrame:
        """The faces of the frame at media time t, each with its track's id.

        The per-face work is batched: the frame is turned grey once for every crop, and
        the mouth motion of all faces seen in the previous frame too is one call
        (mouth_motions)."""
        import cv2

        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
        boxes = self._find(frame_bgr, grey)
        self._previous_grey = grey
        self._tracks = [tr for tr in self._tracks if t - tr.last_t <= self.options.track_ttl_s]
        tracks: list[_Track] = []
        for box, track in zip(boxes, self._associate(boxes)):
            if track is None:
                track = _Track(box, t)
                self._tracks.append(track)
            tracks.append(track)
        int_boxes: list[Box] = [(int(x), int(y), int(w), int(h)) for x, y, w, h in boxes]
        crops = [face_crop(grey, b, self.preprocessing) for b in int_boxes]
        moving: list[int] = []  # faces seen in the previous frame too, and their crops there
        previous_crops: list[np.ndarray] = []
        for i, tr in enumerate(tracks):
            if tr.crop is not None and tr.last_t == self._previous_t:
                moving.append(i)
                previous_crops.append(tr.crop)
        raw = mouth_motions([crops[i] for i in moving], previous_crops)
        motions: list[float | None] = [None] * len(boxes)
        for i, m in zip(moving, raw):
            motions[i] = tracks[i].motion(float(m))
        faces = []
        for box, int_box, track, crop, motion in zip(boxes, int_boxes, tracks, crops, motions):
            track.box, track.last_t, track.crop, track.hits = box, t, crop, track.hits + 1
            if track.id is None and track.hits >= self.options.confirm_frames:
                track.id, self._next_id = self._next_id, self._next_id + 1
            faces.append(SeenFace(track.id, int_box, crop, motion))
        self._previous_t = t
        return FaceFrame(t, faces, self._main_face(boxes))

    def _associate(self, boxes: np.ndarray) -> list[_Track | None]:
        """The track each box continues (None: a new face).  Greedy, nearest pair first:
        faces in a call rarely cross, so this needs no global assignment."""
        out: list[_Track | None] = [None] * len(boxes)
        if not len(boxes) or not self._tracks:
            return out
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        pairs = []
        for j, track in enumerate(self._tracks):
            centre = track.box[:2] + track.box[2:] / 2
            distance = np.linalg.norm(centres - centre, axis=1) / track.box[2]
            pairs += [(d, i, j) for i, d in enumerate(distance) if d <= self.options.track_distance]
        taken: set[int] = set()
        for _, i, j in sorted(pairs):
            if out[i] is None and j not in taken:
                out[i] = self._tracks[j]
                taken.add(j)
        return out

    def _main_face(self, boxes: np.ndarray) -> int | None:
        # The face nearest the last main one, else the largest, so the main crop does
        # not jump between people from frame to frame.
        if not len(boxes):
            return None
        if self._last_centre is not None and len(boxes) > 1:
            centres = boxes[:, :2] + boxes[:, 2:] / 2
            best = int(np.argmin(np.linalg.norm(centres - self._last_centre, axis=1)))
        else:
            best = int(np.argmax(boxes[:, 2] * boxes[:, 3]))
        x, y, w, h = boxes[best]
        self._last_centre = (x + w / 2, y + h / 2)
        return best


def frames_between(frames: Sequence[FaceFrame], start: float, end: float) -> list[FaceFrame]:
    """The sampled frames within [start, end], both ends in (the fusion stage cuts spans so too)."""
    return [f for f in frames if start <= f.t <= end]


def speaking_face(frames: Sequence[FaceFrame], start: float, end: float, options: FaceOptions) -> int | None:
    """Id of the face that spoke during [start, end] (a VAD span), or None when it cannot be told.

    The evidence is mouth motion during the voice activity: the speaker's mouth moves,
    a listener's stays still.  Each face's mean motion over the span is compared; the
    highest wins only when it reaches speaker_min_motion and is speaker_margin times
    the runner-up's.  A face seen in under half the span's frames is left out (its
    mean would rest on too little), so is a face without an id yet."""
    span = frames_between(frames, start, end)
    motions: dict[int, list[float]] = {}
    for frame in span:
        for face in frame.faces:
            if face.id is not None and face.motion is not None:
                motions.setdefault(face.id, []).append(face.motion)
    scores = sorted(((float(np.mean(m)), face_id) for face_id, m in motions.items() if len(m) >= len(span) / 2),
                    reverse=True)
    if not scores or scores[0][0] < options.speaker_min_motion:
        return None
    if len(scores) > 1 and scores[0][0] < options.speaker_margin * scores[1][0]:
        return None
    return scores[0][1]


def face_crops(frames: Sequence[FaceFrame], start: float, end: float,
               face_id: int | None = None) -> list[tuple[float, np.ndarray | None]]:
    """(media time, crop or None) of face `face_id` (the main face when None) in [start, end]."""
    return [(f.t, f.crop_of(face_id)) for f in frames_between(frames, start, end)]
