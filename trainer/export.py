"""`trainer export`: a run directory -> a model bundle.

  student.onnx         text embedding, log-mel, face crops, masks -> probabilities
  text_encoder.onnx    input_ids, attention_mask -> sentence embedding
  student.safetensors  the student's weights for the PyTorch backend (config in the manifest)
  tokenizer.json
  calibration.json     per-label calibration fitted on the run's dev split (engines.calibration)
  card.json, card.md   the model card (trainer.card): data, teachers, licences, scores
  student.plan, text_encoder.plan   with --tensorrt (engines.tensorrt_build)

Two graphs, so the runtime can score audio and video between utterances
without running the text encoder.  --precision fp16 converts both graphs to
float16 compute with float32 inputs and outputs (engines.fp16).  Export checks
each ONNX graph in ONNX Runtime against PyTorch fp32 before it writes the manifest.
--triton DIR also writes a Triton model repository (engines.triton).  The calibration
(--calibration platt | temperature | none; trainer.calibrate) is fitted on the run's dev split,
which export reads again (the run's feature cache makes that quick), and the manifest's
thresholds are the ones tuned on the calibrated probabilities.
"""
from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from common.atomic import replacing_dir, write_file
from engines.bundle import Manifest, write_manifest
from engines.calibration import CALIBRATION, METHODS
from engines.dialogue import UNKNOWN_SPEAKER, Turn, text_input
from engines.heads import HEADS, MODALITIES
from engines.preprocess import Preprocessing
from common.settings import ConfigError
from engines.student import INPUTS, ExportedStudent, Student
from engines.text import TextTokenizer
from trainer.card import build_card, write_card_files
from trainer.fit import load_run
from trainer.text_encoder import SentenceEncoder

OPSET = 18
PRECISIONS = ("fp32", "fp16")
# Max |difference| from PyTorch fp32 (probabilities; unit-length embeddings).
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
# The range of each named axis the graphs are exported for, but audio_tokens, which depends
# on the preprocessing (dynamic_axes).
DYNAMIC_AXES = {"batch": {"min": 1, "max": 1024}, "tokens": {"min": 2, "max": 512}}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
PARITY_TEXTS = ["I am so happy today!", "Please put the files on my desk.", "no"]


def dynamic_axes(pre: Preprocessing) -> dict:
    """Every named axis of a bundle's graphs with its range (manifest `dynamic_axes`);
    audio_tokens is the student's log-mel length in tokens, up to all max_audio_s holds (a
    short window need not run the padding: engines.backends.trim_audio)."""
    return {**DYNAMIC_AXES, "audio_tokens": {"min": 1, "max": pre.audio_tokens}}


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


def _dim(name: str, axes: dict = DYNAMIC_AXES) -> torch.export.Dim:
    return torch.export.Dim(name, min=axes[name]["min"], max=axes[name]["max"])


def _onnx_export(module, inputs, path: Path, input_names, output_names, dynamic_shapes) -> None:
    """torch.onnx's dynamo exporter, without its progress lines and known-harmless warnings."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # axis-renaming notices of dynamic shapes
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=dynamic_shapes, opset_version=OPSET, dynamo=True,
                          external_data=False, verbose=False)


def export_student(model: Student, path: Path) -> None:
    batch, audio = _dim("batch"), _dim("audio_tokens", dynamic_axes(model.pre))
    # mel's frames are audio_patch per token: the graph cuts them into tokens by reshaping.
    along = {"mel": {0: batch, 2: model.pre.audio_patch * audio}, "audio_mask": {0: batch, 1: audio}}
    _onnx_export(ExportedStudent(model), example_inputs(model), path, list(INPUTS), ["probs"],
                 tuple(along.get(name, {0: batch}) for name in INPUTS))


def export_text_encoder(encoder: SentenceEncoder, path: Path) -> None:
    batch, tokens = _dim("batch"), _dim("tokens")
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    _onnx_export(encoder, (ids, (ids != 0).long()), path, ["input_ids", "attention_mask"],
                 ["sentence_embedding"], ({0: batch, 1: tokens}, {0: batch, 1: tokens}))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def graph_io(session) -> dict:
    """Names, dtypes and shapes (named axes as strings) of a graph's inputs and outputs."""
    spec = lambda args: {a.name: {"dtype": ORT_DTYPES[a.type], "shape": list(a.shape)} for a in args}
    return {"inputs": spec(session.get_inputs()), "outputs": spec(session.get_outputs())}


