"""Property tests for schedules and the channel-allocation policy.

Schedules: sparsity is monotone non-decreasing over steps and stays within [initial, final]; pruning
happens exactly on ``begin + k * frequency`` inside ``[begin, end]``; ``from_config`` / ``to_config``
round-trip. Policy: for local and global scope, every group keeps at least ``min_channels``, a multiple
of ``round_to`` (or all of its channels), counts only go down as sparsity grows and pruned channels stay
pruned; local scope hits each group's target and global scope the total target.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.graph import DependencyGraph
from prunekit.models import create_model
from prunekit.pruning import (
    AGP,
    ConstantSparsity,
    Linear,
    OneShot,
    PolynomialDecay,
    PruningConfig,
    ScheduleSpec,
    from_config,
    prune_,
    strip,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 28, 28)
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- schedules ------------------------------------------------------------------------------------------------

sparsity = st.floats(0.0, 0.99, allow_nan=False, exclude_max=False).map(lambda v: min(v, 0.99))


@st.composite
def poly_schedules(draw):
    a, b = sorted([draw(sparsity), draw(sparsity)])
    begin = draw(st.integers(0, 1000))
    end = begin + draw(st.integers(0, 5000))
    freq = draw(st.integers(1, 500))
    kind = draw(st.sampled_from(["poly", "agp", "linear"]))
    if kind == "agp":
        return AGP(a, b, begin, end, frequency=freq)
    if kind == "linear":
        return Linear(a, b, begin, end, frequency=freq)
    power = draw(st.floats(0.1, 10.0, allow_nan=False))
    return PolynomialDecay(a, b, begin, end, power=power, frequency=freq)


@st.composite
def const_schedules(draw):
    t = draw(sparsity)
    begin = draw(st.integers(0, 1000))
    if draw(st.booleans()):
        return OneShot(t, begin)
    end = draw(st.one_of(st.just(-1), st.integers(begin, begin + 5000)))
    return ConstantSparsity(t, begin, end, draw(st.integers(1, 500)))


schedules = st.one_of(poly_schedules(), const_schedules())


def _bounds(s) -> tuple[float, float]:
    if isinstance(s, PolynomialDecay):
        return s.initial_sparsity, s.final_sparsity
    return s.target_sparsity, s.target_sparsity


@settings(max_examples=300, **_SETTINGS)
@given(s=schedules, steps=st.lists(st.integers(0, 8000), min_size=1, max_size=60))
def test_schedule_monotone_and_bounded(s, steps):
    lo, hi = _bounds(s)
    for step in sorted(set(steps) | {s.begin_step, max(s.end_step, s.begin_step), 10_000}):
        v = s.sparsity(step)
        assert lo - 1e-12 <= v <= hi + 1e-12, (s, step, v)
        if step > 0:
            assert s.sparsity(step - 1) <= v + 1e-12, (s, step)
    at_begin = hi if s.end_step == s.begin_step else lo  # a zero-length ramp is already at its end
    assert s.sparsity(s.begin_step) == pytest.approx(at_begin, abs=1e-12)
    assert s.sparsity(10**7) == pytest.approx(hi, abs=1e-12) and s.final_sparsity == hi


@settings(max_examples=200, **_SETTINGS)
@given(s=schedules)
def test_schedule_monotone_over_every_step(s):
    """Dense scan over the active range (plus margins): never decreases."""
    end = s.end_step if s.end_step >= 0 else s.begin_step + 300
    stride = max(1, (end - s.begin_step) // 400)
    values = [s.sparsity(t) for t in range(max(0, s.begin_step - 5), end + 6, stride)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))


@settings(max_examples=200, **_SETTINGS)
@given(s=schedules, step=st.integers(0, 8000))
def test_should_prune_exactly_on_frequency(s, step):
    in_range = s.begin_step <= step and (s.end_step < 0 or step <= s.end_step)
    expected = in_range and (step - s.begin_step) % s.frequency == 0
    assert s(step)[0] == expected
    if isinstance(s, OneShot):
        assert s(step)[0] == (step == s.begin_step)


@settings(max_examples=200, **_SETTINGS)
@given(s=schedules)
def test_schedule_config_roundtrip(s):
    again = from_config(s.to_config())
    assert again == s and type(again) is type(s)
    flat = {"kind": s.kind, **s.get_config()}
    assert from_config(flat) == s


@settings(max_examples=100, **_SETTINGS)
@given(a=sparsity, b=sparsity, begin_epoch=st.integers(0, 5), span=st.integers(1, 10),
       spe=st.integers(1, 50), kind=st.sampled_from(["polynomial_decay", "agp", "linear"]))
def test_from_config_epochs_monotone(a, b, begin_epoch, span, spe, kind):
    a, b = sorted([a, b])
    s = from_config({"kind": kind, "initial_sparsity": a, "final_sparsity": b, "begin_epoch": begin_epoch,
                     "end_epoch": begin_epoch + span, "frequency_epochs": 0.5}, steps_per_epoch=spe)
    assert s.begin_step == begin_epoch * spe and s.end_step == (begin_epoch + span) * spe
    vals = [s.sparsity(t) for t in range(0, s.end_step + 2)]
    assert all(y >= x - 1e-12 for x, y in zip(vals, vals[1:], strict=False))
    assert vals[0] == pytest.approx(a) and vals[-1] == pytest.approx(b)


# --- mask counts ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> DependencyGraph:
    return DependencyGraph(_model(), SHAPE)


def _model():
    torch.manual_seed(0)
    return create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True).eval()


def _valid_count(kept: int, size: int, round_to: int, min_channels: int) -> bool:
    return kept == size or kept % round_to == 0 or kept == min(min_channels, size)


def _target_local(size: int, s: float, round_to: int, min_channels: int) -> float:
    """Local scope, independent of the implementation: the group's fraction, clamped to [min_channels, size]."""
    return min(size, max(min(min_channels, size), size * (1 - min(s, 0.999))))


