"""Every channel-coupling pattern the dependency graph handles, on toy nets whose answer is known by hand.

For each toy net: the groups are exactly what they should be (sizes, producing layers, members, which are
locked and why), random channels are pruned, ``shrink`` verifies (max abs diff <= 1e-4), the parameter count
drops by the amount computed by hand from the kept channel counts, and the shrunk model survives
``prunekit.saved.save`` / ``load`` with bit-identical outputs. Unsupported patterns lock exactly the affected
groups with a reason naming the node, and the rest of the model stays prunable and exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import saved
from prunekit.errors import PrunekitError
from prunekit.graph import DependencyGraph, masked
from prunekit.models import InputSpec, ModelSpec, list_models, register_model
from prunekit.surgery import example_inputs, shrink

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = [0, 1, 2]


# --- helpers ----------------------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN running stats and affine params, norm/PReLU/plain-parameter values and biases (masks matter)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t: torch.Tensor, mean: float, std: float) -> torch.Tensor:
        return (torch.randn(t.shape, generator=g) * std + mean).to(t.dtype)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(rnd(m.running_mean, 0.0, 0.5))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            for name, p in m.named_parameters(recurse=False):
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name == "weight":
                    continue
                if p.ndim <= 1 or name in ("hs", "gamma"):  # biases, norm affine, PReLU slopes, layer scales
                    p.copy_(rnd(p, 1.0 if name in ("weight", "hs", "gamma") else 0.0, 0.4))
    return model.eval()


def random_removal(graph: DependencyGraph, rng: np.random.Generator,
                   names: list[str] | None = None) -> dict[str, list[int]]:
    """Between 1 and size-1 random channels of every prunable group (or of ``names``)."""
    groups = [graph.by_name[n] for n in names] if names is not None else [g for g in graph.groups if g.prunable]
    out = {}
    for g in groups:
        k = int(rng.integers(1, g.size))
        out[g.name] = sorted(rng.choice(g.size, k, replace=False).tolist())
    return out


def kept_counts(graph: DependencyGraph, removed: dict[str, list[int]]) -> dict[str, int]:
    return {g.name: g.size - len(removed.get(g.name, [])) for g in graph.groups}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register(name: str, builder: Callable[[], nn.Module]) -> None:
    if name not in list_models():
        register_model(name)(builder)


@dataclass
class G:
    """An expected group: size, member slots, lock reason fragment (None: prunable)."""

    size: int
    producers: list[str]
    members: set[str]
    locked: str | None = None


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    groups: dict[str, G]
    params: Callable[[dict[str, int]], int]  # hand-computed parameter count from kept channels per group
    leaf_modules: list[str] = field(default_factory=list)


def check_groups(graph: DependencyGraph, expected: dict[str, G]) -> None:
    got = {g.name: g for g in graph.groups}
    assert set(got) == set(expected), f"groups {sorted(got)} != {sorted(expected)}"
    for name, e in expected.items():
        g = got[name]
        assert g.size == e.size, (name, g.size, e.size)
        assert g.producers == e.producers, (name, g.producers, e.producers)
        assert set(g.members) == e.members, (name, sorted(g.members), sorted(e.members))
        if e.locked is None:
            assert g.locked is None and g.prunable, (name, g.locked)
        else:
            assert g.locked is not None and e.locked in g.locked, (name, g.locked, e.locked)


def run_case(case: Case, seed: int, tmp_path) -> float:
    torch.manual_seed(seed)
    model = randomize(case.build(), seed)
    graph = DependencyGraph(model, case.input_shape, leaf_modules=case.leaf_modules)
    check_groups(graph, case.groups)

    dense = count_params(model)
    assert dense == case.params({g.name: g.size for g in graph.groups}), "hand formula does not match the dense net"

    removed = random_removal(graph, np.random.default_rng(seed))
    assert removed, "the toy net has nothing to prune"
    x = example_inputs(case.input_shape, batch=3, seed=seed)
    with torch.no_grad():
        y_dense = model(x)
    res = shrink(model, case.input_shape, removed, graph=graph, inputs=x)
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    with torch.no_grad():
        y_small = res.model(x)
    change = float((y_dense - y_small).abs().max())

    expected = case.params(kept_counts(graph, removed))
    assert res.params_before == dense
    assert res.params_after == expected == count_params(res.model), (res.params_after, expected)
    assert count_params(model) == dense, "shrink must not modify its input"

    # save / load round trip: identical outputs
    spec = ModelSpec(f"test_patterns_{case.name}", {}, InputSpec(size=list(case.input_shape[1:]),
                                                                channels=case.input_shape[0]))
    out = tmp_path / "model"
    saved.save(res.model, out, spec)
    loaded = saved.load(out).model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), y_small)
    assert count_params(loaded) == expected
    return change


# --- toy nets -----------------------------------------------------------------------------------------


class ConvChain(nn.Module):
    """Conv2d (with bias) -> ReLU -> Conv2d -> BN -> ReLU -> global pool -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.bn(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Depthwise(nn.Module):
    """1x1 conv -> depthwise 3x3 -> depthwise 3x3 with channel multiplier 2 -> 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.pw0 = nn.Conv2d(3, 8, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dwm = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 6, 1, bias=True)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu6(self.bn0(self.pw0(x)))
        x = F.relu6(self.bn1(self.dw(x)))
        x = F.relu(self.bn2(self.dwm(x)))
        x = F.relu(self.bn3(self.pw(x)))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    """A grouped 3x3 conv (4 groups of 4 -> 6 channels): channels go in whole groups."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.g = nn.Conv2d(16, 24, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.c3 = nn.Conv2d(24, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.g(x)))
        x = F.relu(self.bn3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class Activations(nn.Module):
    """BN, GroupNorm(C, C), PReLU(C) and a zoo of per-channel activations / elementwise ops between convs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.hswish = nn.Hardswish()
        self.prelu = nn.PReLU(8)
        self.leaky = nn.LeakyReLU(0.1)
        self.elu = nn.ELU()
        self.c2 = nn.Conv2d(8, 10, 3, padding=1)
        self.gn = nn.GroupNorm(10, 10)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        x = self.bn(self.c1(x))
        x = F.relu6(x) + self.hswish(x)
        x = x * 2 + 0.5
        x = x / 3
        x = torch.clamp(x, -1.0, 2.0) + F.silu(x) + F.gelu(x) - torch.tanh(x)
        x = torch.sigmoid(x) - 0.25
        x = self.prelu(x)
        x = self.leaky(x) + self.elu(-x) + x.abs() * 0.1 + F.mish(x)
        x = F.hardsigmoid(x) + 1
        x = F.relu(self.gn(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    """Two ResNet basic blocks; the second has a strided 1x1 projection shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bna1 = nn.BatchNorm2d(6)
        self.b1 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bnb1 = nn.BatchNorm2d(8)
        self.a2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
        self.bna2 = nn.BatchNorm2d(6)
        self.b2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bnb2 = nn.BatchNorm2d(8)
        self.proj = nn.Conv2d(8, 8, 1, stride=2, bias=False)
        self.bnp = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.bnb1(self.b1(F.relu(self.bna1(self.a1(x)))))
        x = F.relu(x + y)
        y = self.bnb2(self.b2(F.relu(self.bna2(self.a2(x)))))
        x = F.relu(self.bnp(self.proj(x)) + y)
        return self.fc(x.mean((2, 3)))


class MulGate(nn.Module):
    """``p(x) * sigmoid(q(x)) + r(x)``: all three operands share channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.p = nn.Conv2d(8, 8, 3, padding=1)
        self.q = nn.Conv2d(8, 8, 1)
        self.r = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.p(x) * torch.sigmoid(self.q(x)) + self.r(x))
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class Concat(nn.Module):
    """``cat([relu(a(x)), b(x)]) -> BN -> conv``: channel offsets 0..5 from a, 6..15 from b."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 10, 1)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        y = F.relu(self.c(F.relu(self.bn(y))))
        return self.fc(y.mean((2, 3)))


class ConcatAdd(nn.Module):
    """``cat([a(x), b(x)]) + d(x)``: d's first 6 channels couple with a, its last 10 with b."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 10, 1)
        self.d = nn.Conv2d(3, 16, 1)
        self.c = nn.Conv2d(16, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = F.relu(torch.cat([self.a(x), self.b(x)], 1) + self.d(x))
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class FlattenLinear(nn.Module):
    """conv on 4x4 -> flatten -> Linear(4*16): each channel owns a block of 16 features."""

    def __init__(self, use_view: bool = False):
        super().__init__()
        self.use_view = use_view
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(64, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), -1) if self.use_view else torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class Pooling(nn.Module):
    """MaxPool, AdaptiveAvgPool2d(2) -> flatten -> Linear, and adaptive max pool to 1x1 on a side branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 4)
        self.conv3 = nn.Conv2d(6, 5, 1)
        self.fc_b = nn.Linear(5, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        a = self.fc(torch.flatten(self.avg(F.relu(self.conv2(x))), 1))
        b = self.fc_b(F.adaptive_max_pool2d(self.conv3(x), 1).flatten(1))
        return a + b


class SE(nn.Module):
    """Two squeeze-and-excitation blocks: conv-based (mean -> 1x1 -> ReLU -> 1x1 -> sigmoid -> mul) and
    Linear-based (adaptive pool -> flatten -> fc -> fc -> hardsigmoid -> view -> mul)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.l1 = nn.Linear(16, 4)
        self.l2 = nn.Linear(4, 16)
        self.proj = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * s
        t = F.adaptive_avg_pool2d(x, 1).flatten(1)
        t = F.hardsigmoid(self.l2(F.relu(self.l1(t))))
        x = x * t.view(x.size(0), x.size(1), 1, 1)
        return self.fc(F.relu(self.proj(x)).mean((2, 3)))


class WithDropout(nn.Module):
    """nn.Dropout2d, F.dropout and nn.Dropout between layers (identity in eval)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop2d = nn.Dropout2d(0.3)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.drop2d(self.conv(x)))
        x = F.dropout(x, 0.2, training=self.training)
        x = F.relu(self.conv2(x)).mean((2, 3))
        return self.fc(self.drop(x))


def nested() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)), nn.ReLU(),
                      nn.Dropout(0.1)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 4),
    )


