"""Channel importance criteria, computed per channel *group* (summed over coupled layers).

Each criterion returns, for every selected group, one score per component (higher = more important).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import unknown
from ..graph import DependencyGraph, Group

CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(name: str):
    def deco(cls):
        CRITERIA[name] = cls
        cls.name = name
        return cls

    return deco


def get_criterion(name: str, **kwargs) -> Criterion:
    if name not in CRITERIA:
        raise unknown("criterion", name, CRITERIA)
    return CRITERIA[name](**kwargs)


def _scatter(graph: DependencyGraph, groups: Sequence[Group], per_slot) -> dict[int, np.ndarray]:
    """Sum per-position values of every slot ``per_slot(slot) -> array|None`` into group components."""
    scores = {g.id: np.zeros(g.size, dtype=np.float64) for g in groups}
    wanted = set(scores)
    for s in graph.state.slots:
        vals = per_slot(s)
        if vals is None:
            continue
        for gid, pos, local in graph.slot_components(s):
            if gid in wanted:
                np.add.at(scores[gid], local, vals[pos])
    return scores


class Criterion(ABC):
    """Scores channels; ``needs_data`` criteria (Taylor) read gradients collected during training."""

    name = "criterion"
    needs_data = False

    @abstractmethod
    def scores(self, model: nn.Module, graph: DependencyGraph, groups: Sequence[Group], *, step: int = 0,
               data: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
        """``{group id: scores}``."""


class _Norm(Criterion):
    p = 1
    consumers = True  # also weigh how the channel is used: BN gamma and the next layers' input weights

    def scores(self, model, graph, groups, *, step=0, data=None):
        modules = dict(model.named_modules())

        def norm(w: torch.Tensor, dim: int) -> np.ndarray:
            w = w.detach().float().transpose(0, dim)
            w = w.reshape(w.shape[0], -1)
            return (w.abs().sum(1) if self.p == 1 else w.pow(2).sum(1)).cpu().numpy()

        def member(s):
            m = modules.get(s.module)
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor):
                return None
            if s.kind == "out" or (self.consumers and s.kind == "in"):
                return norm(w, s.dim)  # the slot's weight dimension: output rows / input columns
            if self.consumers and s.kind == "channel" and isinstance(m, nn.modules.batchnorm._BatchNorm):
                return norm(w[:, None], 0)
            return None

        out = _scatter(graph, groups, member)
        return out if self.p == 1 else {k: np.sqrt(v) for k, v in out.items()}


@register_criterion("l1")
class L1(_Norm):
    """L1 norm over the whole channel group: producing filters, BN gamma and the next layers' input weights
    (as Torch-Pruning's group magnitude; after BatchNorm a filter's own norm says little about its output)."""

    p = 1


@register_criterion("l2")
class L2(_Norm):
    """L2 norm over the whole channel group (producing filters, BN gamma, next layers' input weights)."""

    p = 2


@register_criterion("l1_filters")
class L1Filters(_Norm):
    """Sum of absolute weights of the producing filters only (Li et al., 2017)."""

    p = 1
    consumers = False


@register_criterion("bn_gamma")
class BNGamma(Criterion):
    """|gamma| of the BatchNorm layers in the group (Network Slimming, Liu et al., 2017); L1 if there is none."""

    def scores(self, model, graph, groups, *, step=0, data=None):
        modules = dict(model.named_modules())

        def gammas(s):
            m = modules.get(s.module)
            if s.kind != "channel" or not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.weight is None:
                return None
            return m.weight.detach().float().abs().cpu().numpy()

        out = _scatter(graph, groups, gammas)
        fallback = None
        for g in groups:
            if not out[g.id].any():
                fallback = fallback or L1().scores(model, graph, groups)
                out[g.id] = fallback[g.id]
        return out


@register_criterion("taylor")
class Taylor(Criterion):
    """First-order Taylor: (sum over batch of activation x gradient at the channel gate)^2, averaged over
    batches (Molchanov et al., 2019). Collected by the pruner's mask hooks during training; falls back to L1
    when nothing was collected yet."""

    needs_data = True

    def scores(self, model, graph, groups, *, step=0, data=None):
        if not data or all(not np.any(v) for v in data.values()):
            return L1().scores(model, graph, groups)
        return {g.id: np.asarray(data.get(g.id, np.zeros(g.size)), dtype=np.float64) for g in groups}


@register_criterion("random")
class Random(Criterion):
    """Uniform random scores (a baseline), seeded by ``seed`` and the step."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, model, graph, groups, *, step=0, data=None):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return {grp.id: torch.rand(grp.size, generator=g, dtype=torch.float64).numpy() for grp in groups}
