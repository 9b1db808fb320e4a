"""Budgets, and what a model costs as a function of the channels each group keeps.

A :class:`Budget` is what the user asks for: ``macs=0.25x`` (a quarter of the dense model's MACs),
``params=1.2M``, ``latency_ms=0.5x`` (half the dense model's latency measured on the target runtime). A budget
replaces the per-layer sparsity target: the allocation search (:mod:`prunekit.pruning.search`) chooses how many
channels every group keeps so that the model meets it.

Costs are functions of per-group keep fractions. :class:`ChannelFractions` says, for every layer touching a
pruned group, which fraction of its input and output channels survives; :class:`ProfileCost` turns that into
MACs or parameters (exact for convolutions and linear layers: cost scales with kept inputs x kept outputs);
the latency model of :mod:`prunekit.inference.latency` turns it into measured per-layer latencies.

>>> Budget.parse("macs=0.25x")
Budget(kind='macs', value=0.25, relative=True)
>>> Budget.parse("latency_ms=1.5").target(dense=4.0)
1.5
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import nn

from ..errors import PrunekitError
from ..graph import DependencyGraph, Group

BUDGET_KINDS = ("macs", "params", "latency_ms")
BUDGET_RUNTIMES = ("onnxruntime-fp32", "onnxruntime-int8", "pytorch")
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class Budget:
    """``kind`` (macs | params | latency_ms) and ``value``, absolute or ``relative`` to the dense model."""

    kind: str
    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``KIND=VALUE``: ``macs=0.25x``, ``macs=120M``, ``params=1.2M``, ``latency_ms=0.5x``, ``latency_ms=0.8``."""
        m = re.fullmatch(r"\s*([a-z_]+)\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([xXkKmMgG]?)\s*", str(text))
        if not m:
            raise PrunekitError(f"budget {text!r}: expected KIND=VALUE with KIND one of {', '.join(BUDGET_KINDS)}, "
                                "e.g. macs=0.25x, params=1.2M, latency_ms=0.5x")
        kind, num, suffix = m.group(1), float(m.group(2)), m.group(3).lower()
        if kind not in BUDGET_KINDS:
            from ..errors import closest

            raise PrunekitError(f"budget {text!r}: unknown kind '{kind}'{closest(kind, BUDGET_KINDS)}; valid: "
                                f"{', '.join(BUDGET_KINDS)}")
        relative = suffix == "x"
        if suffix in _SUFFIX:
            if kind == "latency_ms":
                raise PrunekitError(f"budget {text!r}: latency_ms takes milliseconds or a ratio (0.5x)")
            num *= _SUFFIX[suffix]
        if not math.isfinite(num) or num <= 0 or (relative and num >= 1):
            raise PrunekitError(f"budget {text!r}: the value must be > 0" + (" and < 1x (a fraction of the dense "
                                                                               "model)" if relative else ""))
        return cls(kind, num, relative)

    def target(self, dense: float) -> float:
        """The budget in absolute units, given the dense model's cost."""
        return self.value * dense if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}{'x' if self.relative else ''}"


class CostModel(Protocol):
    """A model's cost (MACs, parameters, milliseconds) when group ``i`` keeps ``keep[i]`` channels."""

    kind: str

    def __call__(self, keep: np.ndarray) -> float: ...


# --- which fraction of each layer's channels survives ---------------------------------------------------


class ChannelFractions:
    """For every layer that a pruned group touches: the fraction of its ``in``, ``out``, ``in_grouped`` and
    ``channel`` slots that survive, as a linear function of the groups' keep fractions (vectorised)."""

    KINDS = ("out", "in", "in_grouped", "channel", "param")

    def __init__(self, graph: DependencyGraph, groups: Sequence[Group]):
        self.groups = list(groups)
        self.sizes = np.array([g.size for g in self.groups], dtype=np.float64)
        col = {g.id: i for i, g in enumerate(self.groups)}
        rows: dict[tuple[str, str], tuple[np.ndarray, float, int]] = {}
        for s in graph.state.slots:
            key = (s.module, s.kind)
            if s.kind not in self.KINDS or key in rows or not len(s.labels):
                continue  # a layer called twice has the same channels at every call
            w, other = np.zeros(len(self.groups)), 0.0
            for gid, pos, _ in graph.slot_components(s):
                if gid in col:
                    w[col[gid]] += len(pos)
                else:
                    other += len(pos)
            rows[key] = (w, other, len(s.labels))
        self.keys = list(rows)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.W = np.stack([rows[k][0] for k in self.keys]) if rows else np.zeros((0, len(self.groups)))
        self.other = np.array([rows[k][1] for k in self.keys])
        self.total = np.array([rows[k][2] for k in self.keys], dtype=np.float64)

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        """Surviving fraction of every (module, kind) row for ``keep`` channels per group."""
        f = np.asarray(keep, dtype=np.float64) / self.sizes
        return (self.W @ f + self.other) / self.total

    def touched(self, module: str, kind: str) -> bool:
        """Whether a pruned group reaches this slot of ``module``."""
        i = self.index.get((module, kind))
        return i is not None and bool(self.W[i].any())

    def of(self, fr: np.ndarray, module: str, kind: str) -> float:
        i = self.index.get((module, kind))
        return 1.0 if i is None else float(fr[i])


class ProfileCost:
    """MACs or parameters of the model for per-group keep counts, exactly: a convolution's or linear layer's
    MACs and weights scale with kept inputs x kept outputs (grouped convolutions: kept groups), biases and
    per-channel parameters (BatchNorm, scales) with kept channels."""

    def __init__(self, model: nn.Module, graph: DependencyGraph, groups: Sequence[Group],
                 input_shape: Sequence[int], kind: str = "macs"):
        from ..cost import profile

        if kind not in ("macs", "params"):
            raise ValueError(kind)
        self.kind = kind
        fr = self.fractions = ChannelFractions(graph, groups)
        rows = lambda module, kinds: [fr.index[(module, k)] for k in kinds if (module, k) in fr.index]  # noqa: E731
        terms: list[tuple[float, list[int]]] = []
        if kind == "macs":
            terms = [(float(r.macs), rows(r.name, ("out", "in"))) for r in profile(model, input_shape).rows if r.macs]
        else:
            for name, prm in model.named_parameters():
                owner, _, attr = name.rpartition(".")
                if (name, "param") in fr.index:  # a parameter broadcast against channels (e.g. a layer scale)
                    idx = [fr.index[(name, "param")]]
                elif attr == "bias" or (owner, "channel") in fr.index:
                    idx = rows(owner, ("out", "channel"))
                else:
                    idx = rows(owner, ("out", "in", "channel"))
                terms.append((float(prm.numel()), idx))
        self.cost = np.array([c for c, _ in terms])
        self.rows = [idx for _, idx in terms]
        self.dense = self(np.array([g.size for g in groups]))

    def __call__(self, keep: np.ndarray) -> float:
        fr = self.fractions(keep)
        factors = np.array([np.prod(fr[r]) if r else 1.0 for r in self.rows])
        return float((self.cost * factors).sum())


def round_keep(keep: float, size: int, round_to: int, min_channels: int) -> int:
    """Channels kept by a group of ``size`` for a target of ``keep``: a multiple of ``round_to`` (unless all are
    kept), at least ``min_channels``."""
    k = int(round(keep))
    if round_to > 1 and k < size:
        k = max(round_to, int(round(k / round_to)) * round_to)
    return int(min(size, max(min(min_channels, size), k)))