class ConvNeXtLike(nn.Module):
    """dwconv -> permute -> LayerNorm(C) -> Linear(C, 4C) -> GELU -> * hidden scale -> Linear(4C, C) -> * gamma
    -> permute back -> residual add. LayerNorm over channels locks the residual stream; the 4C hidden is free."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.pw1 = nn.Linear(8, 32)
        self.hs = nn.Parameter(torch.ones(32))
        self.pw2 = nn.Linear(32, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.5))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))) * self.hs)
        x = x + (self.gamma * y).permute(0, 3, 1, 2)
        return self.fc(x.mean((2, 3)))


class Upsampling(nn.Module):
    """FPN-like: a strided branch upsampled back (F.interpolate) and concatenated with a full-resolution one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.c = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        a = F.relu(self.a(x))
        y = torch.cat([F.interpolate(a, scale_factor=2.0, mode="nearest") + self.up(a), self.b(x)], 1)
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class SharedConv(nn.Module):
    """One conv called twice: its input and output channels are the same channels (one weight)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.conv(F.relu(self.conv(x))))
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


# --- rejections ----------------------------------------------------------------------------------------


class ChannelShuffle(nn.Module):
    """ShuffleNet's view -> transpose -> view with computed sizes: the two halves are coupled position by position
    (channel j with channel 4 + j), so the shuffle still fits after surgery and stays exact."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.a(x)))
        n, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3)
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.fc(F.relu(self.b(x)).mean((2, 3)))


