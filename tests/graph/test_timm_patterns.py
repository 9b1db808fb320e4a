"""The patterns timm CNNs use, each on a small module: hand-built ones that mimic timm's blocks (run without timm),
timm's own layers and a few small timm models (skipped when timm is not installed).

Every case builds the graph, checks which channels are prunable and which are locked (and that the reason names
what locks them), removes random channels, and lets ``shrink`` verify the result against the masked model
(max abs diff <= 1e-4); most also go through ``prunekit.save`` / ``load``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import saved
from prunekit.graph import DependencyGraph, handler_for, register_handler
from prunekit.graph import handlers as handler_table
from prunekit.graph.handlers import PerChannelHandler, register_lazy_handlers
from prunekit.graph.masking import MaskHooks, group_masks, mask_points
from prunekit.models import InputSpec, ModelSpec, list_models, register_model
from prunekit.surgery import example_inputs, shrink

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")


# --- helpers ----------------------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics, affine parameters and biases, so that removed channels carry non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name, b in m.named_buffers(recurse=False):
                if name == "running_mean":
                    b.copy_(torch.randn(b.shape, generator=g) * 0.3)
                elif name == "running_var":
                    b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            for name, p in m.named_parameters(recurse=False):
                if p.ndim == 1:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if name == "weight" else 0.0))
    return model.eval()


def prune_randomly(model: nn.Module, shape, seed: int = 0, graph: DependencyGraph | None = None):
    """Remove 1..size-1 random channels of every prunable group; ``shrink`` verifies. Returns (graph, result, x)."""
    graph = graph or DependencyGraph(model, shape)
    rng = np.random.default_rng(seed)
    removed = {g.name: sorted(rng.choice(g.size, int(rng.integers(1, g.size)), replace=False).tolist())
               for g in graph.groups if g.prunable}
    assert removed, "nothing to prune"
    x = example_inputs(shape, batch=2, seed=seed)
    res = shrink(model, shape, removed, graph=graph, inputs=x)
    with torch.no_grad():
        scale = float(res.model(x).abs().max())  # untrained RepVGG / MobileOne logits reach 1e4 and more
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-4 + 1e-5 * scale
    assert res.params_after < res.params_before
    return graph, res, x


def roundtrip(small: nn.Module, arch: str, kwargs: dict, shape, x: torch.Tensor, tmp_path) -> nn.Module:
    """Save the shrunk model and load it back (rebuilt from ``arch`` + the recorded layer shapes): same outputs."""
    spec = ModelSpec(arch, kwargs, InputSpec(size=list(shape[1:]), channels=shape[0]))
    saved.save(small, tmp_path / "m", spec)
    back = saved.load(tmp_path / "m").model.eval()
    with torch.no_grad():
        assert torch.equal(back(x), small.eval()(x))
    return back


def register(name: str, builder) -> str:
    if name not in list_models():
        register_model(name)(builder)
    return name


def locked(graph: DependencyGraph, producer: str) -> list[str]:
    return [g.locked for g in graph.groups if producer in g.producers and g.locked]


def prunable(graph: DependencyGraph, producer: str) -> list[int]:
    return [g.size for g in graph.groups if producer in g.producers and g.prunable]


# --- functional norms (timm's BatchNormAct2d calls F.batch_norm) ------------------------------------------


class FnBatchNorm(nn.Module):
    """A BatchNorm written with ``F.batch_norm`` over the module's own tensors (``computed``: a scaled weight)."""

    def __init__(self, c: int, computed: bool = False):
        super().__init__()
        self.computed = computed
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        w = self.weight * 2 if self.computed else self.weight
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, w, self.bias, self.training, 0.1, 1e-5))


class FnNet(nn.Module):
    def __init__(self, computed: bool = False, group_norm: bool = False):
        super().__init__()
        self.group_norm = group_norm
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = FnBatchNorm(8, computed)
        self.b = nn.Conv2d(8, 6, 1)
        self.gn_w = nn.Parameter(torch.ones(6))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.b(self.bn(self.a(x)))
        if self.group_norm:
            y = F.group_norm(y, 2, self.gn_w)
        return self.fc(F.relu(y).mean((2, 3)))


