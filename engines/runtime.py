"""Run a bundle: preprocessing, text encoder and student graph, batched.

`load()` is the entry point.  ONNX Runtime is the backend that runs
everywhere; other backends plug in behind the same `Engine.infer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.bundle import Bundle, BundleError, open_bundle
from engines.preprocess import audio_features, video_features
from engines.text import TextTokenizer

BACKENDS = ("auto", "onnxruntime")
HEADS = ("fusion", "text", "audio", "video")


@dataclass
class Window:
    """One span of one session to score: any of its modalities may be absent."""

    start: float
    end: float
    text: str | None = None
    audio: np.ndarray | None = None  # 16 kHz mono float32 covering [start, end]
    crops: list = field(default_factory=list)  # (media time, grey crop or None)


@dataclass
class Prediction:
    probabilities: dict[str, float]  # fused, one per label
    peers: dict[str, dict[str, float]]  # per present modality
    modalities: list[str]  # which modalities the fusion used


class Engine:
    def __init__(self, bundle: Bundle, threads: int = 1):
        import onnxruntime as ort

        self.bundle = bundle
        self.labels = bundle.labels
        self.pre = bundle.preprocessing
        options = ort.SessionOptions()
        # One stage = one process; a single thread each keeps them from
        # fighting over the cores, and keeps results bit-identical across runs.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._student = ort.InferenceSession(
                str(bundle.file("student")), options, providers=["CPUExecutionProvider"]
            )
            self._text = ort.InferenceSession(
                str(bundle.file("text_encoder")), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{bundle.path}: ONNX Runtime cannot load a graph: {exc}") from exc
        self._tokenize = TextTokenizer(bundle.file("tokenizer"), self.pre.text_max_tokens)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Sentence embeddings (N, text_dim) from the bundle's text encoder."""
        return self._text.run(None, self._tokenize(texts))[0]

    def infer(self, windows: list[Window]) -> list[Prediction]:
        """Score a batch of windows (they may come from different sessions)."""
        if not windows:
            return []
        feeds = self.features(windows)
        probs = self._student.run(None, feeds)[0]  # (B, 4, L)
        return [self._prediction(p, feeds["present"][i]) for i, p in enumerate(probs)]

    def features(self, windows: list[Window]) -> dict[str, np.ndarray]:
        p = self.pre
        texts = [w.text.strip() if w.text else "" for w in windows]
        text_emb = np.zeros((len(windows), self.bundle.manifest["text_dim"]), dtype=np.float32)
        with_text = [i for i, t in enumerate(texts) if t]
        if with_text:
            text_emb[with_text] = self.embed_text([texts[i] for i in with_text])
        mels, amasks = zip(*(audio_features(w.audio, p) for w in windows))
        videos, vmasks = zip(*(video_features(w.crops, w.start, w.end, p) for w in windows))
        present = np.array(
            [[bool(texts[i]), amasks[i].any(), vmasks[i].any()] for i in range(len(windows))],
            dtype=np.float32,
        )
        return {
            "text_emb": text_emb,
            "mel": np.stack(mels),
            "audio_mask": np.stack(amasks),
            "video": np.stack(videos),
            "video_mask": np.stack(vmasks),
            "present": present,
        }

    def _prediction(self, probs: np.ndarray, present: np.ndarray) -> Prediction:
        used = [m for m, on in zip(HEADS[1:], present) if on]
        as_dict = lambda row: {label: round(float(v), 6) for label, v in zip(self.labels, row)}
        return Prediction(
            probabilities=as_dict(probs[0]),
            peers={m: as_dict(probs[1 + HEADS[1:].index(m)]) for m in used},
            modalities=used,
        )


def load(bundle: str | Path, backend: str = "auto", threads: int = 1) -> Engine:
    """Open and verify a bundle and return an engine for it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: this build supports {', '.join(BACKENDS)}")
    return Engine(open_bundle(bundle), threads=threads)
