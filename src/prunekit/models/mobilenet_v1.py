"""MobileNet V1 (Howard et al., 2017) with a width multiplier, any input size/channels/classes.

Module names make layers easy to select by regex: ``stem.conv``, ``blocks.{0..12}.dw.conv``
(depthwise 3x3), ``blocks.{0..12}.pw.conv`` (pointwise 1x1), ``classifier``.

>>> from prunekit.models import create_model
>>> m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
>>> sum(p.numel() for p in m.parameters()) > 0
True
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PrunekitError
from ._registry import register_model

# (pointwise output channels, depthwise stride) for the 13 depthwise-separable blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)

_ACTS = {"relu6": nn.ReLU6, "relu": nn.ReLU}


def scale_channels(channels: int, width: float) -> int:
    """Channels after the width multiplier, rounded like Keras/the paper: ``int(c * width)``, at least 1."""
    return max(1, int(channels * width))


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``pad`` reproduces TF/Keras 'same' padding on stride 2."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str = "relu6", padding: str = "symmetric", bn_eps: float = 1e-5):
        super().__init__()
        tf_pad = padding == "tf" and stride > 1
        self.pad = nn.ZeroPad2d((0, 1, 0, 1)) if tf_pad else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, 0 if tf_pad else kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=bn_eps)
        self.act = _ACTS[act](inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (``dw``) followed by pointwise 1x1 (``pw``)."""

    def __init__(self, cin: int, cout: int, stride: int, **kw):
        super().__init__()
        self.dw = ConvBNAct(cin, cin, 3, stride, groups=cin, **kw)
        self.pw = ConvBNAct(cin, cout, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    """MobileNet V1.

    Args:
        width: width multiplier alpha (any float > 0; the paper uses 0.25, 0.5, 0.75, 1.0).
        num_classes: classifier outputs.
        in_channels: input image channels (1 for Fashion-MNIST, 3 for RGB).
        small_input: first conv with stride 1 (for 28x28/32x32 inputs) instead of 2.
        dropout: dropout probability before the classifier.
        act: ``relu6`` (Keras) or ``relu`` (paper).
        padding: ``symmetric`` (PyTorch) or ``tf`` (Keras' asymmetric 'same' padding on stride-2 layers).
        bn_eps: BatchNorm epsilon (Keras uses 1e-3).
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 small_input: bool = False, dropout: float = 0.2, act: str = "relu6",
                 padding: str = "symmetric", bn_eps: float = 1e-5):
        super().__init__()
        _check(width, num_classes, in_channels, dropout, act, padding, bn_eps)
        kw = dict(act=act, padding=padding, bn_eps=bn_eps)
        c = scale_channels(32, width)
        self.stem = ConvBNAct(in_channels, c, 3, 1 if small_input else 2, **kw)
        blocks = []
        for cout, stride in BLOCKS:
            cout = scale_channels(cout, width)
            blocks.append(DepthwiseSeparable(c, cout, stride, **kw))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


def _check(width, num_classes, in_channels, dropout, act, padding, bn_eps) -> None:
    if not (isinstance(width, (int, float)) and 0 < width <= 16):
        raise PrunekitError(f"mobilenet_v1: width must be a number in (0, 16], got {width!r}")
    for name, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise PrunekitError(f"mobilenet_v1: {name} must be a positive integer, got {v!r}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise PrunekitError(f"mobilenet_v1: dropout must be in [0, 1), got {dropout!r}")
    if act not in _ACTS:
        raise PrunekitError(f"mobilenet_v1: act must be one of {sorted(_ACTS)}, got {act!r}")
    if padding not in ("symmetric", "tf"):
        raise PrunekitError(f"mobilenet_v1: padding must be 'symmetric' or 'tf', got {padding!r}")
    if not (isinstance(bn_eps, float) and bn_eps > 0):
        raise PrunekitError(f"mobilenet_v1: bn_eps must be a positive float, got {bn_eps!r}")


@register_model("mobilenet_v1", default_input={"size": [224, 224], "channels": 3})
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNet V1; see :class:`MobileNetV1` for the arguments."""
    return MobileNetV1(**kwargs)