def student_parity(model: Student, session) -> float:
    """Max |difference| over a batch at full audio length and the same batch cut to its
    first third of audio tokens (the length axis the runtime shortens)."""
    inputs = example_inputs(model, batch=3, seed=1)
    tokens = max(1, model.pre.audio_tokens // 3)
    cut, mel, mask = list(inputs), INPUTS.index("mel"), INPUTS.index("audio_mask")
    cut[mel], cut[mask] = inputs[mel][:, :, : tokens * model.pre.audio_patch], inputs[mask][:, :tokens]
    diff = 0.0
    for batch in (inputs, tuple(cut)):
        with torch.no_grad():
            expected = ExportedStudent(model)(*batch).numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(INPUTS, batch)})[0]
        diff = max(diff, float(np.abs(expected - got).max()))
    return diff


def text_encoder_parity(encoder: SentenceEncoder, session, pre: Preprocessing) -> float:
    turns = [Turn(UNKNOWN_SPEAKER, t) for t in PARITY_TEXTS]
    texts = [text_input(pre, turns[:i], turn) for i, turn in enumerate(turns)]
    tokens = TextTokenizer.for_preprocessing(encoder.tokenizer_json, pre)(texts)
    with torch.no_grad():
        expected = encoder(**{k: torch.from_numpy(v) for k, v in tokens.items()}).numpy()
    return float(np.abs(expected - session.run(None, tokens)[0]).max())


def _finish_graph(path: Path, precision: str, parity) -> tuple[dict, float]:
    """Convert to the bundle's precision, then check it against PyTorch; (io spec, max |diff|)."""
    if precision == "fp16":
        from engines.fp16 import convert_file

        convert_file(path, path)
    session = _session(path)
    diff = parity(session)
    if diff > PARITY_TOLERANCE[precision]:
        raise RuntimeError(f"{path.name} ({precision}) differs from PyTorch fp32 by {diff:.2e} "
                           f"(> {PARITY_TOLERANCE[precision]})")
    return graph_io(session), diff