def test_functional_batch_norm_slices_the_module_tensors(tmp_path):
    net = randomize(FnNet())
    g, res, x = prune_randomly(net, (3, 8, 8))
    grp = next(grp for grp in g.groups if "a" in grp.producers)
    assert grp.prunable and {"param:bn.weight", "param:bn.bias", "param:bn.running_mean",
                             "param:bn.running_var"} <= set(grp.members)
    kept = res.model.a.out_channels
    assert kept < 8 and all(t.shape == (kept,) for t in (res.model.bn.weight, res.model.bn.running_var))
    roundtrip(res.model, register("timm_patterns_fn_bn", FnNet), {}, (3, 8, 8), x, tmp_path)


def test_functional_norms_the_graph_cannot_resize_are_locked():
    g = DependencyGraph(randomize(FnNet(computed=True)), (3, 8, 8))
    assert any("batch_norm with a computed weight" in why for why in locked(g, "a"))
    g = DependencyGraph(randomize(FnNet(group_norm=True)), (3, 8, 8))
    assert any("group_norm with a constant number of groups" in why for why in locked(g, "b"))
    assert prunable(g, "a") == [8]


# --- constant channel slices (DPN's dual path, ReXNet's partial shortcut, GhostNet's crop) ----------------------


class DualPath(nn.Module):
    """``x[:, :3]`` (residual part) + ``x[:, 3:]`` (dense part), a no-op crop ``[:, :14]`` and ``cat``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.r = nn.Conv2d(8, 3, 1)
        self.d = nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(14, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        res, dense = x[:, :3], x[:, 3:]
        y = torch.cat([res + self.r(x), dense, self.d(x)], dim=1)[:, :14]
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


def test_constant_slices_lock_the_prefix_and_keep_the_rest_prunable(tmp_path):
    g, res, x = prune_randomly(randomize(DualPath()), (3, 8, 8))
    assert prunable(g, "a") == [5]  # a's channels 3..7 (the dense part)
    assert any("the slice [0:3] of 8 channels has constant bounds" in why and "getitem" in why
               for why in locked(g, "a"))
    assert prunable(g, "d") == [6]  # the crop [:14] of 14 channels is the whole tensor: nothing locked
    assert res.model.a.out_channels >= 4 and res.model.c.in_channels < 14
    roundtrip(res.model, register("timm_patterns_dual_path", DualPath), {}, (3, 8, 8), x, tmp_path)


class Strided(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.c(self.a(x)[:, ::2]).mean((2, 3))


def test_strided_channel_slice_is_locked():
    g = DependencyGraph(Strided().eval(), (3, 8, 8))
    assert any("strided or empty slice of the channel dimension" in why for why in locked(g, "a"))


# --- splits along channels (CSP, Res2Net, MixNet-style lists) and chunk -----------------------------------------


class Splits(nn.Module):
    """CSP: ``split(4)`` of 8 channels (the first part keeps its size, the rest is prunable); ``chunk(2)`` (halves
    coupled); ``split([3, 5])`` (every size fixed)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.s = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.pa, self.pb = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4 + 4 + 4 + 3 + 5, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        xs, xb = self.a(x).split(4, dim=1)
        h1, h2 = torch.chunk(F.relu(self.b(x)), 2, dim=1)
        s1, s2 = torch.split(self.s(x), [3, 5], dim=1)
        y = torch.cat([xs, self.pa(F.relu(xb)), self.pb(h1) * h2, s1, s2], dim=1)
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


def test_channel_splits(tmp_path):
    g, res, x = prune_randomly(randomize(Splits()), (3, 8, 8))
    assert prunable(g, "a") == [4] and any("split of the channel dimension at constant positions" in why
                                           for why in locked(g, "a"))
    assert prunable(g, "b") == [4]  # chunk(2): 8 channels, 4 components of two coupled channels each
    assert res.model.b.out_channels % 2 == 0 and res.model.b.out_channels == 2 * res.model.pb.in_channels
    assert any("split of the channel dimension into constant sizes" in why for why in locked(g, "s"))
    assert not prunable(g, "s")
    roundtrip(res.model, register("timm_patterns_splits", Splits), {}, (3, 8, 8), x, tmp_path)


# --- ResNeSt split attention (radix), SK's stacked paths, channel shuffle ----------------------------------------


