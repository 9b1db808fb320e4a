"""Pruning policy: which groups, how many channels each keeps, and the config object that says so."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PrunekitError
from ..graph import DependencyGraph, Group
from ..schema import F, build, to_dict, validate
from .budget import round_keep
from .criteria import CRITERIA
from .schedules import Schedule, ScheduleSpec, from_config

SCOPES = ("local", "global")
GLOBAL_NORMS = ("mean", "lamp")
TARGETS = ("channels", "macs", "params")


@dataclass
class Override:
    """Per-layer override, matched by regex against a group's producing layers.

    ``sparsity`` replaces the final sparsity for matching groups (the schedule is scaled accordingly);
    ``exclude`` leaves them alone.
    """

    layers: str = F("", "regex over producing layer names")
    sparsity: float | None = F(None, "final sparsity of the matching groups", lo=0, hi=1, hi_open=True)
    exclude: bool = F(False, "never prune the matching groups")

    def check(self, path: str = "prune.overrides") -> None:
        if not self.layers:
            raise PrunekitError(f"{path} entries need a 'layers' regex")
        _compile(self.layers, "override regex")


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise PrunekitError(f"invalid {what} '{pattern}': {e}") from None


@dataclass
class PruningConfig:
    """Everything that defines a pruning run (``prune_(model, PruningConfig(...), input_shape)``).

    Args:
        schedule: a :class:`Schedule` (``PolynomialDecay(0.0, 0.5, begin_step=0, end_step=1000)``) or a
            :class:`ScheduleSpec` (steps or epochs, resolved against the training run).
        criterion: ``l1``, ``l2`` (group norms), ``l1_filters``, ``bn_gamma``, ``taylor``, ``random`` or a
            registered criterion.
        scope: ``local`` (each group to the target) or ``global`` (ranked across groups, normalised by
            each group's mean score or LAMP, ``global_norm``; no group below ``global_floor`` of its local keep
            count).
        layers: ``pointwise`` (non-grouped 1x1 convs), ``all``, or regex(es) over producing layer names.
        exclude: regex of producing layers never to prune.
        overrides: per-layer :class:`Override` entries.
        round_to: keep channel counts multiples of this (8 suits int8 kernels and tensor cores).
        min_channels: never keep fewer channels in a group.
        target: what ``sparsity`` measures: fraction of ``channels``, of ``macs`` or of ``params`` removed.
        taylor_batches: batches of gradient statistics gathered before each pruning step (Taylor criterion).
        seed: for the random criterion.
        leaf_modules: module names not traced into by torch.fx (left unpruned).
    """

    schedule: ScheduleSpec | Schedule = F(factory=ScheduleSpec, doc="when and how much to prune")
    criterion: str = F("l1", "channel importance (l1/l2: norm over the whole channel group; l1_filters: producing "
                       "filters only)", choices=lambda: list(CRITERIA))
    scope: str = F("local", "local: each layer to the target; global: ranked across layers", choices=SCOPES)
    layers: str | list[str] = F("pointwise", "pointwise | all | regex (or list) over producing layer names")
    exclude: str | None = F(None, "regex of layers never to prune")
    overrides: list[Override] = F([], "[{layers: REGEX, sparsity: S} | {layers: REGEX, exclude: true}]")
    round_to: int = F(1, "keep channel counts multiples of this", lo=1, hi=1024)
    min_channels: int = F(1, "minimum channels kept per group", lo=1)
    target: str = F("channels", "what sparsity measures", choices=TARGETS)
    taylor_batches: int = F(16, "batches of gradient statistics per Taylor update", lo=1, hi=100_000)
    max_sparsity: float = F(0.95, "no group loses more than this fraction of its channels (global scope, budgets)",
                            lo=0, hi=1, lo_open=True, hi_open=True)
    global_norm: str = F("lamp", "global scope: how scores are made comparable across groups (mean: divided by "
                         "the group's mean; lamp: each score squared over the sum of the squares of the group's "
                         "scores not below it, Lee et al. 2021)", choices=GLOBAL_NORMS)
    global_floor: float = F(0.5, "global scope: every group keeps at least this fraction of the channels the same "
                            "target would keep in every layer (0: no floor, 1: the same as local)", lo=0, hi=1)
    global_per_cost: bool = F(True, "global scope with a macs/params target: rank channels by their normalised "
                              "score per MAC (parameter) that removing one saves, so a channel of a costly layer "
                              "goes before an equally ranked one of a cheap layer (false: by score alone, which "
                              "did worse than local at 1/4 of the MACs, README)")
    allocation: dict[str, float] | None = F(None, "final sparsity per group (group name -> sparsity): what a budget "
                                            "search chose; each group ramps to its own target with the schedule",
                                            user=False)
    seed: int = F(0, "seed of the random criterion", lo=0, user=False)
    leaf_modules: list[str] = F([], "module names torch.fx does not trace into (their channels are left unpruned)")

    def check(self, path: str = "prune") -> None:
        for name, v in (self.allocation or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise PrunekitError(f"{path}.allocation['{name}'] must be a sparsity in [0, 1), got {v!r}")
        layers = [self.layers] if isinstance(self.layers, str) else self.layers
        if not layers:
            raise PrunekitError(f"{path}.layers must be 'pointwise', 'all' or regex(es), got {self.layers!r}")
        for pat in [p for p in layers if p not in ("pointwise", "all")] + ([self.exclude] if self.exclude else []):
            _compile(pat, "layer regex")

    def validate(self) -> PruningConfig:
        """Check every field (raises :class:`PrunekitError` with the key and the closest valid value)."""
        if isinstance(self.schedule, dict):
            raise PrunekitError("prune.schedule must be a Schedule (e.g. PolynomialDecay(...)) or a ScheduleSpec, "
                                "not a dict")
        return validate(self, "prune")

    def build_schedule(self, steps_per_epoch: int | None = None, total_steps: int | None = None) -> Schedule:
        if isinstance(self.schedule, Schedule):
            return self.schedule
        return self.schedule.build(steps_per_epoch, total_steps)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruningConfig:
        """The inverse of :meth:`to_dict` (a saved pruning plan; its schedule is a tfmot-style config)."""
        d = dict(d)
        sched = d.pop("schedule", None)
        cfg = build(cls, d, "prune", internal=True)
        if isinstance(sched, dict) and "config" in sched:
            try:
                cfg.schedule = from_config(sched)
            except ValueError as e:
                raise PrunekitError(f"prune.schedule: {e}") from None
        elif sched is not None:
            cfg.schedule = build(ScheduleSpec, sched, "prune.schedule")
        return cfg


# --- allocation ---------------------------------------------------------------------------------


class Allocator:
    """Turns scores and a target sparsity into keep-flags per group (monotone: pruned stays pruned).

    ``cost``: a :class:`~prunekit.pruning.budget.CostModel` (per-group keep counts -> MACs or parameters) for
    ``target: macs|params``. With ``config.allocation`` (a budget search's result) every group ramps to its own
    final sparsity: at schedule sparsity ``s`` it is at ``allocation[g] * s / final``."""

    def __init__(self, graph: DependencyGraph, groups: Sequence[Group], config: PruningConfig,
                 final_sparsity: float, cost: Any = None):
        self.graph, self.groups, self.cfg = graph, list(groups), config
        self.final = final_sparsity
        self.scale: dict[int, float] = {}
        self.excluded: set[int] = set()
        ratio = (lambda v: v / final_sparsity) if final_sparsity > 0 else (lambda v: 0.0)
        for g in self.groups:
            if config.allocation is not None:
                self.scale[g.id] = ratio(config.allocation.get(g.name, 0.0))
                continue
            for ov in config.overrides:
                if any(re.search(ov.layers, p) for p in g.producers):
                    if ov.exclude:
                        self.excluded.add(g.id)
                    elif ov.sparsity is not None:
                        self.scale[g.id] = ratio(ov.sparsity)
        self.cost_model = cost

    # -- channel-fraction allocation --
    def local(self, scores: dict[int, np.ndarray], alive: dict[int, np.ndarray], s: float) -> dict[int, np.ndarray]:
        out = {}
        for g in self.groups:
            a = alive[g.id]
            if g.id in self.excluded:
                out[g.id] = a.copy()
                continue
            sg = min(self.cfg.max_sparsity, s * self.scale.get(g.id, 1.0))
            k = round_keep(g.size * (1 - sg), g.size, self.cfg.round_to, self.cfg.min_channels)
            out[g.id] = _top(scores[g.id], a, min(k, int(a.sum())))
        return out

    def global_(self, scores: dict[int, np.ndarray], alive: dict[int, np.ndarray], s: float,
                unit: dict[int, float] | None = None) -> dict[int, np.ndarray]:
        """Channels ranked across groups (normalised scores, divided by ``unit``, each group's saving per channel,
        when given), each group kept at or above its floor."""
        fixed = {g.id for g in self.groups if g.id in self.excluded or g.id in self.scale}
        out = self.local(scores, alive, s) if fixed else {}
        free = [g for g in self.groups if g.id not in fixed]
        total = sum(g.size for g in free)
        target_keep = int(round(total * (1 - s)))
        cand = []
        for g in free:
            a = alive[g.id]
            norm = normalised(scores[g.id], a, self.cfg.global_norm)
            if unit is not None:
                norm = norm / unit[g.id]
            for j in np.flatnonzero(a):
                cand.append((norm[j], g.id, j))
        cand.sort(key=lambda t: (t[0], t[1], t[2]))
        keep_n = {g.id: int(alive[g.id].sum()) for g in free}
        n_alive = sum(keep_n.values())
        # the per-group floor: never ranked below global_floor x the local keep count (a ranking across layers
        # otherwise empties the layers whose scores spread widest, and the network never recovers in fine-tuning)
        floor = {g.id: max(min(self.cfg.min_channels, g.size), math.ceil(g.size * (1 - self.cfg.max_sparsity)),
                           math.ceil(self.cfg.global_floor * g.size * (1 - min(s, self.cfg.max_sparsity)) - 1e-9))
                 for g in free}
        for _, gid, _ in cand:
            if n_alive <= target_keep:
                break
            if keep_n[gid] > floor[gid]:
                keep_n[gid] -= 1
                n_alive -= 1
        for g in free:
            k = round_keep(keep_n[g.id], g.size, self.cfg.round_to, self.cfg.min_channels)
            out[g.id] = _top(scores[g.id], alive[g.id], min(k, int(alive[g.id].sum())))
        return out

    def allocate(self, scores, alive, s: float) -> dict[int, np.ndarray]:
        if s <= 0:
            return {g.id: alive[g.id].copy() for g in self.groups}
        fn = self.local if self.cfg.scope == "local" else self.global_
        if self.cfg.target == "channels":
            return fn(scores, alive, s)
        if self.cfg.scope == "global" and self.cfg.global_per_cost:  # the savings per channel, once per step
            fn = functools.partial(self.global_, unit=self.unit_costs(alive))
        # MAC/param targets: find the channel sparsity that removes fraction `s` of the cost.
        full = self.cost({g.id: np.ones(g.size, dtype=bool) for g in self.groups})
        goal = full * (1 - s)
        lo, hi, best = 0.0, 0.999, fn(scores, alive, 0.0)
        for _ in range(30):
            mid = (lo + hi) / 2
            trial = fn(scores, alive, mid)
            if self.cost(trial) > goal:
                lo = mid
            else:
                hi, best = mid, trial
        return best if self.cost(best) <= goal * 1.0001 else fn(scores, alive, hi)

    def cost(self, keep: dict[int, np.ndarray]) -> float:
        """MACs or parameters with these keep-flags."""
        return self.cost_model(np.array([int(keep[g.id].sum()) for g in self.groups]))

    def unit_costs(self, alive: dict[int, np.ndarray]) -> dict[int, float]:
        """What removing one more channel of each group saves (MACs or parameters, at the current keep counts;
        never below a millionth of the largest saving, so a group that saves nothing is ranked last, not
        divided by zero)."""
        counts = np.array([int(alive[g.id].sum()) for g in self.groups])
        base = float(self.cost_model(counts))
        saved = {}
        for i, g in enumerate(self.groups):
            fewer = counts.copy()
            fewer[i] = max(0, fewer[i] - 1)
            saved[g.id] = max(0.0, base - float(self.cost_model(fewer)))
        top = max(saved.values(), default=0.0)
        return {k: max(v, 1e-6 * top, 1e-12) for k, v in saved.items()}


def normalised(scores: np.ndarray, alive: np.ndarray, norm: str) -> np.ndarray:
    """A group's scores made comparable across groups (``global_norm``): ``lamp`` (:func:`lamp`) or ``mean``
    (divided by the mean of the alive components' scores)."""
    if norm == "lamp":
        return lamp(scores, alive)
    mean = float(scores[alive].mean()) if alive.any() else 1.0
    return scores / mean if mean > 0 else np.zeros_like(scores)


def lamp(scores: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """LAMP scores of a group's alive components: ``s_j^2 / sum of s_k^2 over the alive k with s_k >= s_j`` (ties
    by index, as :func:`_top` breaks them); each group's best component scores 1, so a ranking across groups
    never empties one first. Dead components score 0."""
    out = np.zeros(len(scores), dtype=np.float64)
    idx = np.flatnonzero(alive)
    if not len(idx):
        return out
    order = idx[np.lexsort((-idx, scores[idx]))]  # ascending score; among ties the higher index first
    sq = np.asarray(scores[order], dtype=np.float64) ** 2
    tail = np.cumsum(sq[::-1])[::-1]  # sum over this component and every better one
    out[order] = np.where(tail > 0, sq / np.where(tail > 0, tail, 1.0), 0.0)
    return out


def _top(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` highest-scoring alive components (ties broken by lower index)."""
    idx = np.flatnonzero(alive)
    if k >= len(idx):
        return alive.copy()
    order = idx[np.lexsort((idx, -scores[idx]))]
    keep = np.zeros_like(alive)
    keep[order[:k]] = True
    return keep
