"""Shape propagation: the fast paths (BatchNorm, Conv2d computed without their fake kernels) give the shapes the
real kernels give."""

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from prunekit.graph.trace import _ShapeRecorder, propagate_shapes, trace


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, (3, 5), stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=8)
        self.c = nn.Conv2d(8, 6, 1, padding="same")  # string padding: the real kernel decides
        self.d = nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect")
        self.e = nn.Conv2d(4, 4, 4, stride=3)
        self.bn1 = nn.BatchNorm1d(4)

    def forward(self, x):
        x = self.e(self.d(self.c(self.b(torch.relu(self.bn(self.a(x)))))))
        return self.bn1(x.mean((2, 3)))


def shapes(gm, x, fast):
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, torch.no_grad():
        rec = _ShapeRecorder(gm, fast=fast)
        rec.run(mode.from_tensor(x))
    return rec.shapes


@pytest.mark.parametrize("size", [(17, 23), (32, 32), (9, 40)])
def test_fast_shapes_equal_the_kernels_shapes(size):
    gm = trace(Convs().eval())
    x = torch.zeros(2, 3, *size)
    fast, slow = shapes(gm, x, True), shapes(gm, x, False)
    assert fast == slow
    real = propagate_shapes(gm, x)
    assert real == slow and real["e"][1] == 4


def test_an_input_too_small_for_a_conv_still_fails_clearly():
    from prunekit.errors import PrunekitError

    gm = trace(Convs().eval())
    with pytest.raises(PrunekitError, match="fails on an input of shape"):
        propagate_shapes(gm, torch.zeros(2, 3, 3, 3))
