"""Allocation search: how many channels each group keeps so that the model meets a budget.

1. :func:`uniform` — the same sparsity everywhere (a width multiplier), scaled until the budget is met: the
   baseline every search must beat.
2. :func:`greedy` — start dense; repeatedly take one step off the group whose step costs the least loss per unit
   of budget saved (loss from the measured sensitivity curves, cost from the budget's cost model: MACs,
   parameters or measured latency) until the budget is met.
3. :func:`ranked` — no search: every channel ranked across groups by its normalised weight score (LAMP) per MAC
   (or parameter) its removal saves, lowest first, until the budget is met — at a latency budget the ranking is
   still per MAC, sized by the latency model. The chunked form of ``scope: global`` with ``global_per_cost``; the
   default allocation of a budgeted prune (it did best at the quarter budgets of our benchmark, README).
4. :func:`search` — EagleEye-style: a few hundred different candidate allocations that all meet the budget
   (the greedy, uniform and ranked ones, perturbations of the greedy one, random directions; near the cheapest
   allowed model a direction's groups saturate at max_sparsity one by one), each scored by adaptive-BN accuracy on a
   held-out training slice; with ``refine`` (a short masked fine-tuning of each,
   :class:`~prunekit.pruning.sensitivity.FinetuneEvaluator`), the best ``refine_top`` by that score and the
   uniform and greedy allocations are scored again after it, and the best of those is kept.
5. :func:`confirmed` — the pick is scored again with uniform's allocation on fresh images, and kept only if it
   beats uniform there by more than 2 paired standard errors: the best of a hundred noisy scores is partly luck
   (near the cheapest allowed model every candidate scores near chance), and without evidence that the search
   found something better, the search does not replace the baseline.

Every allocation respects ``round_to``, ``min_channels`` and ``max_sparsity``; groups that are not searched
(exclusions, overrides) stay as they are. The greedy and searched allocations also keep every group at or above
a floor: ``floor`` x the channels uniform pruning to the same budget keeps there (:func:`floor_of`). Without it,
near the cheapest allowed model (a latency budget's quarter) most candidates cut some layers to the minimum, and
those bottlenecks are what fine-tuning recovers from worst (``benchmarks/results/allocation_spread_*``); the
same reason as ``global_floor`` for a global ranking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import PrunekitError
from .budget import CostModel, round_keep
from .policy import GLOBAL_NORMS, normalised
from .sensitivity import Sensitivity

LEVELS = 32  # sparsity levels per group the greedy search steps through
CONFIRM_Z = 2.0  # standard errors by which the search's pick must beat uniform on fresh images (:func:`confirmed`)


@dataclass
class Allocation:
    """Channels kept per group (``keep[i]`` of ``sizes[i]`` for group ``names[i]``) and its predicted cost."""

    names: list[str]
    sizes: list[int]
    keep: list[int]
    cost: float
    method: str
    score: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def sparsity(self) -> dict[str, float]:
        return {n: 1 - k / s for n, k, s in zip(self.names, self.keep, self.sizes, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "cost": self.cost, "score": self.score,
                "groups": [{"group": n, "kept": k, "total": s} for n, k, s in zip(self.names, self.keep, self.sizes,
                                                                                   strict=True)], **self.extra}


@dataclass
class Limits:
    round_to: int = 1
    min_channels: int = 1
    max_sparsity: float = 0.95

    def levels(self, size: int) -> list[int]:
        """Allowed keep counts of a group, from ``size`` down (descending, unique)."""
        ks = {round_keep(size * (1 - s), size, self.round_to, self.min_channels)
              for s in np.linspace(0, self.max_sparsity, LEVELS + 1)}
        return sorted(ks, reverse=True)

    def keep(self, size: int, sparsity: float) -> int:
        s = min(max(sparsity, 0.0), self.max_sparsity)
        return round_keep(size * (1 - s), size, self.round_to, self.min_channels)


def floor_of(base: Allocation, fraction: float, limits: Limits) -> list[int]:
    """Per group, the fewest channels an allocation may keep: ``fraction`` x what ``base`` (uniform pruning to the
    same budget) keeps, rounded up to a multiple of ``round_to``, within the limits; 0 for no floor."""
    if fraction <= 0:
        return [0] * len(base.keep)
    out = []
    for k, n in zip(base.keep, base.sizes, strict=True):
        f = int(math.ceil(fraction * k - 1e-9))
        if limits.round_to > 1 and f % limits.round_to:
            f = (f // limits.round_to + 1) * limits.round_to
        out.append(min(n, max(f, limits.keep(n, limits.max_sparsity))))
    return out


def _scaled(sizes: Sequence[int], direction: np.ndarray, cost: CostModel, target: float, limits: Limits,
            method: str, names: list[str], floor: Sequence[int] | None = None) -> Allocation | None:
    """Sparsities ``t * direction`` (clipped) with the smallest ``t`` whose cost meets ``target`` (bisection).
    ``t`` goes on until every group has reached ``max_sparsity`` (groups past it stay at it), not only the
    direction's largest: near the cheapest allowed model, as a latency budget's quarter often is, few directions
    meet the budget before their largest group saturates. (Uniform's direction saturates all groups at once.)"""
    lo_keep = floor if floor is not None else [0] * len(sizes)

    def at(t: float) -> list[int]:
        return [max(limits.keep(n, t * d), f) for n, d, f in zip(sizes, direction, lo_keep, strict=True)]

    hi = limits.max_sparsity / max(float(direction.min()), 1e-9)
    if cost(np.array(at(hi))) > target:
        return None
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(np.array(at(mid))) > target:
            lo = mid
        else:
            hi = mid
    keep = at(hi)
    return Allocation(names, list(sizes), keep, cost(np.array(keep)), method)


def infeasible(names: list[str], sizes: Sequence[int], cost: CostModel, target: float,
               limits: Limits) -> PrunekitError:
    """The one-line error for a budget below the cheapest allowed model, with that model's cost (the floor)."""
    floor = cost(np.array([limits.keep(n, limits.max_sparsity) for n in sizes]))
    dense = getattr(cost, "dense", None)
    rel = f" = {floor / dense:.2f}x of the dense model" if dense else ""
    return PrunekitError(f"the budget ({target:.4g} {cost.kind}) cannot be met: the cheapest allowed allocation "
                         f"(every selected group at max_sparsity {limits.max_sparsity}, multiples of "
                         f"{limits.round_to}) costs {floor:.4g}{rel}; select more layers, relax the budget or raise "
                         "prune.max_sparsity")


def uniform(names: list[str], sizes: Sequence[int], cost: CostModel, target: float, limits: Limits) -> Allocation:
    """The same sparsity in every group, as small as meets the budget."""
    a = _scaled(sizes, np.ones(len(sizes)), cost, target, limits, "uniform", names)
    if a is None:
        raise infeasible(names, sizes, cost, target, limits)
    return a


def filled(names: list[str], sizes: Sequence[int], cost: CostModel, target: float, limits: Limits) -> Allocation:
    """Uniform pruning that spends the whole budget: :func:`uniform`'s channels, then one ``round_to`` step at a
    time back to the group with the lowest kept fraction (ties: the first), a group whose step would break the
    budget skipped from then on, until no step fits. No score decides where channels go. With multiples of 8,
    :func:`uniform` can leave a few percent of the budget unused (groups cross a multiple together: 96.4 % of a
    quarter of MobileNet V1 0.5's MACs at 28x28, this 99.7 %), so comparing an allocation with this separates
    "which layers keep channels" from "how much of the budget is spent". ``extra["uniform_cost"]``: uniform's."""
    base = uniform(names, sizes, cost, target, limits)
    keep = np.array(base.keep, dtype=np.int64)
    size = np.asarray(sizes, dtype=np.int64)
    step = max(1, limits.round_to)
    current = base.cost
    blocked = np.zeros(len(keep), dtype=bool)
    while True:
        frac = keep / size
        order = [i for i in np.argsort(frac, kind="stable") if not blocked[i] and keep[i] < size[i]]
        if not order:
            break
        i = order[0]
        trial = keep.copy()
        trial[i] = min(int(size[i]), int(keep[i]) + step)
        c = cost(trial)
        if c <= target:
            keep, current = trial, c
        else:  # this group's next step does not fit now, and the budget only gets fuller
            blocked[i] = True
    return Allocation(names, list(sizes), keep.tolist(), float(current), "uniform_fill",
                      extra={"uniform_cost": base.cost})


class ScoreLoss:
    """What :func:`greedy` needs of a :class:`Sensitivity` (``loss_increase(group, sparsity)``), from channel scores
    instead of measurements: the sum of the normalised scores of the channels a group loses at that sparsity (its
    lowest). ``norm``: ``lamp`` (each score squared over the sum of the squares of the group's scores not below
    it; every group's best channel scores 1) or ``mean`` (divided by the group's mean score)."""

    def __init__(self, names: Sequence[str], scores: Sequence[np.ndarray], norm: str = "lamp"):
        if norm not in GLOBAL_NORMS:
            raise PrunekitError(f"unknown score normalisation '{norm}'; valid: {', '.join(GLOBAL_NORMS)}")
        self.cum: dict[str, np.ndarray] = {}
        for name, sc in zip(names, scores, strict=True):
            sc = np.asarray(sc, dtype=np.float64)
            v = normalised(sc, np.ones(len(sc), dtype=bool), norm)
            self.cum[name] = np.concatenate([[0.0], np.cumsum(np.sort(v))])

    def loss_increase(self, name: str, sparsity: float) -> float:
        c = self.cum[name]
        return float(c[min(len(c) - 1, max(0, int(round(sparsity * (len(c) - 1)))))])


def greedy(sens: Sensitivity | ScoreLoss, names: list[str], sizes: Sequence[int], cost: CostModel, target: float,
           limits: Limits, floor: Sequence[int] | None = None, by: CostModel | None = None) -> Allocation:
    """Take steps off the groups with the least loss per unit of cost saved until the budget is met (no group
    below ``floor``). ``by``: the cost whose savings rank the steps (default ``cost``, which decides when to
    stop)."""
    levels = [sorted({k for k in limits.levels(s) if k > f} | ({f} if f else set()), reverse=True) or [s]
              for s, f in zip(sizes, floor if floor is not None else [0] * len(sizes), strict=True)]
    pos = [0] * len(sizes)
    keep = np.array([lv[0] for lv in levels])
    current = cost(keep)
    rank = by or cost
    while current > target:
        best, best_ratio, flat, flat_loss = None, np.inf, None, np.inf
        now = current if by is None else by(keep)
        for i, lv in enumerate(levels):
            if pos[i] + 1 >= len(lv):
                continue
            trial = keep.copy()
            trial[i] = lv[pos[i] + 1]
            saved = now - rank(trial)
            s_now, s_next = 1 - keep[i] / sizes[i], 1 - trial[i] / sizes[i]
            dloss = sens.loss_increase(names[i], s_next) - sens.loss_increase(names[i], s_now)
            if saved <= 0:  # a measured cost need not fall with every step (latency tables are not monotone)
                if dloss < flat_loss:
                    flat, flat_loss = i, dloss
                continue
            ratio = max(dloss, 1e-6) / saved
            if ratio < best_ratio:
                best, best_ratio = i, ratio
        best = best if best is not None else flat  # no single step saves: take the cheapest in accuracy, go on
        if best is None:
            raise infeasible(names, sizes, cost, target, limits)
        pos[best] += 1
        keep[best] = levels[best][pos[best]]
        current = cost(keep)
    return Allocation(names, list(sizes), keep.tolist(), float(current), "greedy")


def greedy_within(sens: Sensitivity | ScoreLoss, base: Allocation, cost: CostModel, target: float, limits: Limits,
                  floor: float, by: CostModel | None = None) -> Allocation:
    """:func:`greedy` above ``floor`` x ``base``'s channels (:func:`floor_of`, recorded as ``extra["floor"]``);
    where that cannot meet the budget, ``base`` (uniform pruning, which meets it): a measured latency is not
    monotone in every channel count, so the floor (fewer channels than uniform in every group) can cost more than
    uniform itself."""
    lowest = floor_of(base, floor, limits)
    try:
        a = greedy(sens, base.names, base.sizes, cost, target, limits, lowest, by)
    except PrunekitError:
        a = Allocation(base.names, list(base.sizes), list(base.keep), base.cost, "greedy (uniform: the floor does "
                       "not fit)")
    a.extra["floor"] = lowest
    return a


def ranked(scores: Sequence[np.ndarray], names: list[str], sizes: Sequence[int], cost: CostModel, target: float,
           limits: Limits, floor: float = 0.5, norm: str = "lamp", by: CostModel | None = None) -> Allocation:
    """Channels ranked across groups by normalised score per unit of cost saved, removed lowest first (in the
    steps of :meth:`Limits.levels`) until the budget is met; no group below ``floor`` x uniform's channels there
    (:func:`greedy_within`). ``scores[i]``: group ``i``'s channel scores (the pruning criterion's). ``by``: the
    cost whose savings rank the channels, when not the budget's own (a latency budget ranks per MAC saved: ranked
    by the latency table's own savings the allocation lost to uniform pruning at a quarter of the latency, README)."""
    a = greedy_within(ScoreLoss(names, scores, norm), uniform(names, sizes, cost, target, limits), cost, target,
                      limits, floor, by)
    a.method = "ranked" if a.method == "greedy" else a.method.replace("greedy", "ranked")
    return a


def search(evaluate: Callable[[Sequence[int]], dict[str, float]], sens: Sensitivity, names: list[str],
           sizes: Sequence[int], cost: CostModel, target: float, limits: Limits, candidates: int = 100,
           seed: int = 0, progress: Callable[[str], None] | None = None,
           floor: float = 0.5, refine: Callable[[Sequence[int]], dict[str, float]] | None = None,
           refine_top: int = 4, confirm: Callable[[Sequence[int]], np.ndarray] | None = None,
           confirm_z: float = CONFIRM_Z, extra: Sequence[Allocation] = ()) -> tuple[Allocation, list[dict[str, Any]]]:
    """Score the uniform and greedy allocations, ``extra`` ones (e.g. :func:`ranked`'s) and ``candidates`` more that
    meet the budget, none keeping a group below ``floor`` x uniform's channels there; keep the best by adaptive-BN
    top-1 (then loss). With ``refine``,
    the ``refine_top`` best, uniform and greedy are scored again by it (records gain ``refined_top1`` and
    ``refined_loss``) and the best by that score is kept. With ``confirm`` (which images of a fresh slice an
    allocation classifies correctly), the pick must beat uniform there by more than ``confirm_z`` paired standard
    errors, else uniform's allocation is returned (:func:`confirmed`; ``extra["confirm"]`` says what was measured).
    Returns the chosen allocation and every candidate's record (method, cost, score, channels kept per group)."""
    rng = np.random.default_rng(seed)
    base = uniform(names, sizes, cost, target, limits)
    start = greedy_within(sens, base, cost, target, limits, floor)
    lowest = start.extra["floor"]
    pool = [base, start]
    s0 = np.array([1 - k / n for k, n in zip(start.keep, sizes, strict=True)])
    seen = {tuple(a.keep) for a in pool}  # each allocation scored once (near the floor, directions coincide)
    tries = 0
    while len(pool) < candidates + 2 and tries < 20 * (candidates + 2):
        tries += 1
        if len(pool) % 2:  # around the greedy allocation
            direction = np.clip(s0, 0.02, None) * np.exp(rng.normal(0.0, 0.35, len(sizes)))
        else:  # anywhere (EagleEye's random layer-wise ratios)
            direction = rng.uniform(0.05, 1.0, len(sizes))
        a = _scaled(sizes, direction, cost, target, limits, "random", names, lowest)
        if a is not None and tuple(a.keep) not in seen:
            seen.add(tuple(a.keep))
            pool.append(a)
    for a in extra:  # after the random ones, which stay the same draws with or without them
        if tuple(a.keep) not in seen:
            seen.add(tuple(a.keep))
            pool.append(replace(a, score=None))
    records = []
    best = None
    for i, a in enumerate(pool):
        a.score = evaluate(a.keep)
        records.append({"method": a.method, "cost": a.cost, **a.score, "kept": list(a.keep)})
        if best is None or _better(a.score, best.score):
            best = a
        if progress and (i + 1) % 10 == 0:
            progress(f"search: {i + 1}/{len(pool)} candidates, best top-1 {best.score['top1']:.2f}% ({best.method})")
    how = f"best of {len(pool)}: {best.method}"
    if refine is not None:
        order = sorted(range(len(pool)), key=lambda i: (-pool[i].score["top1"], pool[i].score["loss"]))
        finalists = list(dict.fromkeys([0, 1, *order[:max(0, refine_top)]]))  # uniform, greedy, the best few
        best = None
        for n, i in enumerate(finalists):
            r = refine(pool[i].keep)
            records[i].update(refined_top1=r["top1"], refined_loss=r["loss"])
            if best is None or _better(r, best[1]):
                best = (pool[i], r)
            if progress:
                progress(f"search: fine-tuned {n + 1}/{len(finalists)} ({pool[i].method}): top-1 {r['top1']:.2f}% "
                         f"(adaptive BN alone {pool[i].score['top1']:.2f}%)")
        pick, r = best
        best = replace(pick, score={**pick.score, "refined_top1": r["top1"], "refined_loss": r["loss"]})
        how = f"best of {len(finalists)} fine-tuned, from {len(pool)}: {best.method}"
    chosen = Allocation(best.names, best.sizes, best.keep, best.cost, f"search ({how})", best.score,
                        {"floor": lowest})
    if confirm is None or best.keep == base.keep:
        return chosen, records
    check = confirmed(confirm(best.keep), confirm(base.keep), confirm_z)
    chosen.extra["confirm"] = check
    if progress:
        progress(f"search: on {check['images']} fresh held-out images the pick scores {check['searched_top1']:.2f}%, "
                 f"uniform {check['uniform_top1']:.2f}% ({check['diff']:+.2f} +- {check['se']:.2f} paired): "
                 f"{'kept' if check['kept'] == 'searched' else 'not confirmed, uniform allocation kept'}")
    if check["kept"] == "searched":
        return chosen, records
    score = {**base.score, **{k: records[0][k] for k in ("refined_top1", "refined_loss") if k in records[0]}}
    return Allocation(base.names, base.sizes, base.keep, base.cost,
                      f"uniform (the search's pick, {how}, was not confirmed)", score,
                      {"floor": lowest, "confirm": check, "rejected": list(best.keep),
                       "rejected_score": best.score}), records


def confirmed(pick: np.ndarray, base: np.ndarray, z: float = CONFIRM_Z) -> dict[str, Any]:
    """Does ``pick`` (which images one allocation classifies correctly) beat ``base`` (the same images, uniform's
    allocation) by more than ``z`` standard errors? The paired difference of the two accuracies with its standard
    error from the discordant images (McNemar): a search that keeps the best of a hundred noisy scores picks the
    luckiest one; scored again on images it was not chosen on, its lead shrinks to what is real."""
    pick, base = np.asarray(pick, dtype=bool), np.asarray(base, dtype=bool)
    n = len(pick)
    if n == 0 or len(base) != n:
        raise PrunekitError(f"confirming an allocation needs the same images for both ({n} vs {len(base)})")
    b, c = int((pick & ~base).sum()), int((~pick & base).sum())
    diff = (b - c) / n
    se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n
    return {"images": n, "searched_top1": 100.0 * float(pick.mean()), "uniform_top1": 100.0 * float(base.mean()),
            "diff": 100.0 * diff, "se": 100.0 * se, "z": z,
            "kept": "searched" if diff > 0 and diff > z * se else "uniform"}


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """Higher top-1, then lower loss."""
    return (a["top1"], -a["loss"]) > (b["top1"], -b["loss"])
