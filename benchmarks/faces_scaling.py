"""How the face stage and the fusion stage's window updates grow with 1, 2, 4 and 8 faces
in view (issue 14, part 4).

  python benchmarks/faces_scaling.py [--faces 1 2 4 8] [--seconds 12] [--video-encoder tubelets fer]
                                    [--baseline DIR]

For each number of faces, one run of `--seconds` of media: 640x360 frames at the face stage's
sample rate (5 a second) holding that many real faces side by side, a gallery view
(benchmarks/face_media.grid; each face moves a pixel or two from frame to frame, as a head
does), and 32 ms chunks of audio.  The stages' own code runs in one process per run, in the
order the pipeline runs it, one frame at a time:

- faces stage: `FaceTracker.update` (detection + tracking + mouth motion + crops) on the
  frame, then the message it sends (`realtime.stages.faces`'s header and stacked crops);
- fusion stage: `Fusion.on_message` for the audio up to the frame and the frame's message,
  then `score_ready`, which scores the window updates the frame made ready: the window and
  one video-only window per tracked face, in one engine call (ONNX Runtime, 1 thread, as
  [model] threads), with a random-init student (speed does not depend on the weights) whose
  video branch is `tubelets` (the default student) or `fer` (the FER2013 network, as
  `trainer recipe real` trains it).

Metrics per video encoder and number of faces N (medians over the run's frames or windows;
only windows that carry all N faces count):
- `faces_ms_N` (per frame, the whole update; wall), `faces_cpu_ms_N` (the same in CPU time,
  less disturbed by other jobs), `detect_ms_N` (the detector alone on the same frames, timed
  separately), `faces_per_face_cpu_ms_N` (CPU time of the update less that of the detection
  inside it: tracking, crops, mouth motion, i.e. the work that grows with the faces);
- `{enc}_window_infer_ms_N` (features + the engine call, the stream's timing.infer_s),
  `{enc}_window_features_ms_N`, `{enc}_window_engine_ms_N`;
- `{enc}_window_latency_ms_{p50,p95}_N`: from the frame that completes a window entering the
  face stage to the window's publication: face stage + fusion, with no transport and no
  other stage competing, so the compute part of the live figure;
- `faces_cpu_s_N`, `{enc}_fusion_cpu_s_N`: CPU seconds of each stage's work over the run
  (process time), and `*_per_media_s_N` the same per second of media.
Growth: `*_growth_8` is the N=8 figure over the N=1 figure (8 would be linear).

`--baseline DIR` runs the stages' code of DIR too (engines and realtime imported from there),
its run of each N just before this checkout's, so both see the same machine state: before and
after a change.  The machine is shared: the load average at the start and end is recorded;
each N runs once.
Writes benchmarks/results/faces_scaling.json (benchmarks.report keys).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.face_media import GRIDS, grid, load_photos  # noqa: E402
from benchmarks.report import check_tree, result_json, write  # noqa: E402

LABELS = ["neutral", "happiness", "sadness", "anger", "surprise"]
CHUNK = 512  # audio samples per message (32 ms at 16 kHz), as the media source sends


def make_bundle(out: Path, video_encoder: str) -> Path:
    """A random-init student (default sizes, the given video branch) with the default text encoder."""
    if (out / "manifest.json").exists():
        return out
    import torch

    from engines.face_net import FER_LABELS
    from engines.faces import FaceOptions
    from engines.preprocess import Preprocessing
    from engines.student import Student, StudentConfig
    from trainer.export import write_bundle
    from trainer.fit import TrainOptions
    from trainer.text_encoder import SentenceEncoder

    opts, pre = TrainOptions(), Preprocessing()
    encoder = SentenceEncoder(opts.text_encoder)
    fer = {"neutral": "neutral", "happiness": "happy", "sadness": "sad", "anger": "angry", "surprise": "surprise"}
    cfg = StudentConfig(n_labels=len(LABELS), text_dim=encoder.dim, dim=opts.dim, heads=opts.heads,
                        layers=opts.layers, video_encoder=video_encoder,
                        fer_classes=[FER_LABELS.index(fer[l]) for l in LABELS] if video_encoder == "fer" else [])
    torch.manual_seed(0)
    info = {"labels": LABELS, "thresholds": [0.5] * len(LABELS), "preprocessing": pre.to_dict(),
            "faces": dataclasses.asdict(FaceOptions()), "student": cfg.to_dict(), "text_encoder": str(encoder.path),
            "data": "random-init (benchmark)", "selected_epoch": 0, "dev_weighted_f1": {},
            "options": dataclasses.asdict(opts)}
    write_bundle(Student(cfg, pre).eval(), info, out, "fp32")
    return out


class Capture:
    """Stands in for the fusion stage's Publisher: keeps each body and when it was published."""

    def __init__(self):
        self.seq, self.state, self.bodies = 0, (lambda: None), []

    def publish(self, body: dict) -> dict:
        body = {"seq": self.seq, **body, "published": time.perf_counter()}
        self.seq += 1
        self.bodies.append(body)
        return body


