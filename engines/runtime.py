"""Run a bundle: preprocessing, text encoder and student graph, batched.

`load()` is the entry point.  The Engine does the preprocessing and the
bookkeeping; a backend (engines.backends: ONNX Runtime, PyTorch, TensorRT, Triton, the
inference service; open_backend picks and opens it) runs the two graphs, so every backend
gives the same Window -> Prediction.  The bundle's
per-label calibration (engines.calibration) is applied here, to every backend's outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.settings import ConfigError
from engines.backends import (Backend, OnnxRuntimeBackend, TorchBackend, choose_backend, has_cuda, has_tensorrt,
                              has_torch)
from engines.bundle import MANIFEST, Bundle, BundleError, open_bundle
from engines.calibration import load_calibration
from engines.features import Window, student_inputs  # Window: the input type of Engine.infer
from engines.heads import HEADS
from engines.text import TextTokenizer


@dataclass
class Prediction:
    probabilities: dict[str, float]  # fused, one per label (calibrated: engines.calibration)
    peers: dict[str, dict[str, float]]  # per present modality (calibrated per head)
    modalities: list[str]  # which modalities the fusion used


class Engine:
    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.labels = bundle.labels
        self.pre = bundle.preprocessing
        # Bundles before the manifest named them read every modality.
        self.modalities = tuple(HEADS[1:] if bundle.entries.modalities is None else bundle.entries.modalities)
        self._allowed = np.array([m in self.modalities for m in HEADS[1:]], dtype=np.float32)
        self._tokenize = TextTokenizer.for_preprocessing(bundle.file("tokenizer"), self.pre)
        self.calibration = load_calibration(bundle)  # the identity for bundles without one
        # the fused prediction of a lone modality is that peer's (engines.student): so is its calibration
        self.peer_base = bool((bundle.entries.student_config or {}).get("peer_base", False))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Sentence embeddings (N, text_dim) from the bundle's text encoder."""
        return self.backend.embed_text(self._tokenize(texts))

    def infer(self, windows: list[Window]) -> list[Prediction]:
        """Score a batch of windows (they may come from different sessions)."""
        if not windows:
            return []
        return self.predict(self.features(windows))

    def features(self, windows: list[Window]) -> dict[str, np.ndarray]:
        """The student's inputs for `windows`: engines.features, the trainer's assembler too."""
        text_dim = self.bundle.entries.text_dim
        if text_dim is None:  # every bundle `trainer export` writes has it
            raise BundleError(f"{self.bundle.path / MANIFEST}: no 'text_dim' entry (export the run again)")
        feeds = student_inputs(windows, self.pre, self.embed_text, text_dim)
        feeds["present"] = feeds["present"] * self._allowed  # what the bundle does not read stays hidden
        return feeds

    def predict(self, feeds: dict[str, np.ndarray], calibrated: bool = True) -> list[Prediction]:
        """Predictions for inputs made by `features`; calibrated=False: the graphs' own
        probabilities (what `trainer evaluate` reports as before calibration)."""
        probs = self.backend.run_student(feeds)  # (B, 4, L)
        if calibrated:
            probs = self.calibration.apply(probs, feeds["present"] if self.peer_base else None)
        return [self._prediction(p, feeds["present"][i]) for i, p in enumerate(probs)]

    def _prediction(self, probs: np.ndarray, present: np.ndarray) -> Prediction:
        used = [m for m, on in zip(HEADS[1:], present) if on]
        as_dict = lambda row: {label: round(float(v), 6) for label, v in zip(self.labels, row)}
        return Prediction(
            probabilities=as_dict(probs[0]),
            peers={m: as_dict(probs[1 + HEADS[1:].index(m)]) for m in used},
            modalities=used,
        )


def open_backend(bundle: Bundle, backend: str = "auto", device: str = "auto", threads: int = 1,
                 triton_url: str = "", triton_timeout_s: float = 10.0, service_endpoint: str = "",
                 service_timeout_s: float = 10.0) -> Backend:
    """The backend that runs `bundle` here; probes only what the request needs."""
    wants_gpu = device != "cpu" and backend in ("auto", "torch", "tensorrt")
    cuda = has_cuda() if wants_gpu else False
    engines_built = bundle.has_tensorrt_engines
    trt = has_tensorrt() if backend == "tensorrt" or (backend == "auto" and cuda and engines_built) else False
    name, device = choose_backend(backend, device, has_cuda=cuda, has_tensorrt=trt,
                                  has_torch=has_torch(), bundle_has_engines=engines_built)
    if name == "tensorrt":
        from engines.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle)
    if name == "triton":
        from engines.triton_backend import TritonBackend

        if not triton_url:
            raise ConfigError("backend 'triton' needs the server's address: set [model] triton_url (host:port)")
        return TritonBackend(bundle, triton_url, triton_timeout_s)
    if name == "service":
        from engines.service import ServiceBackend

        if not service_endpoint:
            raise ConfigError("backend 'service' needs the service's address: set [model] service_endpoint")
        return ServiceBackend(bundle, service_endpoint, service_timeout_s)
    if name == "torch":
        return TorchBackend(bundle, device, threads)
    return OnnxRuntimeBackend(bundle, device, threads)


def load(bundle: str | Path | Bundle, backend: str = "auto", device: str = "auto", threads: int = 1,
         triton_url: str = "", triton_timeout_s: float = 10.0, service_endpoint: str = "",
         service_timeout_s: float = 10.0) -> Engine:
    """Open and verify a bundle (a Bundle is taken as opened and verified already: its files
    are not hashed again) and return an engine for it.

    backend: auto | tensorrt | onnxruntime | torch | triton | service; device: auto | cpu | cuda.
    auto picks TensorRT on a GPU when the bundle has engines and tensorrt
    imports, then PyTorch on CUDA, then ONNX Runtime on the CPU.  triton runs the
    graphs on the Triton server at triton_url (host:port), service in the inference service
    at service_endpoint (engines.service); device does not apply to either.
    """
    opened = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    return Engine(opened, open_backend(opened, backend, device, threads, triton_url, triton_timeout_s,
                                       service_endpoint, service_timeout_s))