class SplitAttn(nn.Module):
    """ResNeSt: a grouped conv with ``radix`` large groups, ``reshape(B, radix, C, H, W).sum(1)``, an attention
    MLP, a softmax over the radix (``view(B, 1, radix, -1).transpose(1, 2)``) and the weighted sum."""

    def __init__(self, radix: int = 2, c: int = 8):
        super().__init__()
        self.radix = radix
        self.stem = nn.Conv2d(3, c, 1)
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(c * radix)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c * radix, 1)
        self.out = nn.Conv2d(c, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv(F.relu(self.stem(x)))))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = F.relu(self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True)))
        attn = self.fc2(gap).view(b, 1, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1)
        y = (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)
        return self.fc(F.relu(self.out(y)).mean((2, 3)))


def test_radix_split_attention(tmp_path):
    g, res, x = prune_randomly(randomize(SplitAttn()), (3, 8, 8))
    inner = next(grp for grp in g.groups if "conv" in grp.producers)
    assert inner.prunable and inner.size == 8 and {"conv.out", "bn0.channel", "fc2.out", "fc1.in"} <= set(inner.members)
    small = res.model.conv
    assert small.groups == 2 and small.out_channels == 2 * res.model.fc1.in_channels == res.model.fc2.out_channels
    assert prunable(g, "stem") == [4]  # the grouped conv's inputs: channel j goes with channel 4 + j
    roundtrip(res.model, register("timm_patterns_split_attn", SplitAttn), {}, (3, 8, 8), x, tmp_path)