class Timed:
    """An engine whose features() and predict() calls are timed."""

    def __init__(self, engine):
        self.engine, self.features_s, self.predict_s = engine, [], []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def features(self, windows):
        t = time.perf_counter()
        out = self.engine.features(windows)
        self.features_s.append(time.perf_counter() - t)
        return out

    def predict(self, feeds):
        t = time.perf_counter()
        out = self.engine.predict(feeds)
        self.predict_s.append(time.perf_counter() - t)
        return out


def media(photos: dict, n: int, seconds: float, fps: float, seed: int):
    """(t, frame) at the sample rate, n faces each moving a pixel or two, and the audio."""
    rng = np.random.default_rng(seed)
    frames, shift = [], np.zeros(2)
    for k in range(int(seconds * fps)):
        shift = np.clip(shift + rng.integers(-1, 2, 2), -3, 3)
        frames.append((k / fps, grid(photos, n, (int(shift[0]), int(shift[1])))[0]))
    audio = (0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    return frames, audio


def run(n: int, frames, audio, bundle: Path) -> dict:
    """One run of both stages over the frames; raw timings."""
    import engines
    from engines.faces import FaceOptions, FaceTracker
    from engines.preprocess import Preprocessing
    from realtime.stages.fusion import Fusion, FusionOptions

    options, pre = FaceOptions(), Preprocessing()
    engine = Timed(engines.load(bundle, backend="onnxruntime", device="cpu", threads=1))
    out = Capture()
    fusion = Fusion(engine, FusionOptions(), out, options)
    tracker = FaceTracker(options, pre)
    detect = tracker.detect
    inside: list[float] = []  # CPU time of the detection inside each update: the rest is the per-face work

    def timed_detect(frame):
        c = time.process_time()
        boxes = detect(frame)
        inside.append(time.process_time() - c)
        return boxes

    tracker.detect = timed_detect
    faces_s, faces_cpu_s, fusion_cpu_s, latencies, sent = [], [], [], [], 0
    for t, frame in frames:
        entered, cpu0 = time.perf_counter(), time.process_time()
        seen = tracker.update(frame, t)
        crops = np.stack([f.crop for f in seen.faces]) if seen.faces else None
        header = {"type": "face", "t": t, "found": seen.main is not None, "main": seen.main,
                  "faces": [{"id": f.id, "box": list(f.box), "motion": f.motion} for f in seen.faces]}
        faces_s.append(time.perf_counter() - entered)
        cpu1 = time.process_time()
        faces_cpu_s.append(cpu1 - cpu0)
        # the audio up to this frame (it arrives continuously; the frame is what completes a window)
        until = min(len(audio), int((t + 0.2) * 16000))
        while sent < until:
            fusion.on_message({"type": "audio", "t": sent / 16000}, audio[sent:sent + CHUNK], score=False)
            sent += CHUNK
        before = len(out.bodies)
        fusion.on_message(header, crops)  # scores what this frame made ready
        fusion_cpu_s.append(time.process_time() - cpu1)
        latencies += [(b, b["published"] - entered) for b in out.bodies[before:] if b["type"] == "window"]
    per_face_s = [c - d for c, d in zip(faces_cpu_s, inside)]
    tracker.detect = detect
    detect_s = []
    for _, frame in frames:
        t0 = time.perf_counter()
        tracker.detect(frame)
        detect_s.append(time.perf_counter() - t0)
    full = [(b, lat) for b, lat in latencies if len(b["faces"]) == n]
    return {"faces_s": faces_s, "detect_s": detect_s, "per_face_cpu_s": per_face_s, "faces_cpu_s": faces_cpu_s, "fusion_cpu_s": fusion_cpu_s,
            "windows": len(latencies), "full_windows": len(full),
            "window_infer_s": [b["timing"]["infer_s"] for b, _ in full],
            "window_latency_s": [lat for _, lat in full],
            # the engine calls of windows (not utterances: there are none here) in order
            "features_s": engine.features_s, "predict_s": engine.predict_s,
            "faces_found": int(np.median([len(f) for f in [b["faces"] for b, _ in latencies]])) if latencies else 0}


def child(n: int, enc: str, seconds: float, bundle: Path, code: Path) -> None:
    """One run in a process of its own, importing the stages' code (engines, realtime) from
    `code`; prints the raw timings as JSON."""
    import json

    sys.path.insert(0, str(code))
    import cv2

    cv2.setNumThreads(1)  # the face stage's share of two cores; also makes runs comparable
    frames, audio = media(load_photos(None), n, seconds, 5.0, seed=n)
    print(json.dumps(run(n, frames, audio, bundle)))


def run_child(n: int, enc: str, seconds: float, bundle: Path, code: Path) -> dict:
    import json
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--child", str(n), enc, "--seconds", str(seconds),
                           "--bundle", str(bundle), "--code", str(code)], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise RuntimeError(f"run N={n} {enc} ({code}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def metrics_of(n: int, enc: str, r: dict, seconds: float, first: bool) -> dict:
    ms = lambda xs: round(1000 * float(np.median(xs)), 2) if len(xs) else float("nan")
    pct = lambda xs, q: round(1000 * float(np.percentile(xs, q)), 2) if len(xs) else float("nan")
    out = {}
    if first:  # the face stage does not depend on the bundle: its figures from the first encoder's run
        out.update({f"faces_ms_{n}": ms(r["faces_s"]), f"faces_ms_p95_{n}": pct(r["faces_s"], 95),
                    f"faces_cpu_ms_{n}": ms(r["faces_cpu_s"]), f"detect_ms_{n}": ms(r["detect_s"]),
                    f"faces_per_face_cpu_ms_{n}": ms(r["per_face_cpu_s"]),
                    f"faces_cpu_s_{n}": round(sum(r["faces_cpu_s"]), 3),
                    f"faces_cpu_per_media_s_{n}": round(sum(r["faces_cpu_s"]) / seconds, 4),
                    f"faces_tracked_{n}": r["faces_found"]})
    m = r["full_windows"]  # window engine calls with all n faces: the last m (no utterances here)
    out.update({
        f"{enc}_window_infer_ms_{n}": ms(r["window_infer_s"]),
        f"{enc}_window_features_ms_{n}": ms(r["features_s"][-m:] if m else []),
        f"{enc}_window_engine_ms_{n}": ms(r["predict_s"][-m:] if m else []),
        f"{enc}_window_latency_ms_p50_{n}": ms(r["window_latency_s"]),
        f"{enc}_window_latency_ms_p95_{n}": pct(r["window_latency_s"], 95),
        f"{enc}_fusion_cpu_s_{n}": round(sum(r["fusion_cpu_s"]), 3),
        f"{enc}_fusion_cpu_per_media_s_{n}": round(sum(r["fusion_cpu_s"]) / seconds, 4),
        f"{enc}_windows_{n}": m})
    return out


def growth(metrics: dict, lo: int, hi: int) -> dict:
    """Each time and CPU figure at hi faces over the same at lo faces (hi/lo would be linear)."""
    out = {}
    for key in metrics:
        if key.endswith(f"_{lo}") and ("_ms" in key or "cpu_s" in key):
            base = key[: -len(f"_{lo}")]
            if metrics.get(f"{base}_{hi}") and metrics[key]:
                out[f"{base}_growth_{hi}"] = round(metrics[f"{base}_{hi}"] / metrics[key], 2)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--seconds", type=float, default=12.0, help="media per run")
    parser.add_argument("--video-encoder", nargs="+", default=["tubelets", "fer"], choices=["tubelets", "fer"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/faces-scaling"),
                        help="where the random-init bundles are made once and kept")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the stages' code in DIR (e.g. `git archive COMMIT | tar -x -C DIR`), "
                             "its run of each N just before this checkout's; its metrics are prefixed baseline_")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faces_scaling.json")
    parser.add_argument("--child", nargs=2, metavar=("N", "ENCODER"), help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(int(args.child[0]), args.child[1], args.seconds, args.bundle, args.code)
        return 0
    check_tree()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started, load_start = time.perf_counter(), list(os.getloadavg())
    bundles = {enc: make_bundle(args.work / f"bundle-{enc}", enc) for enc in args.video_encoder}
    variants = [("", ROOT)] + ([("baseline_", args.baseline.resolve())] if args.baseline else [])
    metrics: dict[str, float] = {"media_s": args.seconds}
    found = {prefix: {} for prefix, _ in variants}
    for n in args.faces:
        for k, enc in enumerate(args.video_encoder):
            for prefix, code in reversed(variants):  # the baseline first, then this checkout
                found[prefix].update(metrics_of(n, enc, run_child(n, enc, args.seconds, bundles[enc], code),
                                                args.seconds, k == 0))
                f = found[prefix]
                print(f"{prefix or 'this '}N={n} {enc}: faces {f[f'faces_ms_{n}']} ms/frame, cpu "
                      f"{f[f'faces_cpu_ms_{n}']} ms/frame (detect {f[f'detect_ms_{n}']}, per-face work cpu "
                      f"{f[f'faces_per_face_cpu_ms_{n}']}); window infer "
                      f"{f[f'{enc}_window_infer_ms_{n}']} ms, latency p50/p95 {f[f'{enc}_window_latency_ms_p50_{n}']}/"
                      f"{f[f'{enc}_window_latency_ms_p95_{n}']} ms; cpu s faces {f[f'faces_cpu_s_{n}']} fusion "
                      f"{f[f'{enc}_fusion_cpu_s_{n}']} ({f[f'{enc}_windows_{n}']} windows with all faces)", flush=True)
    for prefix, _ in variants:
        found[prefix].update(growth(found[prefix], min(args.faces), max(args.faces)))
        metrics.update({f"{prefix}{k}": v for k, v in found[prefix].items()})
    write(args.out, result_json(
        "faces_scaling", started, 1, metrics, faces=args.faces, video_encoders=args.video_encoder,
        bundle="random-init students made here (speed does not depend on weights)",
        baseline=str(args.baseline) if args.baseline else None,
        load_average={"start": load_start, "end": list(os.getloadavg())},  # 1, 5, 15 min: the machine is shared
        notes="one run per N (and per code version, baseline first); medians over frames or windows; each run "
              "a process of its own, both stages in it, no transport; OpenCV and ONNX Runtime single-threaded; "
              "faces: real photos tiled (benchmarks/face_media.py)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
