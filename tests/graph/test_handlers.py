"""The layer-handler table: users register their own module types, and the graph, surgery and the saved-model
format all follow (a custom per-channel layer, a custom fused block, a subclass that changes forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.graph import (
    DependencyGraph,
    LayerHandler,
    PerChannelHandler,
    handler_for,
    register_handler,
)
from prunekit.graph.handlers import HANDLERS, ConvHandler, _with_tensors
from prunekit.surgery import shrink

SHAPE = (3, 16, 16)


class Scale(nn.Module):
    """y = x * w[c]: a learnable per-channel scale (no size attribute)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class ConvBNAct(nn.Module):
    """A fused block with its own forward and its own channel count: conv -> BN -> ReLU in one module."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.out_channels = cout
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class ConvBNActHandler(LayerHandler):
    """Produces ``out_channels``; slicing removes conv filters / inputs and the BN's entries."""

    def flow(self, f):
        m, x = f.module, f.x
        if x.cdim != 1 or len(x.labels) != m.conv.in_channels:
            return f.opaque("ConvBNAct input does not match")
        out = f.new(m.out_channels)
        f.slot("out", 0, out)
        f.slot("in", 1, x.labels)
        return f.output(out, 1, "producer")

    def shape(self, m):
        return {"type": type(m).__name__, "in_channels": m.conv.in_channels, "out_channels": m.out_channels}

    def resize(self, m, shape):
        new = _with_tensors(m, {"out_channels": shape["out_channels"]}, {})
        new.conv = ConvHandler().resize(m.conv, {**ConvHandler().shape(m.conv), "in_channels": shape["in_channels"],
                                                 "out_channels": shape["out_channels"]})
        new.bn = PerChannelHandler().resize(m.bn, {"type": "BatchNorm2d", "num_features": shape["out_channels"]})
        return new

    def shrink(self, name, m, keep):
        ko = keep.get("out", np.arange(m.out_channels))
        ki = keep.get("in", np.arange(m.conv.in_channels))
        new = _with_tensors(m, {"out_channels": len(ko)}, {})
        new.conv = ConvHandler().shrink(name, m.conv, {"out": ko, "in": ki}) or m.conv
        new.bn = PerChannelHandler().shrink(name, m.bn, {"channel": ko}) or m.bn
        return new


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ConvBNAct(3, 12)
        self.s = Scale(12)
        self.b = ConvBNAct(12, 16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.b(self.s(self.a(x))))


@pytest.fixture
def registered():
    saved = dict(HANDLERS)
    register_handler(Scale)(PerChannelHandler(zero_preserving=True, size_attr=None))
    register_handler(ConvBNAct)(ConvBNActHandler())
    yield
    HANDLERS.clear()
    HANDLERS.update(saved)


def _randomized(seed=0):
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.bias.uniform_(-0.3, 0.3)
    return net


def test_without_handlers_the_custom_layers_are_traced_and_what_is_not_understood_is_locked():
    net = _randomized()
    g = DependencyGraph(net, SHAPE)
    by = {grp.name: grp for grp in g.groups}
    # the fused blocks are traced into (conv, BN, relu are understood): b's channels are prunable; the scale
    # multiplies by its parameter viewed as (1, C, 1, 1): the parameter is sliced with a's channels
    assert by["b.conv"].prunable and by["a.conv"].prunable and "param:s.weight" in by["a.conv"].members
    res = shrink(net, SHAPE, {"a.conv": [1, 4]}, graph=g)  # verified
    assert res.model.s.weight.shape == (10,) and res.model.a.conv.out_channels == 10

    class FixedScale(Scale):  # the same, but viewed with a literal size: wrong after pruning, so locked
        def forward(self, x):
            return x * self.weight.view(1, 12, 1, 1)

    net.s = FixedScale(12)
    g = DependencyGraph(net.eval(), SHAPE)
    why = {grp.name: grp for grp in g.groups}["a.conv"].locked
    assert why and "elementwise op with a computed tensor" in why


def test_registered_handlers_make_custom_modules_prunable_and_exact(registered, tmp_path):
    net = _randomized()
    g = DependencyGraph(net, SHAPE)
    by = {grp.name: grp for grp in g.groups}
    assert "a" in by and by["a"].prunable and "b" in by and by["b"].prunable  # the fused blocks are producers
    assert "s.channel" in by["a"].members and "b.in" in by["a"].members
    removed = {"a": [0, 3, 7], "b": [1, 2]}
    x = torch.randn(4, *SHAPE)
    res = shrink(net, SHAPE, removed, graph=g, inputs=x)  # verified against the masked model
    small = res.model
    assert small.a.out_channels == 9 and small.s.weight.shape == (9,) and small.b.conv.in_channels == 9
    assert small.b.out_channels == 14 and small.head[2].in_features == 14
    assert res.max_abs_diff <= 1e-5

    from prunekit import load, save
    from prunekit.models import InputSpec, ModelSpec, register_model
    from prunekit.models._registry import _REGISTRY

    if "handler_test_net" not in _REGISTRY:
        register_model("handler_test_net")(lambda: Net())
    spec = ModelSpec("handler_test_net", {}, InputSpec([16, 16], 3, [0.0] * 3, [1.0] * 3))
    save(small, tmp_path / "m", spec)
    back = load(tmp_path / "m").model.eval()  # the fused blocks rebuilt from model.json through the handler
    with torch.no_grad():
        assert torch.equal(back(x), small(x))


def test_a_subclass_that_changes_forward_does_not_inherit_the_handler():
    class PaddedConv(nn.Conv2d):  # pads itself, like timm's Conv2dSame
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    class RenamedConv(nn.Conv2d):  # changes nothing that matters
        pass

    assert handler_for(RenamedConv(3, 4, 1)) is handler_for(nn.Conv2d(3, 4, 1))
    assert handler_for(PaddedConv(3, 4, 1)) is None


def test_the_docs_example_runs_and_holds():
    """docs/handlers.md's example (a convolution with a learnable output scale) runs as written; its asserts hold."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "handlers.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 1 and "register_handler(ScaledConv)" in blocks[0]
    before = dict(HANDLERS)
    try:
        ns: dict = {"__name__": "handlers_doc_example"}
        exec(compile(blocks[0], "docs/handlers.md", "exec"), ns)  # noqa: S102 - our own documentation
        assert ns["result"].params_after < ns["result"].params_before
    finally:
        HANDLERS.clear()
        HANDLERS.update(before)
    # without the handler the same model is traced into, and its scaled convolutions are locked, saying why
    g = DependencyGraph(ns["net"], (3, 32, 32))
    assert not [grp.name for grp in g.groups if grp.prunable and grp.name != "7"]
    assert any("unsupported operation at node 'conv2d'" in (grp.locked or "") for grp in g.groups)