class HardcodedView(nn.Module):
    """``x.view(-1, 512)`` with 512 = 32 channels * 4 * 4 hard-coded: wrong after pruning, so locked."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(512, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.a(x)).view(-1, 512)
        return self.fc2(F.relu(self.fc(x)))


class ChannelMean(nn.Module):
    """A spatial attention map from ``x.mean(1)``: a reduction over channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = x * torch.sigmoid(x.mean(1, keepdim=True))
        return self.fc(F.relu(self.b(x)).mean((2, 3)))


class ChannelIndex(nn.Module):
    """``x[:, :4]``: a constant slice of the channel dimension. After surgery ``:4`` must still select the same
    channels, so a's first 4 channels are locked; its other 4 stay prunable."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 6, 1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        y = F.relu(self.b(x[:, :4]) + self.c(x))
        return self.fc(y.mean((2, 3)))


class Division(nn.Module):
    """``a(x) / (sigmoid(b(x)) + 0.5)``: dividing by a tensor with channels. A pruned channel would divide by zero
    in the masked model (NaN during masked training), so numerator and denominator are locked."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.a(x) / (torch.sigmoid(self.b(x)) + 0.5)
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class Pole(nn.Module):
    """``rsqrt`` is infinite at 0: a pruned channel would become inf, so its input is locked."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.rsqrt(F.softplus(self.a(x)) + 1.0)
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class Gate(nn.Module):
    """Data-dependent Python control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.gate = Gate()
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.gate(F.relu(self.a(x)))
        return self.fc(F.relu(self.c(x)).mean((2, 3)))


# --- expected groups and hand-computed parameter counts ---------------------------------------------------

INPUT = "network input"
OUTPUT = "model output"


def _inp(*consumers: str) -> G:
    return G(3, [], {f"{c}.in" for c in consumers}, INPUT)


