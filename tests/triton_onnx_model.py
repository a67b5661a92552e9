"""A Triton python-backend model that runs its version folder's model.onnx with ONNX Runtime.

tests/triton_server.py copies it in as `model.py` beside each model.onnx of a repository
that `trainer export --triton` wrote: the tritonserver of the nvidia-pytriton wheel has the
python backend but not the onnxruntime one.  Names, shapes, max_batch_size and dynamic
batching stay those of the exported config.pbtxt, so the client cannot tell the difference.
It runs inside the backend's stub process, where triton_python_backend_utils is importable
and numpy is 1.x (see STUB_SITE in tests/triton_server.py).
"""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the test machine has 2 cores and runs the client too
        options.inter_op_num_threads = 1
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        # The dynamic batcher hands over the requests it gathered; those whose tensors have
        # the same shape (the text encoder's token axis varies) run as one ONNX Runtime call,
        # as Triton's onnxruntime backend would run them.
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, feed in enumerate(feeds):
            groups.setdefault(tuple(a.shape[1:] for a in feed.values()), []).append(i)
        responses = [None] * len(requests)
        for members in groups.values():
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
            outputs = self.session.run(self.outputs, batch)
            start = 0
            for i in members:
                rows = slice(start, start + len(feeds[i][self.inputs[0]]))
                start = rows.stop
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(out[rows]))
                    for name, out in zip(self.outputs, outputs)])
        return responses
