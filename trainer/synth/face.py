"""The video of a synthetic session: real face photos with drawn expressions, moving in the frame.

Every session look is checked with the Haar detector the runtime uses, so the
faces the corpus shows are faces the pipeline can find.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from engines.preprocess import SAMPLE_RATE
from trainer.synth.plan import PlannedLine, Speaker, average

FPS = 10
WIDTH, HEIGHT = 320, 240
FACE_WIDTH = 100  # typical face box width in the frame, pixels (webcam distance)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FACE_FILES = {"A": "face_a.jpg", "B": "face_b.jpg"}


@dataclass(frozen=True)
class Expression:
    """Drawn facial features, lengths in units of the face box width."""

    smile: float = 0.0  # mouth corners raised (+) or lowered (-)
    mouth_open: float = 0.012  # gap between the lips
    mouth_width: float = 0.34
    brow_tilt: float = 0.0  # inner brow ends raised (+, sad) or pulled down (-, angry)
    brow_raise: float = 0.0  # both brows up (+) or down (-)
    teeth: float = 0.0  # > 0 shows the upper teeth (a laughing or clenched mouth)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # BGR gain on the face


LABEL_EXPRESSIONS = {
    "neutral": Expression(),
    "happiness": Expression(smile=0.09, mouth_open=0.05, mouth_width=0.46, brow_raise=0.015,
                            teeth=1.0, tint=(0.98, 1.0, 1.04)),
    "sadness": Expression(smile=-0.08, mouth_open=0.012, mouth_width=0.32, brow_tilt=0.07,
                          brow_raise=-0.01, tint=(1.06, 1.0, 0.95)),
    "anger": Expression(smile=-0.035, mouth_open=0.03, mouth_width=0.38, brow_tilt=-0.08,
                        brow_raise=-0.03, teeth=1.0, tint=(0.94, 0.96, 1.1)),
    "surprise": Expression(smile=0.0, mouth_open=0.16, mouth_width=0.22, brow_raise=0.08),
}


def expression_for(labels: list[str], video_cue: bool) -> Expression:
    """Expression of the labels (a blend for a pair), neutral without the cue."""
    if not video_cue:
        return LABEL_EXPRESSIONS["neutral"]
    return average([LABEL_EXPRESSIONS[label] for label in labels])


class Face:
    """A real face photo with its own mouth and brows painted out, ready for drawing.

    Feature positions are fractions of the Haar face box found on the photo,
    the same box the runtime's detector will look for.
    """

    BROW_Y, MOUTH_Y = 0.29, 0.785  # fractions of the box height
    BROWS = ((0.22, 0.43), (0.78, 0.57))  # (outer end, inner end) x, fractions of the box width

    def __init__(self, path: Path):
        image = cv2.imread(str(path))
        if image is None:
            raise RuntimeError(f"face asset missing or unreadable: {path}")
        self.box = detect_face_box(image)
        if self.box is None:
            raise RuntimeError(f"no face found in asset {path}")
        self.skin = self._skin_colour(image)
        self.blank = self._paint_out_features(image)
        size = image.shape[0]
        # Soft elliptical edge so the square photo blends into the session background.
        yy, xx = np.mgrid[0:size, 0:size]
        r = np.hypot((xx - size / 2) / (size * 0.48), (yy - size / 2) / (size * 0.5))
        self.alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0).astype(np.float32)

    def _px(self, fx: float, fy: float) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + fx * w, y + fy * h

    def _skin_colour(self, image: np.ndarray) -> np.ndarray:
        # Median of both cheeks: lit like the mouth area, free of hair and brows.
        patches = []
        for fx in (0.3, 0.7):
            cx, cy = (int(v) for v in self._px(fx, 0.62))
            patches.append(image[cy - 4 : cy + 4, cx - 4 : cx + 4].reshape(-1, 3))
        return np.median(np.concatenate(patches), axis=0)

    def _paint_out_features(self, image: np.ndarray) -> np.ndarray:
        _, _, w, h = self.box
        mask = np.zeros(image.shape[:2], np.float32)
        mx, my = self._px(0.5, self.MOUTH_Y)
        cv2.ellipse(mask, (int(mx), int(my)), (int(0.27 * w), int(0.09 * h)), 0, 0, 360, 1.0, -1)
        for outer, inner in self.BROWS:
            bx, by = self._px((outer + inner) / 2, self.BROW_Y - 0.01)
            cv2.ellipse(mask, (int(bx), int(by)), (int(0.14 * w), int(0.045 * h)), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.02 * w)[..., None]
        # Keep the photo's skin texture a little so the patch does not look flat.
        skin = 0.8 * self.skin + 0.2 * cv2.GaussianBlur(image, (0, 0), 3).astype(np.float32)
        return (image * (1 - mask) + skin * mask).astype(np.uint8)

    def draw(self, expr: Expression, speaking_open: float = 0.0) -> np.ndarray:
        """The face with an expression; speaking_open (0..1) opens the mouth further."""
        image = self.blank.copy()
        x, y, w, h = self.box
        thick = max(2, int(round(0.035 * w)))
        brow_colour = tuple(int(c) for c in self.skin * 0.3)
        base = y + (self.BROW_Y - expr.brow_raise) * h
        for outer, inner in self.BROWS:
            ox, ix = x + outer * w, x + inner * w
            # A gentle arch; the tilt moves only the inner end (up: sad, down: angry).
            pts = [(ox, base + 0.01 * h), ((ox + ix) / 2, base - 0.02 * h), (ix, base - expr.brow_tilt * h)]
            cv2.polylines(image, [np.int32(pts)], False, brow_colour, thick, cv2.LINE_AA)
        self._draw_mouth(image, expr, speaking_open)
        return image

    def _draw_mouth(self, image: np.ndarray, expr: Expression, speaking_open: float) -> None:
        _, _, w, _ = self.box
        cx, cy = self._px(0.5, self.MOUTH_Y)
        half = expr.mouth_width * w / 2
        gap = (expr.mouth_open + 0.05 * speaking_open) * w / 2
        u = np.linspace(-1.0, 1.0, 21)
        centre = cy - expr.smile * w * u**2  # a parabola: corners up for a smile
        bulge = np.sqrt(1.0 - u**2)
        xs = cx + u * half
        upper = np.stack([xs, centre - gap * bulge], axis=1)
        lower = np.stack([xs, centre + gap * bulge], axis=1)
        inside = np.int32(np.concatenate([upper, lower[::-1]]) * 4)  # 2 fractional bits
        cv2.fillPoly(image, [inside], (35, 25, 45), cv2.LINE_AA, shift=2)
        if expr.teeth > 0 and gap > 2:
            teeth = np.concatenate([upper, (upper + lower)[::-1] / 2])
            cv2.fillPoly(image, [np.int32(teeth * 4)], (225, 230, 235), cv2.LINE_AA, shift=2)
        lip = tuple(int(c) for c in self.skin * np.array([0.55, 0.5, 0.75]))
        thick = max(2, int(round(0.03 * w)))
        for curve in (upper, lower):
            cv2.polylines(image, [np.int32(curve * 4)], False, lip, thick, cv2.LINE_AA, shift=2)


@lru_cache(maxsize=1)
def _cascade():
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV Haar cascade not found at {path}: install opencv-python-headless<5")
    return cascade


def detect_face_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Every Haar face (x, y, w, h), with the settings the runtime uses."""
    grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    boxes = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=4, minSize=(40, 40))
    return [tuple(int(v) for v in b) for b in boxes]


