"""Float16 ONNX graphs: weights and compute in half precision, inputs and outputs in float32.

Used by `trainer export --precision fp16` and by the TensorRT builder, which
builds strongly typed engines: the precision is in the graph, not in builder
flags (TensorRT 11 removed BuilderFlag.FP16).

The converter is the one that ships inside onnxruntime (`onnxruntime.transformers
.float16`), so this needs no extra package beyond `onnx`.  Inputs and outputs
stay float32 so callers (ONNX Runtime, Triton, TensorRT) feed the same arrays
whatever the precision.
"""
from __future__ import annotations

from pathlib import Path


def to_fp16(model):
    """An onnx.ModelProto converted to float16 compute, float32 I/O."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types inserts a Cast after each float input and before each output.
    return convert_float_to_float16(model, keep_io_types=True)


def convert_file(src: Path, dst: Path) -> None:
    """Write the float16 version of the ONNX graph at src to dst (src == dst is fine)."""
    import onnx

    onnx.save(to_fp16(onnx.load(str(src))), str(dst))


def fp16_bytes(src: Path) -> bytes:
    """The float16 version of an ONNX graph, serialised (for parsers that take bytes)."""
    import onnx

    return to_fp16(onnx.load(str(src))).SerializeToString()
