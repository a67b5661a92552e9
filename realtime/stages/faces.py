"""The faces stage: every sampled frame's faces, found and tracked, sent on to fusion.

The detection, tracking, crops and mouth motion are engines.faces (which the trainer uses
too); `faces` is the stage body for realtime.framework.run_stage.
"""
from __future__ import annotations

import numpy as np

from realtime import bus
from realtime.framework import Stage


def faces(stage: Stage, face_options, preprocessing) -> None:
    """Every face of every sampled frame, tracked (stable ids) with its crop and mouth motion.

    One message per frame: `faces` lists each face's id (null until confirmed), box and
    mouth motion, `main` indexes the main face, and the crops travel stacked in that
    order as one (n, size, size) array; a frame without a face is sent as such."""
    import cv2

    from engines.faces import FaceTracker

    # One stage, one thread, as the ONNX Runtime stages: OpenCV's own pool spread each whole-
    # frame search over every core (0.75 CPU s per 25.7 s session against 0.63 on one thread),
    # cores the ASR and the fusion stage need at that moment.
    cv2.setNumThreads(1)
    inbox, out = stage.pull(stage.endpoints.video), stage.push(stage.endpoints.fusion)
    tracker = FaceTracker(face_options, preprocessing)
    stage.report("ready")
    while True:
        header, image = stage.recv(inbox, bus.VIDEO_IN)
        if header["type"] == "eos":
            stage.send(out, dict(header, stream="video"))
            return
        frame = tracker.update(image, header["t"])
        crops = np.stack([f.crop for f in frame.faces]) if frame.faces else None
        stage.send(out, {"type": "face", "session": header["session"], "seq": header["seq"], "t": header["t"],
                         "found": frame.main is not None, "main": frame.main,
                         "frame": [int(image.shape[1]), int(image.shape[0])],  # width, height: what boxes are in
                         "faces": [{"id": f.id, "box": list(f.box), "motion": f.motion} for f in frame.faces]},
                   crops)
