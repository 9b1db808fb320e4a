"""Masks stay live under torch.compile: updating them between calls changes the compiled model's output exactly
as the eager model's, and pruned filters get no gradient (the compiled graph must not bake a mask in)."""

import shutil

import pytest
import torch

from prunekit.models import create_model
from prunekit.pruning import OneShot, PruningConfig, prune_

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                reason="torch.compile's CPU backend needs a C++ compiler")  # ~15 s on 2 cores


def test_compiled_model_follows_mask_updates():
    torch.manual_seed(0)
    m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
    p = prune_(m, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28))
    cm = torch.compile(m)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gid = next(g.id for g in p.groups if g.name == "blocks.3.pw.conv")
    for s in (0.0, 0.25, 0.5):
        p._prune_to(s)
        m.eval()
        with torch.no_grad():
            assert torch.allclose(cm(x), m(x), atol=1e-5)
        m.train()
        m.zero_grad()
        cm(x).pow(2).sum().backward()
        dead = torch.as_tensor(~p.alive()[gid])
        g = m.blocks[3].pw.conv.weight.grad.flatten(1).abs().sum(1)
        assert int(dead.sum()) == round(s * len(dead))
        if dead.any():
            assert float(g[dead].abs().max()) == 0.0 and float(g[~dead].abs().max()) > 0


def test_masked_model_compiled_after_a_dense_one_of_the_same_class():
    """Dynamo does not guard on module hooks (``skip_nnmodule_hook_guards``): with hook-applied masks, a masked
    model compiled after a dense model of the same class silently ran the dense graph. Folded masks replace the
    BatchNorm's ``forward``, which dynamo does guard on."""
    def make():
        torch.manual_seed(0)
        m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True, dropout=0.0)
        with torch.no_grad():
            for q in m.parameters():
                q.add_(torch.randn_like(q) * 0.1)
        return m.eval()

    torch._dynamo.reset()  # nothing compiled by an earlier test may be reused
    dense, masked = make(), make()
    prune_(masked, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28)).step(0)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.compile(dense)(x)
        out = torch.compile(masked)(x)
        ref, d = masked(x), dense(x)
    assert (ref - d).abs().max() > 0.1  # the masks matter
    assert torch.allclose(out, ref, atol=1e-5)