def _inp_name(model_input: str) -> str:
    return f"(input {model_input})"


CASES = [
    Case("conv_chain", ConvChain, (3, 8, 8), {
        "(input x)": _inp("conv1"),
        "conv1": G(8, ["conv1"], {"conv1.out", "conv2.in"}),
        "conv2": G(12, ["conv2"], {"conv2.out", "bn.channel", "fc.in"}),
        "fc": G(5, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (27 * k["conv1"] + k["conv1"]) + 9 * k["conv1"] * k["conv2"] + 2 * k["conv2"] + 5 * k["conv2"] + 5),

    Case("depthwise", Depthwise, (3, 8, 8), {
        "(input x)": _inp("pw0"),
        "pw0": G(8, ["pw0", "dw", "dwm"], {"pw0.out", "bn0.channel", "dw.in_grouped", "dw.out", "bn1.channel",
                                           "dwm.in_grouped", "dwm.out", "bn2.channel", "pw.in"}),
        "pw": G(6, ["pw"], {"pw.out", "bn3.channel", "fc.in"}),
        "fc": G(4, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (3 * k["pw0"] + 2 * k["pw0"] + 9 * k["pw0"] + 2 * k["pw0"] + (2 * k["pw0"] * 9 + 2 * k["pw0"])
                  + 2 * 2 * k["pw0"] + (2 * k["pw0"] * k["pw"] + k["pw"]) + 2 * k["pw"] + 4 * k["pw"] + 4)),

    # k["c1"] counts whole conv groups (4 input + 6 output channels each)
    Case("grouped", Grouped, (3, 8, 8), {
        "(input x)": _inp("c1"),
        "c1": G(4, ["c1", "g"], {"c1.out", "bn1.channel", "g.in_grouped", "g.out", "bn2.channel", "c3.in"}),
        "c3": G(8, ["c3"], {"c3.out", "bn3.channel", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (3 * 4 * k["c1"] + 2 * 4 * k["c1"] + 6 * k["c1"] * 4 * 9 + 2 * 6 * k["c1"] + 6 * k["c1"] * k["c3"]
                  + 2 * k["c3"] + 3 * k["c3"] + 3)),

    Case("activations", Activations, (3, 8, 8), {
        "(input x)": _inp("c1"),
        "c1": G(8, ["c1"], {"c1.out", "bn.channel", "prelu.channel", "c2.in"}),
        "c2": G(10, ["c2"], {"c2.out", "gn.channel", "fc.in"}),
        "fc": G(4, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (28 * k["c1"] + 2 * k["c1"] + k["c1"] + 9 * k["c1"] * k["c2"] + k["c2"] + 2 * k["c2"]
                  + 4 * k["c2"] + 4)),

    Case("residual", Residual, (3, 8, 8), {
        "(input x)": _inp("stem"),
        "stem": G(8, ["stem", "b1"], {"stem.out", "bn.channel", "a1.in", "b1.out", "bnb1.channel", "a2.in",
                                      "proj.in"}),
        "a1": G(6, ["a1"], {"a1.out", "bna1.channel", "b1.in"}),
        "a2": G(6, ["a2"], {"a2.out", "bna2.channel", "b2.in"}),
        "b2": G(8, ["b2", "proj"], {"b2.out", "bnb2.channel", "proj.out", "bnp.channel", "fc.in"}),
        "fc": G(4, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (27 * k["stem"] + 2 * k["stem"] + 9 * k["stem"] * k["a1"] + 2 * k["a1"] + 9 * k["a1"] * k["stem"]
                  + 2 * k["stem"] + 9 * k["stem"] * k["a2"] + 2 * k["a2"] + 9 * k["a2"] * k["b2"] + 2 * k["b2"]
                  + k["stem"] * k["b2"] + 2 * k["b2"] + 4 * k["b2"] + 4)),

    Case("mul_gate", MulGate, (3, 8, 8), {
        "(input x)": _inp("stem"),
        "stem": G(8, ["stem"], {"stem.out", "p.in", "q.in", "r.in"}),
        "p": G(8, ["p", "q", "r"], {"p.out", "q.out", "r.out", "c.in"}),
        "c": G(5, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (4 * k["stem"] + (9 * k["stem"] * k["p"] + k["p"]) + 2 * (k["stem"] * k["p"] + k["p"])
                  + k["p"] * k["c"] + k["c"] + 3 * k["c"] + 3)),

    Case("concat", Concat, (3, 8, 8), {
        "(input x)": _inp("a", "b"),
        "a": G(6, ["a"], {"a.out", "bn.channel", "c.in"}),
        "b": G(10, ["b"], {"b.out", "bn.channel", "c.in"}),
        "c": G(5, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (4 * k["a"] + 4 * k["b"] + 2 * (k["a"] + k["b"]) + (k["a"] + k["b"]) * k["c"] + k["c"]
                  + 3 * k["c"] + 3)),

    Case("concat_add", ConcatAdd, (3, 8, 8), {
        "(input x)": _inp("a", "b", "d"),
        "a": G(6, ["a", "d"], {"a.out", "d.out", "c.in"}),
        "b": G(10, ["b", "d"], {"b.out", "d.out", "c.in"}),
        "c": G(5, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (4 * k["a"] + 4 * k["b"] + 4 * (k["a"] + k["b"]) + (k["a"] + k["b"]) * k["c"] + k["c"]
                  + 3 * k["c"] + 3)),

    Case("flatten_linear", FlattenLinear, (3, 4, 4), {
        "(input x)": _inp("conv"),
        "conv": G(4, ["conv"], {"conv.out", "fc1.in"}),
        "fc1": G(7, ["fc1"], {"fc1.out", "fc2.in"}),
        "fc2": G(3, ["fc2"], {"fc2.out"}, OUTPUT),
    }, lambda k: 28 * k["conv"] + 16 * k["conv"] * k["fc1"] + k["fc1"] + 3 * k["fc1"] + 3),

    Case("view_linear", lambda: FlattenLinear(use_view=True), (3, 4, 4), {
        "(input x)": _inp("conv"),
        "conv": G(4, ["conv"], {"conv.out", "fc1.in"}),
        "fc1": G(7, ["fc1"], {"fc1.out", "fc2.in"}),
        "fc2": G(3, ["fc2"], {"fc2.out"}, OUTPUT),
    }, lambda k: 28 * k["conv"] + 16 * k["conv"] * k["fc1"] + k["fc1"] + 3 * k["fc1"] + 3),

    Case("pooling", Pooling, (3, 8, 8), {
        "(input x)": _inp("conv"),
        "conv": G(6, ["conv"], {"conv.out", "conv2.in", "conv3.in"}),
        "conv2": G(8, ["conv2"], {"conv2.out", "fc.in"}),
        "conv3": G(5, ["conv3"], {"conv3.out", "fc_b.in"}),
        "fc": G(4, ["fc", "fc_b"], {"fc.out", "fc_b.out"}, OUTPUT),
    }, lambda k: (28 * k["conv"] + 9 * k["conv"] * k["conv2"] + k["conv2"] + 4 * k["conv2"] * 4 + 4
                  + k["conv"] * k["conv3"] + k["conv3"] + 4 * k["conv3"] + 4)),

    Case("squeeze_excitation", SE, (3, 8, 8), {
        "(input x)": _inp("stem"),
        "stem": G(16, ["stem", "fc2", "l2"], {"stem.out", "bn.channel", "fc1.in", "fc2.out", "l1.in", "l2.out",
                                               "proj.in"}),
        "fc1": G(4, ["fc1"], {"fc1.out", "fc2.in"}),
        "l1": G(4, ["l1"], {"l1.out", "l2.in"}),
        "proj": G(8, ["proj"], {"proj.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: (27 * k["stem"] + 2 * k["stem"] + 2 * (k["stem"] * k["fc1"]) + k["fc1"] + k["stem"]
                  + 2 * (k["stem"] * k["l1"]) + k["l1"] + k["stem"] + k["stem"] * k["proj"] + k["proj"]
                  + 3 * k["proj"] + 3)),

    Case("dropout", WithDropout, (3, 8, 8), {
        "(input x)": _inp("conv"),
        "conv": G(8, ["conv"], {"conv.out", "conv2.in"}),
        "conv2": G(6, ["conv2"], {"conv2.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 28 * k["conv"] + 9 * k["conv"] * k["conv2"] + k["conv2"] + 3 * k["conv2"] + 3),

    Case("nested_sequential", nested, (3, 8, 8), {
        _inp_name("input_1"): _inp("0.0"),  # nn.Sequential's forward argument is called `input`
        "0.0": G(8, ["0.0"], {"0.0.out", "0.1.channel", "1.0.0.in"}),
        "1.0.0": G(12, ["1.0.0"], {"1.0.0.out", "1.0.1.channel", "4.in"}),
        "4": G(4, ["4"], {"4.out"}, OUTPUT),
    }, lambda k: 28 * k["0.0"] + 2 * k["0.0"] + 9 * k["0.0"] * k["1.0.0"] + 2 * k["1.0.0"] + 4 * k["1.0.0"] + 4),

    Case("convnext_like", ConvNeXtLike, (3, 8, 8), {
        "(input x)": _inp("stem"),
        "(output of norm)": G(8, [], {"pw1.in"}, "LayerNorm normalises across channels at node 'norm'"),
        "stem": G(8, ["stem", "dw", "pw2"], {"stem.out", "dw.in_grouped", "dw.out", "pw2.out", "param:gamma",
                                             "fc.in"}, "LayerNorm normalises across channels at node 'norm'"),
        "pw1": G(32, ["pw1"], {"pw1.out", "param:hs", "pw2.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 104 + 80 + 16 + (8 * k["pw1"] + k["pw1"]) + k["pw1"] + (k["pw1"] * 8 + 8) + 8 + 27),

    Case("upsampling", Upsampling, (3, 8, 8), {
        "(input x)": _inp("a", "b"),
        "a": G(6, ["a"], {"a.out", "c.in"}),
        "b": G(4, ["b"], {"b.out", "c.in"}),
        "c": G(5, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 28 * k["a"] + 4 * k["b"] + (k["a"] + k["b"]) * k["c"] + k["c"] + 3 * k["c"] + 3),

    Case("shared_conv", SharedConv, (3, 8, 8), {
        "(input x)": _inp("stem"),
        "stem": G(8, ["stem", "conv"], {"stem.out", "conv.in", "conv.out", "head.in"}),
        "head": G(5, ["head"], {"head.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 4 * k["stem"] + 9 * k["stem"] ** 2 + k["stem"] + k["stem"] * k["head"] + k["head"] + 3 * k["head"]
        + 3),

    # rejections: the affected groups are locked with a reason naming the node, the rest is prunable
    Case("channel_shuffle", ChannelShuffle, (3, 8, 8), {
        "(input x)": _inp("a"),
        "a": G(4, ["a"], {"a.out", "bn.channel", "b.in"}),
        "b": G(6, ["b"], {"b.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 3 * 2 * k["a"] + 2 * 2 * k["a"] + 2 * k["a"] * k["b"] + k["b"] + 3 * k["b"] + 3),

    Case("hardcoded_view", HardcodedView, (3, 4, 4), {
        "(input x)": _inp("a"),
        "a": G(32, ["a"], {"a.out"}, "reshape with a hard-coded size 512 in the channel dimension at node 'view'"),
        "(output of view)": G(512, [], {"fc.in"}, "at node 'view'"),
        "fc": G(10, ["fc"], {"fc.out", "fc2.in"}),
        "fc2": G(3, ["fc2"], {"fc2.out"}, OUTPUT),
    }, lambda k: 28 * 32 + 512 * k["fc"] + k["fc"] + 3 * k["fc"] + 3),

    Case("channel_mean", ChannelMean, (3, 8, 8), {
        "(input x)": _inp("a"),
        "a": G(8, ["a"], {"a.out", "b.in"}, "reduction over channels at node 'mean'"),
        "(output of mean)": G(1, [], set(), "reduction over channels at node 'mean'"),
        "b": G(6, ["b"], {"b.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 28 * 8 + 8 * k["b"] + k["b"] + 3 * k["b"] + 3),

    Case("channel_index", ChannelIndex, (3, 8, 8), {
        "(input x)": _inp("a"),
        "a": G(4, ["a"], {"a.out", "c.in"}),
        "a#1": G(4, ["a"], {"a.out", "c.in", "b.in"}, "the slice [0:4] of 8 channels has constant bounds: channels "
                 "before 4 keep their positions at node 'getitem'"),
        "b": G(6, ["b", "c"], {"b.out", "c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 4 * (4 + k["a"]) + 4 * k["b"] + k["b"] + (4 + k["a"]) * k["b"] + k["b"] + 3 * k["b"] + 3),

    Case("division", Division, (3, 8, 8), {
        "(input x)": _inp("a", "b"),
        "a": G(8, ["a"], {"a.out"}, "division by a tensor with channels (a pruned channel would divide by zero) "
                                    "at node 'truediv'"),
        "b": G(8, ["b"], {"b.out"}, "at node 'truediv'"),
        "(output of truediv)": G(8, [], {"c.in"}, "at node 'truediv'"),
        "c": G(6, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 32 + 32 + 8 * k["c"] + k["c"] + 3 * k["c"] + 3),

    Case("pole", Pole, (3, 8, 8), {
        "(input x)": _inp("a"),
        "a": G(8, ["a"], {"a.out"}, "not finite at zero (a pruned channel would become inf) at node 'rsqrt'"),
        "(output of rsqrt)": G(8, [], {"c.in"}, "at node 'rsqrt'"),
        "c": G(6, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 32 + 8 * k["c"] + k["c"] + 3 * k["c"] + 3),

    Case("untraceable_leaf", Untraceable, (3, 8, 8), {
        "(input x)": _inp("a"),
        "a": G(8, ["a"], {"a.out"}, "unsupported module type Gate at node 'gate'"),
        "(output of gate)": G(8, [], {"c.in"}, "at node 'gate'"),
        "c": G(6, ["c"], {"c.out", "fc.in"}),
        "fc": G(3, ["fc"], {"fc.out"}, OUTPUT),
    }, lambda k: 32 + 72 + 8 * k["c"] + k["c"] + 3 * k["c"] + 3, leaf_modules=["gate"]),
]

for _c in CASES:
    _register(f"test_patterns_{_c.name}", _c.build)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pattern(case: Case, seed: int, tmp_path):
    change = run_case(case, seed, tmp_path)
    if seed == 0:  # the masks matter: pruning changes the function, so exactness is not vacuous
        assert change > 1e-6


# --- pattern-specific details -------------------------------------------------------------------------------


def test_grouped_conv_prunes_whole_groups(tmp_path):
    case = next(c for c in CASES if c.name == "grouped")
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape)
    res = shrink(model, case.input_shape, {"c1": [1, 3]}, graph=graph)
    g = res.model.g
    assert (g.in_channels, g.out_channels, g.groups) == (8, 12, 2)
    # kept conv groups 0 and 2: input channels 0-3, 8-11 and output channels 0-5, 12-17
    keep_out = [*range(0, 6), *range(12, 18)]
    assert torch.equal(g.weight, model.g.weight[keep_out])
    assert torch.equal(res.model.c1.weight, model.c1.weight[[*range(0, 4), *range(8, 12)]])
    assert torch.equal(res.model.c3.weight, model.c3.weight[:, keep_out])


def test_depthwise_multiplier_keeps_channel_pairs():
    case = next(c for c in CASES if c.name == "depthwise")
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape)
    res = shrink(model, case.input_shape, {"pw0": [0, 5]}, graph=graph)
    keep = [1, 2, 3, 4, 6, 7]
    pairs = [c for j in keep for c in (2 * j, 2 * j + 1)]
    assert res.model.dw.groups == 6 and res.model.dwm.groups == 6 and res.model.dwm.out_channels == 12
    assert torch.equal(res.model.dwm.weight, model.dwm.weight[pairs])
    assert torch.equal(res.model.pw.weight, model.pw.weight[:, pairs])


def test_concat_offsets():
    case = next(c for c in CASES if c.name == "concat")
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape)
    res = shrink(model, case.input_shape, {"a": [0, 4], "b": [1, 2, 9]}, graph=graph)
    keep = [1, 2, 3, 5] + [6 + j for j in (0, 3, 4, 5, 6, 7, 8)]
    assert torch.equal(res.model.c.weight, model.c.weight[:, keep])
    assert torch.equal(res.model.bn.running_mean, model.bn.running_mean[keep])


def test_concat_add_couples_by_offset():
    case = next(c for c in CASES if c.name == "concat_add")
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape)
    res = shrink(model, case.input_shape, {"b": [0, 9]}, graph=graph)
    keep = [*range(6), *range(7, 15)]
    assert torch.equal(res.model.d.weight, model.d.weight[keep])
    assert torch.equal(res.model.c.weight, model.c.weight[:, keep])
    assert res.model.a.out_channels == 6 and res.model.b.out_channels == 8


@pytest.mark.parametrize("name", ["flatten_linear", "view_linear"])
def test_flatten_linear_removes_feature_blocks(name):
    case = next(c for c in CASES if c.name == name)
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape)
    res = shrink(model, case.input_shape, {"conv": [2]}, graph=graph)
    cols = [*range(0, 32), *range(48, 64)]  # channel 2 owned features 32..47
    assert torch.equal(res.model.fc1.weight, model.fc1.weight[:, cols])


def test_convnext_like_slices_plain_parameters():
    case = next(c for c in CASES if c.name == "convnext_like")
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape)
    res = shrink(model, case.input_shape, {"pw1": list(range(0, 32, 2))}, graph=graph)
    odd = list(range(1, 32, 2))
    assert torch.equal(res.model.hs.detach(), model.hs.detach()[odd])
    assert torch.equal(res.model.pw2.weight, model.pw2.weight[:, odd])
    assert res.model.gamma.shape == (8,) and res.model.norm.normalized_shape == (8,)


def test_locked_group_cannot_be_pruned():
    for name, group in [("hardcoded_view", "a"), ("channel_mean", "a"),
                        ("channel_index", "a#1"), ("convnext_like", "stem"), ("division", "a"), ("division", "b"),
                        ("pole", "a")]:
        case = next(c for c in CASES if c.name == name)
        model = case.build().eval()
        graph = DependencyGraph(model, case.input_shape)
        with pytest.raises(PrunekitError, match="cannot be pruned: .* at node '"):
            shrink(model, case.input_shape, {group: [0]}, graph=graph)
        plan = {r["group"]: r for r in graph.plan("all")["groups"]}
        assert plan[group]["status"] == "locked" and "at node '" in plan[group]["reason"]


def test_division_by_pruned_channel_would_be_nan():
    """Why division is locked: with the old rule (a / b coupled, prunable) the masked reference divides 0 / 0."""
    class Div(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(self.a(x) / self.b(x)).mean((2, 3))

    m = Div().eval()
    x = example_inputs((3, 8, 8))
    with torch.no_grad():
        m.a.weight[0] = 0
        m.a.bias[0] = 0
        m.b.weight[0] = 0
        m.b.bias[0] = 0
        assert torch.isnan(m(x)).all()  # what a masked channel 0 does
    g = DependencyGraph(m, (3, 8, 8))
    assert g.by_name["a"].locked and g.by_name["b"].locked and not any(grp.prunable for grp in g.groups)


def test_untraceable_names_module_and_suggests_leaf():
    from prunekit.graph import trace

    with pytest.raises(PrunekitError) as e:
        trace(Untraceable().eval())
    msg = str(e.value)
    assert "'gate'" in msg and "Gate" in msg and "leaf" in msg and "leaf_modules=['gate']" in msg


def test_untraceable_module_becomes_a_locked_leaf():
    """The graph makes a submodule torch.fx cannot trace a leaf and locks its channels, naming it and why."""
    g = DependencyGraph(Untraceable().eval(), (3, 8, 8))
    why = g.by_name["a"].locked
    assert why and "Gate that torch.fx cannot trace" in why and "control flow" in why and "'gate'" in why
    assert g.by_name["c"].prunable
    with pytest.raises(PrunekitError, match="the model itself"):
        DependencyGraph(Gate().eval(), (8, 8, 8))  # nothing to fall back to when the model's own forward fails


def test_untraceable_nested_module_is_named():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.body = nn.Sequential(nn.ReLU(), Gate())

        def forward(self, x):
            return self.body(self.a(x))

    from prunekit.graph import trace

    with pytest.raises(PrunekitError, match=r"inside module 'body\.1' \(Gate\).*leaf_modules=\['body\.1'\]"):
        trace(Outer().eval())
    auto = DependencyGraph(Outer().eval(), (3, 8, 8))
    assert auto.by_name["a"].locked and "'body_1'" in auto.by_name["a"].locked
    g = DependencyGraph(Outer().eval(), (3, 8, 8), leaf_modules=["body.1"])
    assert g.by_name["a"].locked and "'body_1'" in g.by_name["a"].locked


def test_leaf_module_channels_untouched(tmp_path):
    case = next(c for c in CASES if c.name == "untraceable_leaf")
    model = randomize(case.build())
    graph = DependencyGraph(model, case.input_shape, leaf_modules=["gate"])
    assert not any(m.startswith("gate.") for g in graph.groups for m in g.members)
    res = shrink(model, case.input_shape, {"c": [0, 1, 2]}, graph=graph)
    assert torch.equal(res.model.gate.conv.weight, model.gate.conv.weight)
    assert res.model.c.out_channels == 3


def test_masked_reference_equals_zeroing():
    """The masked model (the reference surgery is verified against) is the dense model with the pruned
    channels' producing weights zeroed, for a net where zeroing is exact (conv -> relu -> conv)."""
    model = randomize(ConvChain())
    graph = DependencyGraph(model, (3, 8, 8))
    x = example_inputs((3, 8, 8))
    removed = {"conv1": [1, 4, 6]}
    with masked(model, graph, removed), torch.no_grad():
        ref = model(x)
    z = ConvChain()
    z.load_state_dict(model.state_dict())
    z.eval()
    with torch.no_grad():
        z.conv1.weight[removed["conv1"]] = 0
        z.conv1.bias[removed["conv1"]] = 0
        assert torch.allclose(z(x), ref, atol=1e-6)