@st.composite
def policies(draw):
    round_to = draw(st.sampled_from([1, 1, 2, 4, 8]))
    if draw(st.booleans()):
        min_channels = round_to * draw(st.integers(1, 3))  # compatible with round_to
    else:
        min_channels = draw(st.integers(1, 12))
    return {"round_to": round_to, "min_channels": min_channels,
            "scope": draw(st.sampled_from(["local", "global"])),
            "criterion": draw(st.sampled_from(["l1", "l2", "bn_gamma", "random"])),
            "layers": draw(st.sampled_from(["all", "pointwise"]))}


sparsity_steps = st.lists(st.floats(0.0, 0.95, allow_nan=False), min_size=1, max_size=8).map(sorted)


@settings(max_examples=80, **_SETTINGS)
@given(policy=policies(), steps=sparsity_steps, target=st.sampled_from(["channels", "channels", "macs", "params"]))
def test_mask_counts_respect_policy_and_are_monotone(graph, policy, steps, target):
    model = _model()
    cfg = PruningConfig(schedule=ConstantSparsity(0.5), target=target, seed=1, **policy)
    pruner = prune_(model, cfg, SHAPE, graph=graph)
    groups = pruner.groups
    prev = {g.id: np.ones(g.size, dtype=bool) for g in groups}
    rt, mc = policy["round_to"], policy["min_channels"]
    for s in steps:
        pruner._prune_to(s)
        alive = pruner.alive()
        for g in groups:
            a, kept = alive[g.id], int(alive[g.id].sum())
            assert kept >= min(mc, g.size), (g.name, kept)
            assert _valid_count(kept, g.size, rt, mc), (g.name, g.size, kept, policy)
            if mc <= rt or mc % rt == 0:  # no conflict between the two rules: strictly a multiple of round_to
                assert kept == g.size or kept % rt == 0, (g.name, g.size, kept, policy)
            assert not (a & ~prev[g.id]).any(), f"{g.name}: a pruned channel came back"
            if policy["scope"] == "global":  # the per-layer floor: no group ranked away entirely
                low = max(math.ceil(g.size * (1 - cfg.max_sparsity)),
                          math.ceil(cfg.global_floor * g.size * (1 - min(s, cfg.max_sparsity)) - 1e-9))
                assert kept >= min(g.size, low) - (rt - 1) or target != "channels", (g.name, kept, low)
            if target == "channels" and policy["scope"] == "local":
                want = _target_local(g.size, s, rt, mc)
                assert abs(kept - want) <= rt + 0.5 or kept == g.size, (g.name, g.size, s, kept, want)
        if target == "channels" and policy["scope"] == "global" and rt == 1:
            total = sum(g.size for g in groups)
            cap = cfg.max_sparsity  # no group loses more than this fraction (global scope's per-layer cap)
            floors = sum(max(min(mc, g.size), math.ceil(g.size * (1 - cap)),  # and at least global_floor of the
                             math.ceil(cfg.global_floor * g.size * (1 - min(s, cap)) - 1e-9))  # local keep count
                         for g in groups)
            kept_total = sum(int(a.sum()) for a in alive.values())
            goal = int(round(total * (1 - s)))
            assert kept_total == max(goal, floors) or (s == 0 and kept_total == total), (kept_total, goal, floors)
        prev = alive
    strip(pruner.model)


@settings(max_examples=40, **_SETTINGS)
@given(policy=policies(), final=st.floats(0.1, 0.9), end=st.integers(1, 40), freq=st.integers(1, 10),
       kind=st.sampled_from(["polynomial_decay", "agp", "linear"]))
def test_schedule_driven_pruning_is_monotone(graph, policy, final, end, freq, kind):
    model = _model()
    cfg = PruningConfig(schedule=ScheduleSpec(kind=kind, initial_sparsity=0.0, final_sparsity=final, begin_step=0,
                                              end_step=end, frequency=freq), seed=2, **policy)
    pruner = prune_(model, cfg, SHAPE, graph=graph)
    prev_alive = pruner.alive()
    prev_sparsity = 0.0
    for step in range(end + 3):
        pruner.step(step)
        alive = pruner.alive()
        for gid, a in alive.items():
            assert not (a & ~prev_alive[gid]).any()
        assert pruner.sparsity() >= prev_sparsity - 1e-12
        prev_alive, prev_sparsity = alive, pruner.sparsity()
    if policy["scope"] == "local" and policy["round_to"] == 1 and policy["min_channels"] == 1:
        # every group is at its rounded final target
        for g in pruner.groups:
            want = max(1, g.size * (1 - final))
            assert abs(int(alive[g.id].sum()) - want) <= 1, (g.name, g.size, final)
    strip(pruner.model)


def test_min_channels_conflicting_with_round_to_wins(graph):
    """Documented behaviour when the two rules disagree (min_channels=5, round_to=4): the floor wins."""
    cfg = PruningConfig(schedule=ConstantSparsity(0.5), layers="all", round_to=4,
                        min_channels=5)
    pruner = prune_(_model(), cfg, SHAPE, graph=graph)
    pruner._prune_to(0.95)
    counts = [int(a.sum()) for a in pruner.alive().values()]
    assert min(counts) == 5 and all(c % 4 == 0 or c == 5 for c in counts)
    assert math.isclose(pruner.sparsity(), 1 - sum(counts) / sum(g.size for g in pruner.groups))
    strip(pruner.model)
