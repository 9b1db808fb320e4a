import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError, VerificationError
from prunekit.graph import DependencyGraph
from prunekit.models import create_model
from prunekit.surgery import apply_surgery, shrink, verify, zero_channels

SHAPE = (1, 28, 28)


def model():
    torch.manual_seed(0)
    m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
    nn.init.normal_(m.classifier.weight, 0, 1.0)  # logits of a realistic size (untrained ones are ~1e-3)
    return m


def test_zero_rule_finds_zeroed_filters_and_bn():
    m = model()
    g = DependencyGraph(m, SHAPE)
    with torch.no_grad():
        # a channel is removable when everything that produces it is zero: the pointwise filter and its BN, and
        # the coupled depthwise filter and BN of the next block (what Pruner.bake() leaves behind)
        for i in (2, 5):
            for part in (m.blocks[i].pw, m.blocks[i + 1].dw):
                part.conv.weight[[1, 4]] = 0
                part.bn.weight[[1, 4]] = 0
                part.bn.bias[[1, 4]] = 0
        # zero pointwise weights alone are NOT removable: the next depthwise BN still adds a constant
        m.blocks[7].pw.conv.weight[3] = 0
        m.blocks[7].pw.bn.weight[3] = 0
        m.blocks[7].pw.bn.bias[3] = 0
    removed = zero_channels(m, g)
    assert removed == {"blocks.2.pw.conv": [1, 4], "blocks.5.pw.conv": [1, 4]}
    res = shrink(m, SHAPE, "zero", graph=g)
    assert res.max_abs_diff <= 1e-4 and res.channels_removed == 4


def test_inplace_and_copy():
    m = model()
    before = sum(p.numel() for p in m.parameters())
    res = shrink(m, SHAPE, {"blocks.0.pw.conv": [0, 1]})
    assert sum(p.numel() for p in m.parameters()) == before  # copy by default
    res2 = shrink(m, SHAPE, {"blocks.0.pw.conv": [0, 1]}, inplace=True)
    assert res2.model is m and sum(p.numel() for p in m.parameters()) == res.params_after


def test_refuses_to_remove_every_channel_and_bad_requests():
    m = model()
    g = DependencyGraph(m, SHAPE)
    n = g.by_name["blocks.0.pw.conv"].size
    with pytest.raises(PrunekitError, match="refusing to remove every channel"):
        shrink(m, SHAPE, {"blocks.0.pw.conv": list(range(n))}, graph=g)
    with pytest.raises(PrunekitError, match="unknown channel group 'nope'"):
        shrink(m, SHAPE, {"nope": [0]}, graph=g)
    with pytest.raises(PrunekitError, match="cannot be pruned: model output"):
        shrink(m, SHAPE, {"classifier": [0]}, graph=g)
    with pytest.raises(PrunekitError, match="out of range"):
        shrink(m, SHAPE, {"blocks.0.pw.conv": [n]}, graph=g)
    with pytest.raises(PrunekitError, match="unknown channel rule"):
        shrink(m, SHAPE, "ones", graph=g)


def test_verification_catches_a_wrong_model():
    m = model()
    g = DependencyGraph(m, SHAPE)
    x = torch.randn(2, *SHAPE)
    import copy

    wrong = copy.deepcopy(m)
    apply_surgery(wrong, g, {"blocks.10.pw.conv": list(range(0, 64, 2))})  # compared with the *unmasked* model
    with torch.no_grad():
        wrong.classifier.bias.add_(1e-3)  # and a small error on top: far above the 1e-4 tolerance
    with pytest.raises(VerificationError, match="max abs diff"):
        verify(m, wrong, x)
    assert verify(m, copy.deepcopy(m), x) == 0.0