class SelectiveKernel(nn.Module):
    """SK: two paths ``stack``-ed, summed, an attention over paths (``view(B, paths, C // paths, 1, 1)``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.p3, self.p5 = nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(6, 8, 5, padding=2)
        self.reduce, self.select = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        paths = torch.stack([F.relu(self.p3(x)), F.relu(self.p5(x))], dim=1)
        a = self.select(F.relu(self.reduce(paths.sum(1).mean((2, 3), keepdim=True))))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, 2, c // 2, h, w), dim=1)
        return self.fc(F.relu(self.out((paths * a).sum(1))).mean((2, 3)))


def test_stacked_paths(tmp_path):
    g, res, x = prune_randomly(randomize(SelectiveKernel()), (3, 8, 8))
    grp = next(grp for grp in g.groups if "p3" in grp.producers)
    assert grp.prunable and grp.producers == ["p3", "p5", "select"] and grp.size == 8
    assert res.model.select.out_channels == 2 * res.model.p3.out_channels
    roundtrip(res.model, register("timm_patterns_sk", SelectiveKernel), {}, (3, 8, 8), x, tmp_path)


# --- the lazy handler packages -------------------------------------------------------------------------------


def test_lazy_handlers_load_once_when_their_package_is_met():
    calls = []
    fake = type("FakeScale", (nn.Module,), {"__module__": "fakepkg.layers", "forward": lambda self, x: x * 2,
                                            "__init__": lambda self: nn.Module.__init__(self)})
    mine = PerChannelHandler(zero_preserving=True, size_attr=None)

    def loader():
        calls.append(1)
        register_handler(fake, override=False)(PerChannelHandler(size_attr=None))

    saved_table = dict(handler_table.HANDLERS)
    try:
        register_lazy_handlers("fakepkg", loader)
        assert handler_for(nn.ReLU()) is not None and calls == []  # other packages do not trigger it
        h = handler_for(fake())
        assert isinstance(h, PerChannelHandler) and calls == [1]
        assert handler_for(fake()) is h and calls == [1]  # once
        register_handler(fake)(mine)  # a user's handler replaces it ...
        loader()
        assert handler_for(fake()) is mine  # ... and a library's lazy registration does not replace a user's
    finally:
        handler_table.LAZY_HANDLERS.pop("fakepkg", None)
        handler_table._LAZY_PENDING.discard("fakepkg")
        handler_table.HANDLERS.clear()
        handler_table.HANDLERS.update(saved_table)


# --- timm's layers --------------------------------------------------------------------------------------------


def _norm_act(c, act):
    from timm.layers import BatchNormAct2d

    return BatchNormAct2d(c, act_layer=act)


class NormActNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_silu = _norm_act(8, nn.SiLU)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_sigmoid = _norm_act(8, nn.Sigmoid)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.bn_sigmoid(self.b(self.bn_silu(self.a(x))))
        return self.fc(F.relu(self.c(x)).mean((2, 3)))


@needs_timm
def test_batchnorm_act_is_a_leaf_folded_only_when_its_activation_keeps_zero(tmp_path):
    from prunekit.graph.timm_layers import NormActHandler

    net = randomize(NormActNet())
    g = DependencyGraph(net, (3, 8, 8))
    assert isinstance(handler_for(net.bn_silu), NormActHandler)
    assert {"bn_silu.channel", "a.out", "b.in"} <= set(g.by_name["a"].members) and g.by_name["a"].prunable
    groups, flat = group_masks(g, {"a": [1], "b": [2]})
    hooks = MaskHooks(net, mask_points(g, groups), lambda: flat)
    try:  # SiLU(0) = 0: the mask folds into the affine parameters; sigmoid(0) = 0.5: the output is multiplied
        assert set(hooks.folded) == {"bn_silu"}
    finally:
        hooks.remove()
    g, res, x = prune_randomly(net, (3, 8, 8), graph=g)
    assert res.model.bn_sigmoid.num_features == res.model.b.out_channels < 8
    roundtrip(res.model, register("timm_patterns_norm_act", NormActNet), {}, (3, 8, 8), x, tmp_path)


class SameNet(nn.Module):
    """TF 'same' padding computed at run time (asymmetric on odd sizes), a depthwise one too."""

    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        self.a = Conv2dSame(3, 8, 3, stride=2)
        self.dw = Conv2dSame(8, 8, 5, stride=2, groups=8)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c(F.relu(self.dw(F.relu(self.a(x)))))).mean((2, 3)))


@needs_timm
def test_conv2d_same_is_a_leaf_convolution(tmp_path):
    from prunekit.graph import trace

    net = randomize(SameNet())
    assert {n.target for n in trace(net).graph.nodes if n.op == "call_module"} >= {"a", "dw"}
    g, res, x = prune_randomly(net, (3, 17, 17))
    assert g.by_name["a"].prunable and "dw.in_grouped" in g.by_name["a"].members
    assert type(res.model.a).__name__ == "Conv2dSame" and res.model.dw.groups == res.model.a.out_channels
    roundtrip(res.model, register("timm_patterns_same", SameNet), {}, (3, 17, 17), x, tmp_path)


class MixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import MixedConv2d

        self.pw = MixedConv2d(3, 12, [1, 1])  # a grouped pointwise: 2 parts of 6 output channels
        self.dw = MixedConv2d(12, 12, [3, 5, 7], depthwise=True)  # parts of 4 channels, kernels 3, 5, 7
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c(F.relu(self.dw(F.relu(self.pw(x)))))).mean((2, 3)))


@needs_timm
def test_mixed_conv2d_updates_its_split_sizes(tmp_path):
    g, res, x = prune_randomly(randomize(MixedNet()), (3, 12, 12), seed=1)
    # each channel is a pointwise part's output and a depthwise part's channel: groups by (pw part, dw part)
    groups = {tuple(grp.producers): grp for grp in g.groups if grp.producers[:1] and grp.producers[0].startswith("pw.")}
    assert {k: v.size for k, v in groups.items()} == {("pw.0", "dw.0"): 4, ("pw.0", "dw.1"): 2, ("pw.1", "dw.1"): 2,
                                                      ("pw.1", "dw.2"): 4}
    assert all(grp.prunable for grp in groups.values())
    assert {"dw.1.in_grouped", "dw.1.out", "dw.split_in", "dw.split_out", "pw.split_out", "c.in"} <= set(
        groups[("pw.0", "dw.1")].members)
    dw = res.model.dw
    assert dw.splits == [c.in_channels for c in dw.values()] and sum(dw.splits) == dw.in_channels < 12
    assert res.model.pw.out_channels == dw.in_channels == res.model.c.in_channels
    roundtrip(res.model, register("timm_patterns_mixed", MixedNet), {}, (3, 12, 12), x, tmp_path)


class EcaNet(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import EcaModule

        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.eca = EcaModule(8)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c(self.eca(F.relu(self.b(F.relu(self.a(x))))))).mean((2, 3)))


@needs_timm
def test_eca_locks_the_channels_it_gates():
    g, _, _ = prune_randomly(randomize(EcaNet()), (3, 8, 8))
    assert any("ECA attention: a 1-D convolution across channels" in why and "EcaModule" in why
               for why in locked(g, "b"))
    assert prunable(g, "a") == [8] and prunable(g, "c") == [6]


class StdNet(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import ScaledStdConv2d, StdConv2d

        self.a = StdConv2d(3, 8, 3, padding=1)
        self.b = ScaledStdConv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c(F.relu(self.b(F.relu(self.a(x)))))).mean((2, 3)))


@needs_timm
def test_weight_standardised_convs_lock_their_inputs(tmp_path):
    net = randomize(StdNet())
    with torch.no_grad():
        net.b.gain.uniform_(0.5, 1.5)
    g, res, x = prune_randomly(net, (3, 8, 8))
    assert any("weight standardisation" in why for why in locked(g, "a"))
    assert g.by_name["b"].prunable and res.model.b.gain.shape[0] == res.model.b.out_channels < 8
    roundtrip(res.model, register("timm_patterns_std", StdNet), {}, (3, 8, 8), x, tmp_path)


class GroupNormActNet(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import GroupNorm1Act, GroupNormAct

        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 6, 1)
        self.gn_per_channel = GroupNormAct(8, num_groups=8)
        self.gn_groups = GroupNormAct(8, num_groups=4)  # statistics over pairs of channels
        self.gn_one = GroupNorm1Act(6)  # over all channels
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.gn_groups(self.b(self.gn_per_channel(self.a(x))))
        return self.fc(self.gn_one(self.c(x)).mean((2, 3)))


@needs_timm
def test_group_norm_act_prunes_whole_groups(tmp_path):
    g, res, x = prune_randomly(randomize(GroupNormActNet()), (3, 8, 8))
    assert prunable(g, "a") == [8] and prunable(g, "b") == [4]  # b: 4 groups of 2 channels
    assert any("GroupNorm normalises across channels (groups=1)" in why for why in locked(g, "c"))
    small = res.model
    assert small.gn_per_channel.num_groups == small.gn_per_channel.num_channels < 8
    assert small.gn_groups.num_channels == 2 * small.gn_groups.num_groups == small.b.out_channels < 8
    roundtrip(small, register("timm_patterns_gn_act", GroupNormActNet), {}, (3, 8, 8), x, tmp_path)


# --- small timm models end to end (random weights, 64x64) ------------------------------------------------------

TIMM_MODELS = [  # (name, what it exercises, minimum share of parameters removed at 40% per group)
    ("tf_efficientnet_lite0", "Conv2dSame, BatchNormAct2d with ReLU6", 0.5),
    ("mixnet_s", "MixedConv2d, SE, Swish", 0.5),
    ("ghostnet_100", "GhostNet's crop, cheap depthwise ops, SE with hard sigmoid", 0.5),
    ("resnest14d", "radix split attention, grouped convs with two groups", 0.5),
    ("repvgg_a0", "RepVGG parallel 3x3 + 1x1 + identity-BN branches", 0.5),
    ("cspresnet50", "CSP split, cross-stage concatenation", 0.5),
]
SLOW_TIMM_MODELS = [("dpn68", "dual path slices", 0.35), ("rexnet_100", "partial shortcut slices", 0.4),
                    ("mobileone_s0", "MobileOne branches", 0.5), ("skresnet18", "SK stacked paths", 0.45),
                    ("ese_vovnet19b_dw", "ESE attention, OSA concatenation", 0.5),
                    ("mobilevit_xxs", "untraceable MobileViT blocks: locked leaves", 0.02)]


def _timm_model_case(name: str, min_removed: float, tmp_path) -> None:
    from prunekit.models import create_model

    torch.manual_seed(0)
    model = randomize(create_model(f"timm:{name}", num_classes=10))
    g, res, x = prune_randomly(model, (3, 64, 64))
    assert 1 - res.params_after / res.params_before >= min_removed
    if name == "mobilevit_xxs":
        assert any("MobileVitBlock that torch.fx cannot trace" in (grp.locked or "") for grp in g.groups)
    roundtrip(res.model, f"timm:{name}", {"num_classes": 10}, (3, 64, 64), x, tmp_path)


@needs_timm
@pytest.mark.parametrize(("name", "what", "min_removed"), TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS])
def test_timm_model(name, what, min_removed, tmp_path):
    _timm_model_case(name, min_removed, tmp_path)


@needs_timm
@pytest.mark.slow
@pytest.mark.parametrize(("name", "what", "min_removed"), SLOW_TIMM_MODELS, ids=[m[0] for m in SLOW_TIMM_MODELS])
def test_timm_model_slow(name, what, min_removed, tmp_path):
    _timm_model_case(name, min_removed, tmp_path)
