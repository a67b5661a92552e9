"""Run a bundle: preprocessing, text encoder and student graph, batched.

`load()` is the entry point.  The Engine does the preprocessing and the
bookkeeping; a backend (engines.backends: ONNX Runtime, PyTorch, TensorRT)
runs the two graphs, so every backend gives the same Window -> Prediction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.backends import Backend, open_backend
from engines.bundle import Bundle, open_bundle
from engines.dialogue import UNKNOWN_SPEAKER, Turn, text_input
from engines.heads import HEADS
from engines.preprocess import audio_features, video_features
from engines.text import TextTokenizer


@dataclass
class Window:
    """One span of one session to score: any of its modalities may be absent."""

    start: float
    end: float
    text: str | None = None
    # Earlier turns of the session, oldest first: the dialogue context of `text`, read
    # when the bundle's text_pooling is "mask" (engines.dialogue.text_input).
    context: list[Turn] = field(default_factory=list)
    speaker: str = UNKNOWN_SPEAKER
    audio: np.ndarray | None = None  # 16 kHz mono float32 covering [start, end]
    crops: list = field(default_factory=list)  # (media time, grey crop or None)


@dataclass
class Prediction:
    probabilities: dict[str, float]  # fused, one per label
    peers: dict[str, dict[str, float]]  # per present modality
    modalities: list[str]  # which modalities the fusion used


class Engine:
    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.labels = bundle.labels
        self.pre = bundle.preprocessing
        self._tokenize = TextTokenizer.for_preprocessing(bundle.file("tokenizer"), self.pre)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Sentence embeddings (N, text_dim) from the bundle's text encoder."""
        return self.backend.embed_text(self._tokenize(texts))

    def infer(self, windows: list[Window]) -> list[Prediction]:
        """Score a batch of windows (they may come from different sessions)."""
        if not windows:
            return []
        feeds = self.features(windows)
        probs = self.backend.run_student(feeds)  # (B, 4, L)
        return [self._prediction(p, feeds["present"][i]) for i, p in enumerate(probs)]

    def features(self, windows: list[Window]) -> dict[str, np.ndarray]:
        p = self.pre
        texts = [w.text.strip() if w.text else "" for w in windows]
        text_emb = np.zeros((len(windows), self.bundle.manifest["text_dim"]), dtype=np.float32)
        with_text = [i for i, t in enumerate(texts) if t]
        if with_text:
            inputs = [text_input(p, windows[i].context, Turn(windows[i].speaker, texts[i])) for i in with_text]
            text_emb[with_text] = self.embed_text(inputs)
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


def load(bundle: str | Path, backend: str = "auto", device: str = "auto", threads: int = 1) -> Engine:
    """Open and verify a bundle and return an engine for it.

    backend: auto | tensorrt | onnxruntime | torch; device: auto | cpu | cuda.
    auto picks TensorRT on a GPU when the bundle has engines and tensorrt
    imports, then PyTorch on CUDA, then ONNX Runtime on the CPU.
    """
    opened = open_bundle(bundle)
    return Engine(opened, open_backend(opened, backend, device, threads))