def write_bundle(model: Student, info: dict, bundle: Path, precision: str = "fp32",
                 calibrated: dict | None = None) -> dict:
    """The bundle of a student and the run info (run.json) it came with, built in a temporary
    sibling that replaces `bundle` only when complete (common.atomic): an export that fails
    or is killed leaves the old bundle, or none, never half of one.  calibrated: what
    trainer.calibrate.calibrate_run fitted (None: no calibration, the run's thresholds)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    with replacing_dir(bundle) as tmp:
        return _write_bundle(model, info, tmp, precision, calibrated)


def _write_bundle(model: Student, info: dict, bundle: Path, precision: str, calibrated: dict | None) -> dict:
    export_student(model, bundle / "student.onnx")
    student_io, student_diff = _finish_graph(bundle / "student.onnx", precision,
                                             lambda s: student_parity(model, s))
    # Weights only, never a pickle: the PyTorch backend rebuilds the model from student_config.
    save_file(model.state_dict(), str(bundle / "student.safetensors"))
    encoder = SentenceEncoder.for_preprocessing(info["text_encoder"], model.pre)
    export_text_encoder(encoder, bundle / "text_encoder.onnx")
    text_io, text_diff = _finish_graph(bundle / "text_encoder.onnx", precision,
                                       lambda s: text_encoder_parity(encoder, s, model.pre))
    shutil.copy(encoder.tokenizer_json, bundle / "tokenizer.json")
    manifest = Manifest(
        labels=info["labels"],
        thresholds=info["thresholds"],
        preprocessing=info["preprocessing"],
        faces=info["faces"],
        text_dim=info["student"]["text_dim"],
        precision=precision,
        student_config=info["student"],
        graphs={"student": "student.onnx", "text_encoder": "text_encoder.onnx",
                "tokenizer": "tokenizer.json", "student_weights": "student.safetensors"},
        inputs={"student": student_io["inputs"], "text_encoder": text_io["inputs"]},
        outputs={"student": student_io["outputs"], "text_encoder": text_io["outputs"]},
        dynamic_axes=dynamic_axes(model.pre),
        heads=list(HEADS),
        # The modalities the student was trained to read; the engine hides the others, so
        # an untrained branch (e.g. audio in a model that never heard real speech) never
        # reaches the fusion.
        modalities=list(info.get("options", {}).get("modalities", MODALITIES)),
        # What each backend runs.  The bundle has no PyTorch copy of the text
        # encoder, so the torch backend runs text_encoder.onnx in ONNX Runtime.
        backends={
            "onnxruntime": {"student": "student.onnx", "text_encoder": "text_encoder.onnx"},
            "torch": {"student": "student.safetensors", "text_encoder": "text_encoder.onnx (onnxruntime)"},
        },
        training={"data": info["data"], "selected_epoch": info["selected_epoch"],
                  "dev_weighted_f1": info["dev_weighted_f1"],
                  # how training cut and split its corpus: `trainer evaluate BUNDLE` does the same
                  "speech_pad_ms": info.get("speech_pad_ms", 0),
                  "dev_fraction": info["options"]["dev_fraction"], "seed": info["options"]["seed"]},
        parity_max_abs_diff={"student": student_diff, "text_encoder": text_diff},
    )
    if calibrated is not None and calibrated["calibration"] is None:
        manifest.calibration = calibrated["summary"]  # why there is none
        info = dict(info, calibration=calibrated["summary"])
    elif calibrated is not None:
        write_file(bundle / CALIBRATION, json.dumps(calibrated["calibration"].to_dict(info["labels"]), indent=2) + "\n")
        manifest.graphs["calibration"] = CALIBRATION
        manifest.thresholds = calibrated["thresholds"]  # tuned on the calibrated probabilities
        manifest.calibration = calibrated["summary"]
        info = dict(info, thresholds=calibrated["thresholds"], calibration=calibrated["summary"])
    write_card_files(bundle, build_card(info))  # hashed with the rest by write_manifest
    write_manifest(bundle, manifest)
    return manifest.to_dict()


def export(run: Path, bundle: Path, precision: str = "fp32", tensorrt: bool = False,
           triton: Path | None = None, calibration: str = "platt", progress: bool = False) -> dict:
    """`trainer export`: bundle (+ TensorRT engines, + Triton repository) of a run.

    calibration: platt | temperature (fitted on the run's dev split, trainer.calibrate) | none."""
    if tensorrt:
        from engines.tensorrt_backend import import_tensorrt

        import_tensorrt()  # fail now, not after minutes of ONNX export
    if calibration not in (*METHODS, "none"):
        raise ValueError(f"calibration {calibration!r}: expected one of {', '.join(METHODS)}, none")
    info, model = load_run(run)
    calibrated = None
    if calibration != "none":
        from trainer.calibrate import calibrate_run

        calibrated = calibrate_run(run, info, calibration, progress)
    manifest = write_bundle(model, info, bundle, precision, calibrated)
    if tensorrt:
        from engines.tensorrt_build import build_engines

        manifest = build_engines(bundle)
    if triton is not None:
        from engines.triton import write_model_repository

        write_model_repository(bundle, triton)
    return manifest
