"""`trainer export`: a run directory -> a model bundle (manifest + ONNX graphs).

Two graphs, so the runtime can score audio and video between utterances
without running the text encoder:
  text_encoder.onnx  input_ids, attention_mask -> sentence embedding
  student.onnx       text embedding, log-mel, face crops, masks -> probabilities
Export checks the ONNX Runtime outputs against PyTorch before it writes the manifest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from engines.bundle import write_manifest
from engines.preprocess import Preprocessing
from trainer.model import ExportedStudent, Student, StudentConfig
from trainer.text_encoder import SentenceEncoder

OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |probability difference|, ONNX Runtime vs PyTorch, fp32


def load_run(run: Path) -> tuple[dict, Student]:
    from safetensors.torch import load_file

    info_path = run / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing; is {run} a run directory of `trainer fit`?")
    info = json.loads(info_path.read_text())
    model = Student(StudentConfig(**info["student"]), Preprocessing.from_dict(info["preprocessing"]))
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    return info, model.eval()


def example_inputs(model: Student, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    pre, gen = model.pre, torch.Generator().manual_seed(seed)
    return (
        torch.nn.functional.normalize(torch.randn(batch, model.cfg.text_dim, generator=gen), dim=-1),
        torch.randn(batch, pre.n_mels, pre.audio_frames, generator=gen),
        (torch.rand(batch, pre.audio_tokens, generator=gen) > 0.3).float(),
        torch.randn(batch, pre.video_frames, pre.face_size, pre.face_size, generator=gen),
        (torch.rand(batch, pre.video_frames, generator=gen) > 0.3).float(),
        (torch.rand(batch, 3, generator=gen) > 0.3).float(),
    )


STUDENT_INPUTS = ["text_emb", "mel", "audio_mask", "video", "video_mask", "present"]


def export_student(model: Student, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        ExportedStudent(model).eval(),
        example_inputs(model),
        str(path),
        input_names=STUDENT_INPUTS,
        output_names=["probs"],
        dynamic_shapes=tuple({0: batch} for _ in STUDENT_INPUTS),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )


def export_text_encoder(encoder: SentenceEncoder, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    tokens = torch.export.Dim("tokens", min=2, max=512)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).long()
    torch.onnx.export(
        encoder.eval(),
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )


def check_parity(model: Student, path: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(model, batch=3, seed=1)
    with torch.no_grad():
        expected = ExportedStudent(model)(*inputs).numpy()
    got = session.run(None, {n: t.numpy() for n, t in zip(STUDENT_INPUTS, inputs)})[0]
    return float(np.abs(expected - got).max())


def export(run: Path, bundle: Path) -> dict:
    info, model = load_run(run)
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    export_student(model, bundle / "student.onnx")
    diff = check_parity(model, bundle / "student.onnx")
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
    encoder = SentenceEncoder(info["text_encoder"])
    export_text_encoder(encoder, bundle / "text_encoder.onnx")
    shutil.copy(encoder.tokenizer_json, bundle / "tokenizer.json")
    manifest = {
        "labels": info["labels"],
        "thresholds": info["thresholds"],
        "preprocessing": info["preprocessing"],
        "faces": info["faces"],
        "text_dim": info["student"]["text_dim"],
        "graphs": {"student": "student.onnx", "text_encoder": "text_encoder.onnx",
                   "tokenizer": "tokenizer.json"},
        "inputs": {
            "student": {name: ["batch", *t.shape[1:]] for name, t in
                        zip(STUDENT_INPUTS, example_inputs(model))},
            "text_encoder": {"input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"]},
        },
        "outputs": {"student": {"probs": ["batch", ["fusion", "text", "audio", "video"], "labels"]}},
        "training": {"data": info["data"], "selected_epoch": info["selected_epoch"],
                     "dev_weighted_f1": info["dev_weighted_f1"]},
        "parity_max_abs_diff": diff,
    }
    write_manifest(bundle, manifest)
    return manifest
