"""A Triton Inference Server model repository from a bundle.

  DIR/emotion_student/config.pbtxt        DIR/emotion_student/1/model.onnx
  DIR/emotion_text_encoder/config.pbtxt   DIR/emotion_text_encoder/1/model.onnx

Both run on Triton's ONNX Runtime backend with dynamic batching.  Dims are
written without the batch axis (Triton adds it, up to max_batch_size); other
named axes (tokens) become -1.  Preprocessing, tokenisation and thresholds
stay with the client: they are in the bundle's manifest.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from common.atomic import replacing, replacing_dir, write_file
from engines.bundle import open_bundle

MODELS = {"student": "emotion_student", "text_encoder": "emotion_text_encoder"}
MAX_BATCH = 32
PREFERRED_BATCH = (8, 16, 32)
# Longest a request waits for others to batch with: small beside an utterance's seconds.
MAX_QUEUE_DELAY_US = 2000
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def dims(spec: dict) -> list[int]:
    """A manifest tensor's dims as Triton has them: without the batch axis ([0]), named axes -1."""
    return [d if isinstance(d, int) else -1 for d in spec["shape"][1:]]


def _tensors(kind: str, specs: dict) -> str:
    rows = []
    for name, spec in specs.items():
        rows.append(f'  {{\n    name: "{name}"\n    data_type: {DTYPES[spec["dtype"]]}\n'
                    f'    dims: [ {", ".join(map(str, dims(spec)))} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def model_config(name: str, inputs: dict, outputs: dict) -> str:
    """config.pbtxt text for one ONNX model; inputs/outputs as in the manifest."""
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {MAX_BATCH}\n"
        + _tensors("input", inputs)
        + _tensors("output", outputs)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, PREFERRED_BATCH))} ]\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n"
        "}\n"
    )


def write_model_repository(bundle_path: str | Path, out: str | Path) -> list[Path]:
    """Write (or overwrite) both models of the bundle into the repository `out`."""
    bundle, out = open_bundle(bundle_path), Path(out)
    written = []
    for graph, model in MODELS.items():
        # Each model's directory is swapped in whole (its other versions kept): a server that
        # polls the repository never loads a half-copied graph.
        with replacing_dir(out / model, keep=True) as tmp:
            (tmp / "1").mkdir(exist_ok=True)
            with replacing(tmp / "1" / "model.onnx") as onnx:
                shutil.copy(bundle.file(graph), onnx)
            write_file(tmp / "config.pbtxt", model_config(model, *bundle.entries.io(graph)))
        written += [out / model / "config.pbtxt", out / model / "1" / "model.onnx"]
    return written
