"""Run a bundle's TensorRT engines (student.plan, text_encoder.plan) on a CUDA GPU.

TensorRT 10+ name-based tensor API: set each input's shape and every tensor's
device address, then execute_async_v3 on a CUDA stream.  Device memory and the
stream come from PyTorch, which a GPU machine has anyway, so this needs no
pycuda / cuda-python.  Batches larger than the optimisation profile's maximum
are split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.backends import Backend, BackendUnavailable, in_batches
from engines.bundle import Bundle

INSTALL_HINT = "pip install 'tensorrt>=10' (or the [gpu] extra) on a machine with an NVIDIA GPU and driver"


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable naming what is missing."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel's CUDA libraries are missing
        raise BackendUnavailable(f"TensorRT is not available (import tensorrt failed: {exc}); {INSTALL_HINT}") from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: this code uses the TensorRT 10 API; "
                                 + INSTALL_HINT)
    return trt


class _Plan:
    """One deserialised engine with its execution context."""

    def __init__(self, trt, runtime, path: Path):
        import torch

        self.torch = torch
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{path}: TensorRT cannot load this engine (built for another GPU or "
                                     "TensorRT version?); rebuild it with `python -m engines.tensorrt_build BUNDLE`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in names}
        self.max_batch = self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for a batch of at most max_batch rows, as float32."""
        torch = self.torch
        # Everything (copies and the engine) runs on the current stream, so it is ordered.
        stream = torch.cuda.current_stream()
        tensors = {}
        for name in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", self.dtypes[name])
            tensors[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
        for name, tensor in tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return tensors[self.outputs[0]].float().cpu().numpy()  # .cpu() waits for the stream

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return in_batches(self, feeds, self.max_batch)


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, bundle: Bundle):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'tensorrt': PyTorch sees no CUDA GPU")
        built = bundle.manifest.get("tensorrt", {}).get("version")
        if built != trt.__version__:
            # Plans are tied to the TensorRT version (and GPU) that built them.
            raise BackendUnavailable(f"{bundle.path}: engines built with TensorRT {built}, this is "
                                     f"{trt.__version__}; rebuild: python -m engines.tensorrt_build {bundle.path}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._student = _Plan(trt, self._runtime, bundle.file("student_plan"))
        self._text = _Plan(trt, self._runtime, bundle.file("text_encoder_plan"))

    def run_student(self, feeds):
        return self._student.run(feeds)

    def embed_text(self, tokens):
        return self._text.run(tokens)
