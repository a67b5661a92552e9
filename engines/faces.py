"""Face detection shared by the trainer (cropping training clips) and the runtime.

OpenCV's Haar cascade: it ships inside opencv-python(-headless) 4.x, needs no
download and runs in a few milliseconds on a downscaled frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.preprocess import Preprocessing, face_crop


@dataclass
class FaceOptions:
    sample_fps: float = 5.0  # video frames looked at per second; expressions change slower than this
    detect_width: int = 320  # frames are downscaled to this width for detection
    min_face: int = 40  # smallest face side in pixels at detect_width
    scale_factor: float = 1.1  # Haar image pyramid step
    min_neighbors: int = 4  # Haar detections that must agree

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


class FaceCropper:
    """Finds the main face of a frame and returns its normalised grey crop."""

    def __init__(self, options: FaceOptions, preprocessing: Preprocessing):
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(
                f"OpenCV Haar cascade not found at {path}: install opencv-python-headless<5 "
                "(OpenCV 5 ships no cascades)"
            )
        self.options = options
        self.preprocessing = preprocessing
        self._last_centre: tuple[float, float] | None = None

    def detect(self, frame_bgr: np.ndarray) -> tuple[int, int, int, int] | None:
        """Box (x, y, w, h) in frame pixels of the main face, or None."""
        import cv2

        scale = min(1.0, self.options.detect_width / frame_bgr.shape[1])
        small = cv2.resize(frame_bgr, None, fx=scale, fy=scale) if scale < 1 else frame_bgr
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        boxes = self._cascade.detectMultiScale(
            grey,
            scaleFactor=self.options.scale_factor,
            minNeighbors=self.options.min_neighbors,
            minSize=(self.options.min_face, self.options.min_face),
        )
        if len(boxes) == 0:
            return None
        box = self._main_face(np.asarray(boxes, dtype=np.float64))
        return tuple(int(round(v / scale)) for v in box)

    def _main_face(self, boxes: np.ndarray) -> np.ndarray:
        # Track: the face nearest the last one, else the largest, so the crop
        # does not jump between people from frame to frame.
        if self._last_centre is not None and len(boxes) > 1:
            centres = boxes[:, :2] + boxes[:, 2:] / 2
            best = boxes[int(np.argmin(np.linalg.norm(centres - self._last_centre, axis=1)))]
        else:
            best = boxes[int(np.argmax(boxes[:, 2] * boxes[:, 3]))]
        self._last_centre = (best[0] + best[2] / 2, best[1] + best[3] / 2)
        return best

    def crop(self, frame_bgr: np.ndarray) -> np.ndarray | None:
        box = self.detect(frame_bgr)
        return None if box is None else face_crop(frame_bgr, box, self.preprocessing)
