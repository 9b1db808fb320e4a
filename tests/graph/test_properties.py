"""Property tests: randomly generated CNNs with random channel masks.

Hypothesis draws an architecture (depth, widths, plain / depthwise / grouped convs, residual adds with and
without projection, concatenations with and without a coupled add, squeeze-and-excitation, gating
multiplies, pooling, a conv + BN block applied twice (shared weights), a channel-reducing attention that must lock its input, flatten or global-pool heads)
on an 8x8 input, plus random channels to remove from a random subset of prunable groups. Properties:

* ``shrink`` reproduces the masked model (its own verification, and an explicit check here);
* locked groups are never touched, and every pruned group shrinks each of its producers;
* the shrunk model saves and loads back from disk (``prunekit.saved``) with bit-identical outputs.

The default run executes 400 examples (300 + 100 through disk); ``-m slow`` runs many more.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit import saved
from prunekit.errors import PrunekitError
from prunekit.graph import DependencyGraph
from prunekit.models import InputSpec, ModelSpec, list_models, register_model
from prunekit.surgery import example_inputs, shrink

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "test_properties_random_cnn"
SIZE = 8
ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
        "none": nn.Identity}


# --- the random architecture ---------------------------------------------------------------------------------


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, groups: int = 1, bias: bool = False, bn: bool = True,
                 act: str = "relu", stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = ACTS[act]()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, k: int, act: str, stride: int, dw: bool):
        super().__init__()
        if dw:  # MobileNetV2-style inverted residual: expand 1x1, depthwise kxk, project 1x1
            self.body = nn.Sequential(ConvBNAct(cin, hidden, 1, act=act),
                                      ConvBNAct(hidden, hidden, k, groups=hidden, act=act, stride=stride),
                                      ConvBNAct(hidden, cout, 1, act="none"))
        else:
            self.body = nn.Sequential(ConvBNAct(cin, hidden, k, act=act, stride=stride),
                                      ConvBNAct(hidden, cout, k, act="none"))
        self.proj = ConvBNAct(cin, cout, 1, act="none", stride=stride) if (stride > 1 or cin != cout) else None
        self.act = ACTS[act]()

    def forward(self, x):
        short = x if self.proj is None else self.proj(x)
        return self.act(short + self.body(x))


class Concat(nn.Module):
    def __init__(self, cin: int, outs: list[int], ks: list[int], add: bool):
        super().__init__()
        self.branches = nn.ModuleList(ConvBNAct(cin, c, k, act="relu") for c, k in zip(outs, ks, strict=True))
        self.add = ConvBNAct(cin, sum(outs), 1, act="none") if add else None

    def forward(self, x):
        y = torch.cat([b(x) for b in self.branches], dim=1)
        return y if self.add is None else F.relu(y + self.add(x))


class SE(nn.Module):
    def __init__(self, c: int, r: int, linear: bool):
        super().__init__()
        self.linear = linear
        make = (lambda i, o: nn.Linear(i, o)) if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.fc1, self.fc2 = make(c, r), make(r, c)

    def forward(self, x):
        if self.linear:
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
            return x * s.view(x.size(0), x.size(1), 1, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class GateMul(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


class Twice(nn.Module):
    """The same conv + BN applied twice: one weight, so its input and output channels are the same channels."""

    def __init__(self, c: int, k: int, act: str):
        super().__init__()
        self.block = ConvBNAct(c, c, k, act=act)

    def forward(self, x):
        return self.block(self.block(x))


class ChannelAttention(nn.Module):
    """Reduces over channels: must lock the channels of its input, nothing else."""

    def forward(self, x):
        return x * torch.sigmoid(x.mean(1, keepdim=True))


class Head(nn.Module):
    def __init__(self, c: int, hw: int, kind: str, hidden: int, classes: int):
        super().__init__()
        self.kind = kind
        fin = c * hw * hw if kind == "flatten" else c
        self.fc1 = nn.Linear(fin, hidden) if hidden else None
        self.fc = nn.Linear(hidden or fin, classes)

    def forward(self, x):
        x = torch.flatten(x, 1) if self.kind == "flatten" else x.mean((2, 3))
        if self.fc1 is not None:
            x = F.relu(self.fc1(x))
        return self.fc(x)


class RandomCNN(nn.Module):
    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        c, hw = spec["in_channels"], SIZE
        blocks: list[nn.Module] = []
        for b in spec["blocks"]:
            op = b["op"]
            if op == "conv":
                blocks.append(ConvBNAct(c, b["out"], b["k"], b["groups"], b["bias"], b["bn"], b["act"]))
                c = b["out"]
            elif op == "dw":
                blocks.append(ConvBNAct(c, c * b["mult"], 3, c, b["bias"], b["bn"], b["act"]))
                c = c * b["mult"]
            elif op == "res":
                stride = b["stride"] if hw >= 4 else 1
                blocks.append(Residual(c, b["hidden"], b["out"], b["k"], b["act"], stride, b["dw"]))
                c, hw = b["out"], (hw + stride - 1) // stride
            elif op == "cat":
                blocks.append(Concat(c, b["outs"], b["ks"], b["add"]))
                c = sum(b["outs"])
            elif op == "se":
                blocks.append(SE(c, b["r"], b["linear"]))
            elif op == "gate":
                blocks.append(GateMul(c))
            elif op == "twice":
                blocks.append(Twice(c, b["k"], b["act"]))
            elif op == "pool":
                if hw >= 2:
                    blocks.append(nn.MaxPool2d(2) if b["max"] else nn.AvgPool2d(2))
                    hw //= 2
            elif op == "attn":
                blocks.append(ChannelAttention())
            else:
                raise ValueError(op)
        self.blocks = nn.Sequential(*blocks)
        self.head = Head(c, hw, spec["head"], spec["hidden"], spec["classes"])

    def forward(self, x):
        return self.head(self.blocks(x))


if ARCH not in list_models():
    register_model(ARCH)(lambda spec: RandomCNN(spec))


# --- strategies ------------------------------------------------------------------------------------------------

widths = st.integers(2, 12)


@st.composite
def block(draw, c: int, allow_attn: bool, stem: bool = False) -> tuple[dict, int]:
    ops = ["conv", "conv", "dw", "res", "res", "cat", "se", "gate", "pool", "twice"] + (["attn"] if allow_attn
                                                                                     else [])
    op = "conv" if stem else draw(st.sampled_from(ops))
    act = draw(st.sampled_from(sorted(ACTS)))
    if op == "conv":
        groups = 1 if stem else draw(st.sampled_from([g for g in (1, 2, 3, 4) if c % g == 0]))
        out = groups * draw(st.integers(2 if groups == 1 else 1, max(2, 12 // groups)))
        b = {"op": op, "out": out, "k": draw(st.sampled_from([1, 3])), "groups": groups, "bias": draw(st.booleans()),
             "bn": draw(st.booleans()), "act": act}
        return b, out
    if op == "dw":
        mult = draw(st.sampled_from([1, 1, 2]))
        return {"op": op, "mult": mult, "bias": draw(st.booleans()), "bn": draw(st.booleans()), "act": act}, c * mult
    if op == "res":
        out = draw(st.one_of(st.just(c), widths))
        b = {"op": op, "hidden": draw(widths), "out": out, "k": draw(st.sampled_from([1, 3])),
             "act": draw(st.sampled_from(["relu", "relu6", "hardswish"])), "stride": draw(st.sampled_from([1, 1, 2])),
             "dw": draw(st.booleans())}
        return b, out
    if op == "cat":
        n = draw(st.integers(2, 3))
        outs = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
        ks = draw(st.lists(st.sampled_from([1, 3]), min_size=n, max_size=n))
        return {"op": op, "outs": outs, "ks": ks, "add": draw(st.booleans())}, sum(outs)
    if op == "se":
        return {"op": op, "r": draw(st.integers(1, max(1, c))), "linear": draw(st.booleans())}, c
    if op == "pool":
        return {"op": op, "max": draw(st.booleans())}, c
    if op == "twice":
        return {"op": op, "k": draw(st.sampled_from([1, 3])), "act": draw(st.sampled_from(["relu", "hardswish"]))}, c
    return {"op": op}, c


@st.composite
def cnn_specs(draw, max_blocks: int = 6, allow_attn: bool = True) -> dict[str, Any]:
    c = draw(st.integers(1, 4))
    spec: dict[str, Any] = {"in_channels": c, "blocks": []}
    for i in range(draw(st.integers(1, max_blocks))):
        b, c = draw(block(c, allow_attn, stem=i == 0))  # a conv stem, as in real nets
        spec["blocks"].append(b)
    spec["head"] = draw(st.sampled_from(["gap", "gap", "flatten"]))
    spec["hidden"] = draw(st.sampled_from([0, 0, 6]))
    spec["classes"] = draw(st.integers(2, 5))
    return spec


# --- the property ------------------------------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.randn(c, generator=g) * 0.4 + 1.0)
                m.bias.copy_(torch.randn(c, generator=g) * 0.4)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model.eval()


def check_random_cnn(spec: dict[str, Any], seed: int, p_group: float, disk: bool) -> bool:
    """Shrink a random network and check everything; returns whether anything was pruned."""
    torch.manual_seed(seed)
    model = randomize(RandomCNN(spec), seed)
    shape = (spec["in_channels"], SIZE, SIZE)
    graph = DependencyGraph(model, shape)
    rng = np.random.default_rng(seed)
    prunable = [g for g in graph.groups if g.prunable]
    chosen = [g for g in prunable if rng.random() < p_group] or prunable[:1]
    removed = {}
    for g in chosen:
        k = int(rng.integers(1, g.size))
        removed[g.name] = sorted(rng.choice(g.size, k, replace=False).tolist())
    event("pruned groups: " + ("none" if not removed else "1" if len(removed) == 1 else "2-4" if len(removed) <= 4
                               else "5+"))
    event("has locked non-io group: " + str(any(g.locked and g.locked not in ("network input", "model output")
                                                for g in graph.groups)))
    x = example_inputs(shape, batch=2, seed=seed)
    res = shrink(model, shape, removed, graph=graph, inputs=x)  # raises VerificationError when not exact
    small = res.model.eval()
    with torch.no_grad():
        y = small(x)
    assert res.max_abs_diff <= 1e-4 + 1e-5 * float(y.abs().max())
    assert res.params_after == sum(p.numel() for p in small.parameters())
    assert (res.params_after < res.params_before) == bool(removed)

    # every pruned group shrank each of its producing layers; locked groups' producers are untouched
    modules, new = dict(model.named_modules()), dict(small.named_modules())
    pruned_producers = {p for n in removed for p in graph.by_name[n].producers}
    for g in graph.groups:
        for p in g.producers:
            size = lambda m: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features  # noqa: E731
            if g.name in removed:
                assert size(new[p]) < size(modules[p]), (g.name, p)
            elif p not in pruned_producers:
                assert size(new[p]) == size(modules[p]), (g.name, p)
    for g in graph.groups:
        if g.locked is not None:
            with pytest.raises(PrunekitError, match="cannot be pruned"):
                graph.removed_roots({g.name: [0]})

    if disk:
        with tempfile.TemporaryDirectory() as d:
            spec_ = ModelSpec(ARCH, {"spec": spec}, InputSpec(size=[SIZE, SIZE], channels=shape[0],
                                                              mean=[0.0] * shape[0], std=[1.0] * shape[0]))
            saved.save(small, Path(d) / "m", spec_)
            loaded = saved.load(Path(d) / "m").model
            with torch.no_grad():
                assert torch.equal(loaded(x), y)
    return bool(removed)


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _run_property(max_examples: int, max_blocks: int, p_groups: list[float], disk) -> None:
    """Run the property on random networks; at most 10% of them may have nothing to prune (else the property
    would pass on networks where it checks nothing)."""
    tally = {"pruned": 0, "nothing": 0}

    @settings(max_examples=max_examples, **_SETTINGS)
    @given(spec=cnn_specs(max_blocks=max_blocks), seed=st.integers(0, 2**31 - 1), p_group=st.sampled_from(p_groups),
           on_disk=disk)
    def prop(spec, seed, p_group, on_disk):
        tally["pruned" if check_random_cnn(spec, seed, p_group, on_disk) else "nothing"] += 1

    prop()
    total = tally["pruned"] + tally["nothing"]
    assert total >= max_examples // 2, tally
    assert tally["nothing"] <= 0.1 * total, f"{tally}: too many random networks had nothing to prune"


def test_random_cnn_surgery_is_exact():
    _run_property(300, 6, [0.5, 1.0], st.just(False))


def test_random_cnn_roundtrips_through_disk():
    _run_property(100, 4, [1.0], st.just(True))


@pytest.mark.slow
def test_random_cnn_many():
    _run_property(2000, 10, [0.3, 0.7, 1.0], st.booleans())


def test_spec_examples_cover_every_block():
    """The strategy can produce every block type (a guard against a strategy that silently narrows)."""
    seen: set[str] = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(spec=cnn_specs())
    def collect(spec):
        seen.update(b["op"] for b in spec["blocks"])

    collect()
    assert seen == {"conv", "dw", "res", "cat", "se", "gate", "pool", "twice", "attn"}
