"""Masks stay live under torch.compile: updating them between calls changes the compiled model's output exactly
as the eager model's, and pruned filters get no gradient (the compiled graph must not bake a mask in).

A four-convolution network instead of MobileNet V1: the mechanism (masks folded into BatchNorm, dynamo's guards)
does not depend on the architecture, and compiling it takes ~4x less time (12 s against 45 s on 2 cores)."""

import shutil

import pytest
import torch
from torch import nn

from prunekit.pruning import OneShot, PruningConfig, prune_

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                reason="torch.compile's CPU backend needs a C++ compiler")


class Small(nn.Module):
    """Conv-BN-ReLU ×4 with a depthwise convolution (its channels follow the preceding group) and a classifier."""

    def __init__(self):
        super().__init__()

        def cbr(i, o, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU())

        self.features = nn.Sequential(cbr(1, 8, 2), cbr(8, 16), cbr(16, 16, 2, 16), cbr(16, 32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _pruner(m):
    return prune_(m, PruningConfig(schedule=OneShot(0.5), layers=["all"]), (1, 28, 28))


def test_compiled_model_follows_mask_updates():
    torch.manual_seed(0)
    m = Small()
    p = _pruner(m)
    cm = torch.compile(m)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gid = next(g.id for g in p.groups if g.name == "features.1.0")  # feeds the depthwise convolution
    for s in (0.0, 0.25, 0.5):
        p._prune_to(s)
        m.eval()
        with torch.no_grad():
            assert torch.allclose(cm(x), m(x), atol=1e-5)
        m.train()
        m.zero_grad()
        cm(x).pow(2).sum().backward()
        dead = torch.as_tensor(~p.alive()[gid])
        g = m.features[1][0].weight.grad.flatten(1).abs().sum(1)
        assert int(dead.sum()) == round(s * len(dead))
        if dead.any():
            assert float(g[dead].abs().max()) == 0.0 and float(g[~dead].abs().max()) > 0


def test_masked_model_compiled_after_a_dense_one_of_the_same_class():
    """Dynamo does not guard on module hooks (``skip_nnmodule_hook_guards``): with hook-applied masks, a masked
    model compiled after a dense model of the same class silently ran the dense graph. Folded masks replace the
    BatchNorm's ``forward``, which dynamo does guard on."""
    def make():
        torch.manual_seed(0)
        m = Small()
        with torch.no_grad():
            for q in m.parameters():
                q.add_(torch.randn_like(q) * 0.1)
            for mod in m.modules():  # BatchNorm statistics away from (0, 1), so that masking shows in eval
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.5, 2.0)
        return m.eval()

    torch._dynamo.reset()  # nothing compiled by an earlier test may be reused
    dense, masked = make(), make()
    _pruner(masked).step(0)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.compile(dense)(x)
        out = torch.compile(masked)(x)
        ref, d = masked(x), dense(x)
    assert (ref - d).abs().max() > 0.1  # the masks matter
    assert torch.allclose(out, ref, atol=1e-5)
