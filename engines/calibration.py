"""Per-label calibration of a bundle's probabilities: calibration.json, applied by the Engine.

The student's heads are sigmoids trained for F1, not for probabilities that mean what they
say: a fused 0.8 was right far less than 8 times in 10.  `trainer export` fits, on the run's
dev split, one Platt scaling per head and label on the graph's logit z = log(p / (1 - p)):

    p' = sigmoid(scale * z + bias)        scale > 0, so each label's order is kept

(temperature scaling is the case bias = 0; identity is scale 1, bias 0).

It is applied in one place, Engine.predict (engines.runtime), to whatever the backend's
graphs returned, so ONNX Runtime, PyTorch, TensorRT, Triton and the inference service
(`realtime infer`) publish the same calibrated probabilities.  It is not baked into the
graphs: TensorRT plans and Triton repositories are built from those graphs elsewhere, an fp16
graph would compute it in half precision, and `trainer evaluate` needs the uncalibrated
probabilities beside the calibrated ones to report both.

calibration.json is listed in the manifest (graphs.calibration) and hash-checked with the
other files, so a changed calibration is refused like a changed graph.  A bundle without one
(exported before calibration, or with `--calibration none`) runs with the identity.

  {"method": "platt" | "temperature", "heads": [fusion, text, audio, video], "labels": [...],
   "scale": [[per label] per head], "bias": [[per label] per head]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from engines.bundle import MANIFEST, Bundle, BundleError
from engines.heads import HEADS

CALIBRATION = "calibration.json"
METHODS = ("platt", "temperature")
# Probabilities are clipped to this before the logit: float32 sigmoid outputs reach 1.0 exactly
# (logit +inf); 1e-7 keeps |z| <= 16.1, past which no label's probability is distinguishable.
EPS = 1e-7


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


@dataclass(frozen=True)
class Calibration:
    """scale and bias (heads, labels) on the logit, per head (engines.heads.HEADS) and label."""

    method: str
    scale: np.ndarray
    bias: np.ndarray

    @classmethod
    def identity(cls, n_labels: int) -> "Calibration":
        return cls("identity", np.ones((len(HEADS), n_labels)), np.zeros((len(HEADS), n_labels)))

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.scale == 1) and np.all(self.bias == 0))

    def apply(self, probs: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities (B, 4, L) float32 for a graph's outputs (B, 4, L).

        present (B, 3): give it for a student whose fused prediction of a lone modality IS that
        peer's (StudentConfig.peer_base).  Such a row's fused output then takes the peer's
        calibration too: the fusion's own was fitted where several modalities meet, and
        per-label scalings of another head could reorder a face's labels."""
        if self.is_identity:
            return probs
        scale, bias = self.scale, self.bias
        if present is not None:
            present = np.asarray(present) > 0
            lone = present.sum(1) == 1
            if lone.any():
                scale, bias = np.repeat(scale[None], len(probs), 0), np.repeat(bias[None], len(probs), 0)
                head = 1 + present.argmax(1)  # the one present peer's row in HEADS
                scale[lone, 0], bias[lone, 0] = self.scale[head[lone]], self.bias[head[lone]]
        return sigmoid(scale * logit(probs) + bias).astype(np.float32)

    def to_dict(self, labels: list[str]) -> dict:
        return {"method": self.method, "heads": list(HEADS), "labels": list(labels),
                "scale": self.scale.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_dict(cls, data: dict, labels: list[str], where: str = CALIBRATION) -> "Calibration":
        """Checked: a calibration for other heads, labels or with a scale <= 0 is a BundleError."""
        if not isinstance(data, dict) or data.get("method") not in METHODS:
            raise BundleError(f"{where}: method {data.get('method') if isinstance(data, dict) else None!r}, "
                              f"expected one of {', '.join(METHODS)}")
        if data.get("heads") != list(HEADS) or data.get("labels") != list(labels):
            raise BundleError(f"{where}: heads {data.get('heads')} and labels {data.get('labels')} are not the "
                              f"bundle's {list(HEADS)} and {list(labels)}")
        try:
            scale, bias = (np.asarray(data[k], np.float64) for k in ("scale", "bias"))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: scale and bias must be numbers ({exc})") from exc
        shape = (len(HEADS), len(labels))
        if scale.shape != shape or bias.shape != shape:
            raise BundleError(f"{where}: scale {scale.shape} and bias {bias.shape}, expected {shape}")
        if not (np.isfinite(scale).all() and np.isfinite(bias).all() and (scale > 0).all()):
            raise BundleError(f"{where}: scale must be finite and > 0, bias finite")
        return cls(data["method"], scale, bias)


def load_calibration(bundle: Bundle) -> Calibration:
    """The bundle's calibration (open_bundle checked its hash), or the identity without one."""
    if not bundle.has("calibration"):
        if (bundle.path / CALIBRATION).exists():
            raise BundleError(f"{bundle.path / CALIBRATION}: not listed in {MANIFEST} (added after export?)")
        return Calibration.identity(len(bundle.labels))
    path = bundle.file("calibration")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from exc
    return Calibration.from_dict(data, bundle.labels, str(path))