def detect_face_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest Haar face (x, y, w, h), with the settings the runtime uses."""
    boxes = detect_face_boxes(image)
    return max(boxes, key=lambda b: b[2] * b[3]) if boxes else None


@lru_cache(maxsize=None)
def load_face(speaker: str) -> Face:
    return Face(ASSETS / FACE_FILES[speaker])


class FrameRenderer:
    """Places a face in the 320x240 frame with smooth head motion."""

    PROBE_TIMES = (0.0, 2.5, 5.0, 7.5)  # seconds at which a new look is checked
    MAX_TRIES = 10

    def __init__(self, rng: np.random.Generator, speakers: dict[str, Speaker], people: int = 1):
        self.speakers = speakers
        self.people = people  # 1: only the last speaker is in view; 2: both, side by side
        # The Haar detector is fickle: a rare mix of background colour,
        # brightness and head pose hides a face on most frames of a session.
        # Such a session is useless for the video branch, so redraw the look
        # until both faces are found at every probe.
        for _ in range(self.MAX_TRIES):
            self._draw_look(rng)
            if self._faces_detectable():
                return
        raise RuntimeError("no session look found in which the Haar detector sees both faces")

    def _draw_look(self, rng: np.random.Generator) -> None:
        # Background: a plain muted colour with a vertical gradient, per session.
        top, bottom = rng.uniform(40, 200, 3), rng.uniform(30, 160, 3)
        ramp = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None, None]
        self.background = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        # Head motion: a sum of slow sinusoids with random phases, so it is
        # smooth like a real head and different in every session.
        self.freqs = rng.uniform(0.1, 0.6, (3, 2))
        self.phases = rng.uniform(0, 2 * np.pi, (3, 2))
        self.brightness = rng.uniform(0.85, 1.15)

    def _faces_detectable(self) -> bool:
        neutral = LABEL_EXPRESSIONS["neutral"]
        if self.people == 2:
            return all(len(detect_face_boxes(self.render("A", neutral, 0.0, t, False))) >= 2
                       for t in self.PROBE_TIMES)
        return all(
            detect_face_box(self.render(speaker, neutral, 0.0, t, False)) is not None
            for speaker in self.speakers
            for t in self.PROBE_TIMES
        )

    def _motion(self, t: float, speaking: bool) -> tuple[float, float, float]:
        wave = np.sin(2 * np.pi * self.freqs * t + self.phases).sum(axis=1) / 2
        amount = 1.6 if speaking else 1.0  # speakers move their heads more
        dx, dy, angle = wave * amount * np.array([4.0, 3.0, 2.5])
        return float(dx), float(dy), float(angle)

    def render(self, speaker: str, expr: Expression, speaking_open: float, t: float, speaking: bool) -> np.ndarray:
        """The frame at time t: `speaker` with expr and speaking_open; with two people in view
        the other one listens beside them, neutral, mouth still.  Both heads then move the
        same amount, so only the mouth tells who speaks."""
        if self.people == 1:
            return self._place(speaker, expr, speaking_open, t, speaking, self.background)
        frame = self.background
        for name in self.speakers:
            if name == speaker:
                frame = self._place(name, expr, speaking_open, t, False, frame)
            else:
                frame = self._place(name, LABEL_EXPRESSIONS["neutral"], 0.0, t, False, frame)
        return frame

    def _place(self, speaker: str, expr: Expression, speaking_open: float, t: float, speaking: bool,
               onto: np.ndarray) -> np.ndarray:
        face = load_face(speaker)
        spk = self.speakers[speaker]
        gain = tuple(float(c) * self.brightness for c in expr.tint) + (0.0,)
        image = cv2.multiply(face.draw(expr, speaking_open), gain, dtype=cv2.CV_8U)  # per-channel, saturating
        # Each person's head has its own phase (both would nod in step otherwise).
        dx, dy, angle = self._motion(t + (7.0 if self.people == 2 and speaker == "B" else 0.0), speaking)
        size = image.shape[0]
        scale = spk.face_scale * FACE_WIDTH / face.box[2]
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        matrix[:, 2] += (WIDTH / 2 + spk.face_offset[0] + dx - size / 2, HEIGHT / 2 + spk.face_offset[1] + dy - size / 2)
        warped = cv2.warpAffine(image, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(face.alpha, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        return cv2.blendLinear(warped, onto, alpha, 1.0 - alpha)


def speech_envelope(audio: np.ndarray, t: float, window_s: float = 0.05) -> float:
    """RMS loudness around time t, 0 at silence; drives the talking mouth."""
    c = int(t * SAMPLE_RATE)
    half = int(window_s * SAMPLE_RATE)
    chunk = audio[max(c - half, 0) : c + half]
    return float(np.sqrt(np.mean(chunk**2))) if chunk.size else 0.0


def session_frames(rng: np.random.Generator, speakers: dict[str, Speaker],
                   utterances: list[PlannedLine], audio: np.ndarray, people: int = 1):
    """Yields the BGR frames of a session, FPS per second, covering the audio."""
    renderer = FrameRenderer(rng, speakers, people)
    n_frames = int(np.ceil(len(audio) / SAMPLE_RATE * FPS))
    expressions = [expression_for(u.labels, u.cues["video"]) for u in utterances]
    peaks = [max(float(np.sqrt(np.mean(u.audio**2))) * 2.0, 1e-4) for u in utterances]
    current = 0  # utterance now playing or last played
    for i in range(n_frames):
        t = i / FPS
        sample = int(round(t * SAMPLE_RATE))
        while current + 1 < len(utterances) and sample >= utterances[current + 1].start_sample:
            current += 1
        utt = utterances[current]
        if utt.start_sample <= sample < utt.end_sample:
            opening = min(speech_envelope(audio, t) / peaks[current], 1.0)
            yield renderer.render(utt.speaker, expressions[current], opening, t, True)
        else:
            # Silence: the last speaker (the first one before anyone spoke) listens, neutral.
            yield renderer.render(utt.speaker, LABEL_EXPRESSIONS["neutral"], 0.0, t, False)
