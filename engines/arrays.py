"""Arrays on the wire: raw bytes beside a JSON header that names their dtype and shape.

The one codec of the pipeline's bus (realtime/bus.py) and of the inference service
(engines/service.py).  No pickle and no JSON of floats: the receiver gets the sender's
bits, and a malformed array is a clear error, never code execution or a huge allocation.
"""
from __future__ import annotations

import math
import re

import numpy as np

# Plain numbers only, named by a short string: np.dtype() also accepts structured and object
# types, which have no business on the wire.
_DTYPE = re.compile(r"[<>|=]?[biuf][1248]")


class ArrayFormatError(ValueError):
    """An array whose header and bytes do not describe a plain numeric array."""


def spec(array: np.ndarray) -> list:
    """[dtype, shape] as the header carries them, e.g. ['<f4', [2, 384]]."""
    return [array.dtype.str, list(array.shape)]


def payload(array: np.ndarray) -> memoryview:
    """The array's bytes, without a copy where it is already contiguous."""
    array = np.ascontiguousarray(array)
    return array.data.cast("B") if array.size else memoryview(b"")


def decode(dtype, shape, data, max_rank: int) -> np.ndarray:
    """The array that `spec` and `payload` sent; ArrayFormatError for anything else.  The
    result is a read-only view of `data`."""
    if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
        raise ArrayFormatError(f"array dtype must be a numeric type such as '<f4', got {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > max_rank
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ArrayFormatError(f"array shape must be a list of at most {max_rank} sizes >= 0, got {shape!r}")
    try:
        kind = np.dtype(dtype)
    except TypeError as exc:  # e.g. 'f1': the pattern allows sizes no type has
        raise ArrayFormatError(f"array dtype {dtype!r}: {exc}") from exc
    size = len(memoryview(data).cast("B"))
    if math.prod(shape) * kind.itemsize != size:
        raise ArrayFormatError(f"array frame has {size} bytes, its header says {shape} of {kind}")
    return np.frombuffer(data, dtype=kind).reshape(shape)
