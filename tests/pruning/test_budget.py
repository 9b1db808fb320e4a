"""Budget-driven pruning: budgets, cost models, sensitivity, the allocation search, the latency table cache,
and `plan/prune --budget` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from prunekit.errors import PrunekitError
from prunekit.models import create_model
from prunekit.pruning import OneShot, PolynomialDecay, PruningConfig, prune_, strip
from prunekit.pruning.budget import Budget, ChannelFractions, ProfileCost
from prunekit.pruning.search import Limits, floor_of, greedy, greedy_within, search, uniform
from prunekit.pruning.sensitivity import (
    AdaptiveBNEvaluator,
    FinetuneEvaluator,
    Sensitivity,
    measure_sensitivity,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 28, 28)


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch):
    """Latency checks pause 2 s between passes (a machine's slow phases last seconds): not in these tests."""
    from prunekit.inference import latency as L

    monkeypatch.setattr(L, "_sleep", lambda s: None)


def mobilenet(seed=0):
    torch.manual_seed(seed)
    return create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True).eval()


@pytest.mark.parametrize("text,want", [
    ("macs=0.25x", Budget("macs", 0.25, True)), ("params=1.2M", Budget("params", 1.2e6, False)),
    ("macs=350k", Budget("macs", 350e3, False)), ("latency_ms=0.5x", Budget("latency_ms", 0.5, True)),
    ("latency_ms=0.8", Budget("latency_ms", 0.8, False)), (" macs = 2G ", Budget("macs", 2e9, False)),
])
def test_budget_forms(text, want):
    assert Budget.parse(text) == want
    assert Budget.parse(str(want)) == want  # round-trips through its text


@pytest.mark.parametrize("text,msg", [
    ("flops=0.5x", "unknown kind 'flops'"), ("macs=1.5x", "< 1x"), ("macs=0", "must be > 0"),
    ("latency_ms=2M", "milliseconds or a ratio"), ("0.25x", "expected KIND=VALUE"), ("macs=abc", "KIND=VALUE"),
])
def test_bad_budgets_are_named(text, msg):
    with pytest.raises(PrunekitError, match=msg):
        Budget.parse(text)


def test_budget_in_the_config_replaces_the_target():
    from prunekit.config import parse_config

    assert parse_config({"prune": {"budget": "macs=0.3x"}}).prune.budget == "macs=0.3x"
    with pytest.raises(PrunekitError, match="budget replaces prune.target"):
        parse_config({"prune": {"budget": "macs=0.3x", "target": "macs"}})
    with pytest.raises(PrunekitError, match="unknown kind"):
        parse_config({"prune": {"budget": "speed=2"}})
    with pytest.raises(PrunekitError, match="budget_runtime must be one of"):
        parse_config({"prune": {"budget_runtime": "tensorrt"}})


def test_cli_budget_errors_are_one_line(tmp_path):
    rc, _, err = run_cli("prune", "--model", "torchvision:resnet18", "--budget", "flops=0.5x", "--out", tmp_path / "o")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "unknown kind 'flops'" in err
    assert not (tmp_path / "o").exists()


# --- cost models -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,shape,layers", [("mobilenet_v1", SHAPE, "pointwise"),
                                               ("torchvision:resnet18", (3, 64, 64), "all"),
                                               ("torchvision:mobilenet_v2", (3, 64, 64), "all")])
def test_profile_cost_predicts_the_shrunk_model_exactly(arch, shape, layers):
    """MACs and parameters predicted from keep counts equal the profile of the model surgery produces
    (residual groups, depthwise convolutions, flatten -> linear)."""
    from prunekit.cost import profile

    torch.manual_seed(0)
    kw = dict(width=0.25, num_classes=10, in_channels=1, small_input=True) if arch == "mobilenet_v1" else {}
    model = create_model(arch, **kw).eval()
    p = prune_(model, PruningConfig(schedule=OneShot(0.5), layers=layers), shape)
    rng = np.random.default_rng(0)
    for kind in ("macs", "params"):
        cost = ProfileCost(strip(model, copy=True), p.graph, p.groups, shape, kind)
        for _ in range(3):
            keep = [int(rng.integers(1, g.size + 1)) for g in p.groups]
            alive = {g.id: np.arange(g.size) < k for g, k in zip(p.groups, keep, strict=True)}
            p.set_alive(alive)
            small = p.shrink(check=False).model
            prof = profile(small, shape)
            assert cost(np.array(keep)) == pytest.approx(prof.macs if kind == "macs" else prof.params, rel=1e-9)
        assert cost.dense == (profile(strip(model, copy=True), shape).macs if kind == "macs" else
                              sum(q.numel() for q in strip(model, copy=True).parameters()))


# --- the search ------------------------------------------------------------------------------------------------


def _toy(sizes=(16, 32, 32, 64)):
    """A cost model where every group costs its channel count, and sensitivities where group 0 is fragile."""
    class Cost:
        kind = "macs"

        def __call__(self, keep):
            return float(np.sum(keep))

    names = [f"g{i}" for i in range(len(sizes))]
    rows = {n: [{"sparsity": s, "top1": 0.0, "loss": 1.0 + s * (20.0 if i == 0 else 1.0)}
                for s in (0.2, 0.4, 0.6, 0.8)] for i, n in enumerate(names)}
    sens = Sensitivity([0.2, 0.4, 0.6, 0.8], {"top1": 90.0, "loss": 1.0}, rows)
    return names, list(sizes), Cost(), sens


@pytest.mark.parametrize("round_to,min_channels,max_sparsity", [(1, 1, 0.95), (8, 1, 0.9), (4, 6, 0.5)])
def test_allocations_meet_the_budget_and_respect_the_limits(round_to, min_channels, max_sparsity):
    names, sizes, cost, sens = _toy()
    limits = Limits(round_to, min_channels, max_sparsity)
    target = 0.6 * sum(sizes)
    evaluate = lambda keep: {"top1": float(-np.std(np.array(keep) / np.array(sizes))), "loss": 0.0}  # noqa: E731
    seen = []
    best, records = search(lambda keep: seen.append(tuple(keep)) or evaluate(keep), sens, names, sizes, cost,
                           target, limits, candidates=20, seed=1)
    allocs = [uniform(names, sizes, cost, target, limits), greedy(sens, names, sizes, cost, target, limits), best]
    assert 5 <= len(records) <= 22 and len(set(seen)) == len(seen)  # different allocations (few exist here)
    assert [tuple(r["kept"]) for r in records] == seen  # each record says which allocation it scored
    for a in allocs:
        assert a.cost <= target and a.cost == cost(np.array(a.keep))
        for k, n in zip(a.keep, sizes, strict=True):
            assert k in (n, min_channels, min(min_channels, n)) or k % round_to == 0, (k, n, a.method)
            assert k >= min(min_channels, n)
            assert 1 - k / n <= max_sparsity + 1e-9
    # the fragile group keeps the most under the greedy allocation; uniform prunes everyone alike
    g, u = allocs[1], allocs[0]
    assert g.keep[0] / sizes[0] >= max(k / n for k, n in zip(g.keep[1:], sizes[1:], strict=True))
    fu = [k / n for k, n in zip(u.keep, sizes, strict=True)]
    assert g.keep[0] > u.keep[0] and max(fu) - min(fu) <= round_to / min(sizes) + 1e-9  # only rounding differs
    assert best.score["top1"] == max(r["top1"] for r in records)


def test_a_budget_near_the_cheapest_model_still_gets_every_candidate():
    """A budget just above the floor (every group at max_sparsity): random directions meet it only with their
    largest groups held at max_sparsity and the rest pushed further; the search still scores ``candidates``
    different allocations, all within the limits and the budget, not the uniform and greedy ones alone."""
    names, sizes, cost, sens = _toy((64, 128, 128, 256))
    limits = Limits(1, 1, 0.9)
    floor = cost(np.array([limits.keep(n, 0.9) for n in sizes]))
    target = floor * 1.3
    seen = []

    def evaluate(keep):
        seen.append(tuple(keep))
        return {"top1": float(np.random.default_rng(sum(keep)).random()), "loss": 0.0}

    best, records = search(evaluate, sens, names, sizes, cost, target, limits, candidates=30, seed=0)
    assert len(records) == 32 and all(r["cost"] <= target for r in records)
    assert sum(r["method"] == "random" for r in records) == 30 and len(set(seen)) == 32
    for keep in seen:  # at most max_sparsity (as the rounding of keep counts allows)
        assert all(k >= limits.keep(n, 0.9) for k, n in zip(keep, sizes, strict=True))


@pytest.mark.parametrize("round_to", [1, 8])
def test_no_searched_allocation_keeps_a_group_below_the_floor_of_uniform(round_to):
    """With ``floor`` f, the greedy allocation and every candidate keep at least f x uniform's channels in every
    group (rounded up to ``round_to``); without it (f = 0) the search near the cheapest model does cut groups
    below that, which is what the floor is for."""
    names, sizes, cost, sens = _toy((64, 128, 128, 256))
    limits = Limits(round_to, 1, 0.95)
    target = 0.3 * sum(sizes)
    base = uniform(names, sizes, cost, target, limits)
    evaluate = lambda keep: {"top1": float(-np.std(np.array(keep) / np.array(sizes))), "loss": 0.0}  # noqa: E731
    below = {}
    for f in (0.0, 0.5, 0.9):
        lowest = floor_of(base, f, limits)
        assert all(lo >= f * k and (lo % round_to == 0 or lo == n) for lo, k, n in zip(lowest, base.keep, sizes,
                                                                                      strict=True))
        best, records = search(evaluate, sens, names, sizes, cost, target, limits, candidates=30, seed=0, floor=f)
        g = greedy(sens, names, sizes, cost, target, limits, lowest)
        kept = [r["kept"] for r in records] + [g.keep, best.keep]
        below[f] = sum(any(k < f * u for k, u in zip(keep, base.keep, strict=True)) for keep in kept)
        below[(f, 0.5)] = sum(any(k < 0.5 * u for k, u in zip(keep, base.keep, strict=True)) for keep in kept)
        assert all(r["cost"] <= target for r in records) and g.cost <= target
        assert best.extra["floor"] == lowest
    assert below[0.5] == below[0.9] == 0
    assert below[(0.0, 0.5)] > 5  # without a floor many candidates cut a group below half of uniform's
    assert below[(0.9, 0.5)] == 0  # a high floor leaves few allocations (with round_to 8: uniform alone)


def test_a_floor_that_costs_more_than_uniform_falls_back_to_uniform():
    """A measured cost need not fall with every channel removed: where nothing at or above the floor but uniform's
    own allocation meets the budget (here: everything else hits a slow kernel), greedy cannot meet it; the
    search and the greedy-only plan then start from uniform instead of failing."""
    names, sizes, toy, sens = _toy()
    limits = Limits(round_to=4, max_sparsity=0.9)
    base = uniform(names, sizes, toy, 0.6 * sum(sizes), limits)

    class OnlyUniformFits:
        kind = "latency_ms"

        def __call__(self, keep):
            return float(np.sum(keep)) + (0.0 if list(keep) == base.keep else 1000.0)

    cost, target = OnlyUniformFits(), float(sum(base.keep))
    lowest = floor_of(base, 0.5, limits)
    with pytest.raises(PrunekitError):
        greedy(sens, names, sizes, cost, target, limits, lowest)
    a = greedy_within(sens, base, cost, target, limits, 0.5)  # what the search starts from
    assert a.keep == base.keep and a.cost <= target and "uniform" in a.method and a.extra["floor"] == lowest
    b = greedy_within(sens, base, toy, target, limits, 0.5)  # where greedy fits, it is greedy's own
    assert b.method == "greedy" and b.keep == greedy(sens, names, sizes, toy, target, limits, lowest).keep


def _linear_cost(weight):
    """A cost model where each channel of group ``i`` costs ``weight[i]``."""
    class Cost:
        kind = "macs"

        def __call__(self, keep):
            return float(np.dot(keep, weight))

    return Cost()


def test_ranked_cuts_low_scores_and_costly_channels_first():
    """The ranked allocation (no search): channels go lowest normalised score per unit of cost saved first. With
    the same scores everywhere, the group whose channels cost 4x loses the largest share; a group with one strong
    channel and weak others loses more than groups of even scores; the budget, the limits and the floor hold."""
    from prunekit.pruning.search import ScoreLoss, ranked

    sizes, names = [32, 32, 32, 32], ["g0", "g1", "g2", "g3"]
    weight = np.array([1.0, 1.0, 4.0, 1.0])
    cost = _linear_cost(weight)

    even = np.linspace(1.0, 2.0, 32)
    peaked = np.r_[np.full(31, 0.05), 10.0]
    limits, target = Limits(4, 1, 0.9), 0.5 * float(np.dot(sizes, weight))
    a = ranked([even, peaked, even, even], names, sizes, cost, target, limits, floor=0.5)
    u = uniform(names, sizes, cost, target, limits)
    assert a.method == "ranked" and a.cost <= target and a.cost == cost(np.array(a.keep))
    assert a.keep[2] < a.keep[0] == a.keep[3] and a.keep[1] < a.keep[0]  # costly and peaked groups cut deepest
    assert all(k % 4 == 0 and k >= f >= 0.5 * uk for k, f, uk in zip(a.keep, a.extra["floor"], u.keep, strict=True))
    assert a.keep != u.keep
    # ranked by another cost's savings (``by``; a latency budget ranks per MAC): that cost decides which group
    # goes first, the budget's own cost when to stop
    b = ranked([even, even, even, even], names, sizes, cost, target, limits, floor=0.5,
               by=_linear_cost(weight[[2, 1, 0, 3]]))
    assert b.cost <= target and b.keep[0] < min(b.keep[1:])  # without ``by``: group 2 goes first
    # the loss it ranks by: the sum of the lowest normalised scores a group loses (LAMP: every group's best is 1)
    s = ScoreLoss(["x"], [np.array([3.0, 1.0, 2.0])])
    assert s.loss_increase("x", 0.0) == 0.0 and s.loss_increase("x", 1.0) == pytest.approx(1 / 14 + 4 / 13 + 1)
    assert s.loss_increase("x", 1 / 3) == pytest.approx(1 / 14)
    with pytest.raises(PrunekitError, match="unknown score normalisation"):
        ScoreLoss(["x"], [np.ones(2)], "max")


def test_uniform_fill_spends_the_budget_uniform_leaves_lowest_fraction_first():
    """uniform_fill: uniform's channels, then round_to steps back to the group with the lowest kept fraction while
    the budget allows (a group whose step does not fit is skipped); no step left fits."""
    from prunekit.pruning.search import filled

    sizes, names = [32, 64, 64, 128], ["g0", "g1", "g2", "g3"]
    weight = np.array([4.0, 1.0, 1.0, 3.0])
    cost = _linear_cost(weight)

    limits = Limits(8, 1, 0.95)
    for frac in (0.23, 0.3, 0.41, 0.5, 0.77):
        target = frac * float(np.dot(sizes, weight))
        u = uniform(names, sizes, cost, target, limits)
        f = filled(names, sizes, cost, target, limits)
        keep = np.array(f.keep)
        assert f.method == "uniform_fill" and f.extra["uniform_cost"] == u.cost
        assert u.cost <= f.cost == cost(keep) <= target
        assert all(k % 8 == 0 or k == n for k, n in zip(f.keep, sizes, strict=True))
        assert all(k >= uk for k, uk in zip(f.keep, u.keep, strict=True))
        for i in range(len(sizes)):  # full: no further step fits
            if keep[i] < sizes[i]:
                assert cost(np.where(np.arange(len(sizes)) == i, np.minimum(keep + 8, sizes), keep)) > target
    # at 23 % (147.2 of 640): uniform keeps 8/16/16/24 (fractions .25/.25/.25/.19) = 136; g3 has the lowest
    # fraction but its step costs 24 and g0's 32, so both are skipped; g1's 8 fits (144), then nothing does
    target = 0.23 * float(np.dot(sizes, weight))
    assert uniform(names, sizes, cost, target, limits).keep == [8, 16, 16, 24]
    assert filled(names, sizes, cost, target, limits).keep == [8, 24, 16, 24]
    # at 17.5 % (112): uniform 8/8/8/16 = 96; the two groups at the lowest fraction each get a step (not one of
    # them two: the second step goes to the group that is now lowest)
    target = 0.175 * float(np.dot(sizes, weight))
    assert uniform(names, sizes, cost, target, limits).keep == [8, 8, 8, 16]
    assert filled(names, sizes, cost, target, limits).keep == [8, 16, 16, 16]


def test_extra_candidates_are_scored_without_changing_the_random_draws():
    """``extra`` allocations (the plan passes the ranked one) join the candidates after the random draws, which are
    the same as without them; one that beats the rest is the pick."""
    names, sizes, cost, sens = _toy((32, 32, 64, 64))
    limits, target = Limits(4, 1, 0.9), 0.5 * 192
    evaluate = lambda keep: {"top1": 100.0 if list(keep) == [32, 4, 4, 56] else 1.0, "loss": 0.0}  # noqa: E731
    _, plain = search(evaluate, sens, names, sizes, cost, target, limits, candidates=12, seed=3)
    special = uniform(names, sizes, cost, target, limits)
    special = type(special)(names, sizes, [32, 4, 4, 56], 96.0, "ranked")
    best, records = search(evaluate, sens, names, sizes, cost, target, limits, candidates=12, seed=3, extra=[special])
    assert [r["kept"] for r in records[:-1]] == [r["kept"] for r in plain]
    assert records[-1]["method"] == "ranked" and best.keep == [32, 4, 4, 56] and "ranked" in best.method


def test_finalists_are_re_scored_and_the_best_after_refinement_is_kept():
    """With ``refine``: uniform, greedy and the ``refine_top`` best by the first score (and only those) are scored
    again; the pick is the best by the second score (here one that is neither the first score's pick nor the first
    or last finalist scored)."""
    names, sizes, cost, sens = _toy((32, 32, 64, 64))
    limits, target = Limits(4, 1, 0.9), 0.5 * 192
    first = lambda keep: {"top1": float(keep[2]), "loss": -float(keep[3])}  # noqa: E731
    refined = []
    run = lambda second: search(first, sens, names, sizes, cost, target, limits, candidates=30, seed=0,  # noqa: E731
                                refine=second, refine_top=3)
    _, records = run(lambda keep: refined.append(tuple(keep)) or {"top1": 0.0, "loss": 0.0})
    top3 = sorted(records, key=lambda r: (-r["top1"], r["loss"]))[:3]
    want = {tuple(records[0]["kept"]), tuple(records[1]["kept"])} | {tuple(r["kept"]) for r in top3}
    assert set(refined) == want and len(refined) == len(want)  # each finalist once, nobody else
    assert {tuple(r["kept"]) for r in records if "refined_top1" in r} == want
    scored = list(dict.fromkeys(refined))  # in the order refine saw them
    last = [list(k) for k in scored[1:-1] if list(k) != top3[0]["kept"]][-1]  # neither the first score's pick
    last = next(r for r in records if r["kept"] == last)                    # nor the first or last scored
    best, _ = run(lambda keep: {"top1": 1.0 if list(keep) == last["kept"] else 0.0, "loss": 0.0})
    assert best.keep == last["kept"] and best.score["refined_top1"] == 1.0 and best.score["top1"] == last["top1"]
    assert "fine-tuned" in best.method and best.cost <= target
    plain, _ = search(first, sens, names, sizes, cost, target, limits, candidates=30, seed=0)
    assert plain.keep == top3[0]["kept"] != last["kept"] and "refined_top1" not in plain.score


@pytest.mark.parametrize("gained,lost,kept", [(60, 20, "searched"), (30, 20, "uniform"), (0, 0, "uniform"),
                                               (20, 60, "uniform")])
def test_the_pick_is_confirmed_only_by_a_paired_lead_of_two_standard_errors(gained, lost, kept):
    """Paired on the same images: the difference of accuracies, its standard error the per-image differences'
    (McNemar); +4 pt with 80 discordant images of 1000 is 4.5 SE (kept), +1 pt with 50 is 1.4 SE (not)."""
    from prunekit.pruning.search import confirmed

    rng = np.random.default_rng(0)
    base = np.zeros(1000, dtype=bool)
    base[:500] = True
    pick = base.copy()
    pick[500:500 + gained] = True  # images only the pick gets right
    pick[:lost] = False            # images only uniform gets right
    order = rng.permutation(1000)
    c = confirmed(pick[order], base[order])
    d = pick.astype(float) - base
    assert c["images"] == 1000 and c["kept"] == kept
    assert c["diff"] == pytest.approx(100 * d.mean()) and c["se"] == pytest.approx(100 * d.std() / np.sqrt(1000))
    assert c["searched_top1"] == pytest.approx(100 * pick.mean()) and c["uniform_top1"] == 50.0
    with pytest.raises(PrunekitError):
        confirmed(pick, base[:10])


def test_the_search_keeps_uniform_when_its_pick_is_not_confirmed_on_fresh_images():
    """``confirm`` scores the search's pick and uniform's allocation (only those) on fresh images; a pick that does
    not beat uniform there by 2 SE is replaced by uniform's allocation, and the plan records why."""
    names, sizes, cost, sens = _toy((32, 32, 64, 64))
    limits, target = Limits(4, 1, 0.9), 0.5 * 192
    first = lambda keep: {"top1": float(keep[2]), "loss": 0.0}  # noqa: E731  the best on the first slice
    plain, records = search(first, sens, names, sizes, cost, target, limits, candidates=30, seed=0)
    base = records[0]["kept"]
    assert records[0]["method"] == "uniform" and plain.keep != base

    def fresh(lead):  # 1000 images: uniform gets 500 right, the pick ``lead`` more
        def score(keep):
            seen.append(list(keep))
            out = np.zeros(1000, dtype=bool)
            out[:500 + (lead if list(keep) != base else 0)] = True
            return out
        return score

    seen = []
    good, _ = search(first, sens, names, sizes, cost, target, limits, candidates=30, seed=0, confirm=fresh(100))
    assert good.keep == plain.keep and good.method == plain.method and good.extra["confirm"]["kept"] == "searched"
    assert sorted(seen) == sorted([plain.keep, base])  # the pick and uniform, nobody else
    seen.clear()
    bad, _ = search(first, sens, names, sizes, cost, target, limits, candidates=30, seed=0, confirm=fresh(3))
    assert bad.keep == base and bad.cost == records[0]["cost"] and "not confirmed" in bad.method
    assert bad.extra["confirm"]["kept"] == "uniform" and bad.extra["rejected"] == plain.keep
    assert bad.score["top1"] == records[0]["top1"] and len(seen) == 2


def test_finetune_scorer_trains_the_masked_model_then_restores_it():
    """The short fine-tuning changes the score (it trains the masked model on the given batches) and is repeatable
    (the same batches in the same order); the weights, BatchNorm statistics and masks are as they were after."""
    from prunekit.data import iterate_batches, synthetic

    data = synthetic(train_size=256, test_size=8)
    batches = list(iterate_batches(data, "train", 32, train=False))
    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5), layers=r"blocks\.(0|5)\.pw"), SHAPE)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    alive = {k: v.copy() for k, v in p.alive().items()}
    ev = AdaptiveBNEvaluator(p, batches[:2], batches[2:4])
    train = lambda: iter(batches[4:])  # noqa: E731
    opt = lambda model: torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # noqa: E731
    keep = [4, 32]
    plain = ev(keep)
    tuned = FinetuneEvaluator(ev, train, opt, steps=3)
    rng = torch.get_rng_state()
    a = tuned(keep)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state as it was
    torch.rand(7)  # the same dropout masks whatever the global random state
    assert tuned(keep) == a != plain
    assert FinetuneEvaluator(ev, train, opt, steps=0)(keep) == plain
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(np.array_equal(alive[k], v) for k, v in p.alive().items())
    assert all(q.grad is None for q in m.parameters())


def test_finetune_scorer_never_trains_on_the_held_out_images():
    """The search's fine-tuning batches come from the training split minus the held-out slice that scores it and
    the fresh slice that confirms its pick."""
    from prunekit.config import parse_config
    from prunekit.data import synthetic
    from prunekit.steps import _finetune_scorer, _held_out

    data = synthetic(train_size=250, test_size=8)
    n = len(data.train)
    data.train.images[:] = torch.arange(n, dtype=torch.uint8).view(-1, 1, 1, 1)  # each image is its own index
    cfg = parse_config({"prune": {"calib_images": 64, "sensitivity_images": 100, "search_finetune_steps": 7,
                                  "search_confirm_images": 50}, "train": {"batch_size": 32}})
    _, held, fresh = _held_out(n, 64, 100, cfg.seed, 50)

    class Scorer:  # records what it was trained on instead of training
        pass

    ft = _finetune_scorer(cfg, data, Scorer(), torch.device("cpu"))
    mean, std = data.mean[0], data.std[0]
    seen = set()
    for _, (x, _y) in zip(range(30), ft.batches(), strict=False):  # several epochs; centre pixels (crop padding)
        seen |= {round((float(v) * std + mean) * 255) for v in x[:, 0, 14, 14]}
    assert len(fresh) == 50 and not set(held.tolist()) & set(fresh.tolist())
    assert ft.steps == 7 and len(seen) == n - 150 and not seen & (set(held.tolist()) | set(fresh.tolist()))


def test_the_confirmation_slice_is_fresh_and_made_on_each_call():
    """The third slice holds images neither calibration nor the held-out scoring use, and is not kept in memory:
    a function makes its batches on each call (the same ones every time)."""
    from prunekit.data import synthetic
    from prunekit.steps import _train_slices

    data = synthetic(train_size=250, test_size=8)
    data.train.images[:] = torch.arange(250, dtype=torch.uint8).view(-1, 1, 1, 1)  # each image is its own index
    ids = lambda batches: {round(float(v) * data.std[0] * 255 + data.mean[0] * 255)  # noqa: E731
                           for x, _ in batches for v in x[:, 0, 14, 14]}
    calib, held, fresh = _train_slices(data, 64, 100, 32, 0, torch.device("cpu"), 50)
    assert isinstance(held, list) and callable(fresh)
    once, again = list(fresh()), list(fresh())
    assert sum(len(y) for _, y in once) == 50 and all(torch.equal(a[0], b[0]) for a, b in zip(once, again, strict=True))
    assert not ids(once) & (ids(calib) | ids(held)) and len(ids(calib) | ids(held)) == 164
    assert _train_slices(data, 64, 100, 32, 0, torch.device("cpu"), 0)[2] is None
    # what is left after the other two slices, or nothing (then the plan keeps its pick unconfirmed and says so)
    from prunekit.steps import _held_out

    assert [len(i) for i in _held_out(250, 64, 100, 0, 2000)] == [64, 100, 86]
    assert [len(i) for i in _held_out(250, 64, 200, 0, 2000)] == [83, 167, 0]
    assert _train_slices(data, 64, 200, 32, 0, torch.device("cpu"), 2000)[2] is None


def test_an_impossible_budget_is_refused():
    names, sizes, cost, sens = _toy()
    floor = cost(np.array([Limits(max_sparsity=0.5).keep(n, 0.5) for n in sizes]))
    for solve in (greedy, uniform):
        args = (sens, names, sizes) if solve is greedy else (names, sizes)
        with pytest.raises(PrunekitError, match="cannot be met") as e:
            solve(*args, cost, 0.01 * sum(sizes), Limits(max_sparsity=0.5))
        assert f"costs {floor:.4g}" in str(e.value) and "\n" not in str(e.value)  # the floor, in one line


def test_each_group_ramps_to_its_own_allocated_sparsity():
    m = mobilenet()
    alloc = {"blocks.0.pw.conv": 0.25, "blocks.5.pw.conv": 0.75, "blocks.12.pw.conv": 0.5}
    cfg = PruningConfig(schedule=PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=2), allocation=alloc)
    p = prune_(m, cfg, SHAPE)
    halfway = None
    for step in range(11):
        p.step(step)
        if step == 4:
            halfway = {g.name: 1 - a.mean() for g, a in zip(p.groups, p.alive().values(), strict=True)}
    final = {g.name: 1 - a.mean() for g, a in zip(p.groups, p.alive().values(), strict=True)}
    for name, s in alloc.items():
        assert final[name] == pytest.approx(s, abs=1 / 16)
        assert 0 < halfway[name] < final[name]
    assert final["blocks.3.pw.conv"] == 0.0  # not in the allocation: left dense


# --- sensitivity -----------------------------------------------------------------------------------------------


def test_sensitivity_measures_each_group_and_leaves_the_model_as_it_was():
    from prunekit.data import iterate_batches, synthetic

    data = synthetic(train_size=128, test_size=8)
    batches = list(iterate_batches(data, "train", 32, train=False))
    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5), layers=r"blocks\.(0|5)\.pw"), SHAPE)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ev = AdaptiveBNEvaluator(p, batches[:2], batches[2:])
    sens = measure_sensitivity(ev, (0.25, 0.5, 0.75))
    assert set(sens.groups) == {"blocks.0.pw.conv", "blocks.5.pw.conv"}
    assert [r["kept"] for r in sens.groups["blocks.0.pw.conv"]] == [12, 8, 4]
    assert sens.meta["evaluations"] == 1 + 2 * 3 and sens.meta["eval_images"] == 64
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics and masks restored
    assert sens.loss_increase("blocks.0.pw.conv", 0.0) == 0.0
    xs = [sens.loss_increase("blocks.5.pw.conv", s) for s in np.linspace(0, 0.95, 20)]
    assert all(b >= a for a, b in zip(xs, xs[1:], strict=False))  # monotone
    assert Sensitivity.from_dict(json.loads(json.dumps(sens.to_dict()))).to_dict() == sens.to_dict()


# --- the latency table -------------------------------------------------------------------------------------------


class FakeTimer:
    """A deterministic 'runtime': milliseconds proportional to the layer's MACs."""

    runtime, batch, threads, rounds = "onnxruntime-fp32", 1, 1, 1

    def __init__(self):
        self.calls = 0

    def version(self):
        return "fake"

    def careful(self):
        return self

    def interleaved_ms(self, modules, example):
        return [self.model_ms(m, example) for m in modules]

    def model_ms(self, module, example):
        self.calls += 1
        from prunekit.cost import profile

        return 1e-6 * profile(module, tuple(example.shape[1:])).macs + 0.01


class FusingTimer(FakeTimer):
    """Whole models run at half their layers' summed cost (fusion, no per-call overhead between layers)."""

    def model_ms(self, module, example):
        ms = super().model_ms(module, example)
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
        return ms if convs <= 1 else 0.5 * (ms - 0.01) + 0.2


class ScriptedTimer:
    """Whole-model timings that return the scripted (model, dense) milliseconds in turn (a bare number: dense
    1 ms)."""

    batch = 1

    def __init__(self, passes):
        self.passes, self.calls = [p if isinstance(p, tuple) else (p, 1.0) for p in passes], 0

    def interleaved_ms(self, modules, example):
        self.calls += 1
        return list(self.passes.pop(0))


SLOW = [(0.70, 1.33), (0.71, 1.34), (0.70, 1.33)]  # a slow phase: the dense model a third slower than at planning


@pytest.mark.parametrize("passes, near, dense_ref, n, ratio", [
    ([0.58, 0.45, 0.50], 0.5, None, 3, 0.45),  # close to the budget: three passes, the fastest decides
    ([0.45, 0.58, 0.61], 0.5, None, 3, 0.45),  # whichever pass it was
    ([0.90, 0.45, 0.50], 0.5, None, 3, 0.45),  # a miss, however clear, is confirmed: here a slow phase
    ([0.90, 0.85, 0.95], 0.5, None, 3, 0.85),  # a real one stays a miss
    ([0.20, 0.45, 0.50], 0.5, None, 1, 0.20),  # a clear fit needs no more
    ([0.52, 0.45, 0.50], None, None, 1, 0.52),  # no decision to take: one pass
    # each model's fastest pass: the dense model's quiet pass need not be the pruned one's
    ([(0.60, 1.0), (0.50, 1.2), (0.55, 0.9)], 0.5, None, 3, 0.50 / 0.9),
    # the dense model slower than when the budget was set: passes go on until the phase ends ...
    (SLOW + [(0.46, 1.02)] + SLOW, 0.5, 1.0, 4, 0.46 / 1.02),
    # ... or up to max_passes (8)
    (SLOW * 3, 0.5, 1.0, 8, 0.70 / 1.33),
    # no slower than at planning (within 10 %): three passes suffice
    ([(0.50, 1.05)] * 4, 0.5, 1.0, 3, 0.50 / 1.05),
])
def test_a_ratio_close_to_or_over_the_budget_is_confirmed_by_passes_spread_over_seconds(passes, near, dense_ref, n,
                                                                                         ratio, monkeypatch):
    from prunekit.inference import latency as L

    slept = []
    monkeypatch.setattr(L, "_sleep", slept.append)
    timer = ScriptedTimer(passes)
    m = mobilenet()
    r = L.measure_ratio(m, m, SHAPE, timer, near=near, pause=1.5, dense_ref=dense_ref)
    assert timer.calls == n and len(r["ratios"]) == n and slept == [1.5] * (n - 1)
    assert r["ratio"] == pytest.approx(ratio) and r["ratio"] == pytest.approx(r["model_ms"] / r["dense_ms"])


def test_measure_models_takes_each_models_fastest_of_passes_spread_over_seconds(monkeypatch):
    from prunekit.inference import latency as L

    slept = []
    monkeypatch.setattr(L, "_sleep", slept.append)
    m = mobilenet()
    # the second pass lands in a slow phase for the small model, the first for the dense one
    timer = ScriptedTimer([(0.10, 0.44), (0.16, 0.30), (0.11, 0.31)])
    assert L.measure_models([m, m], SHAPE, timer, passes=3, pause=1.5) == [0.10, 0.30]
    assert timer.calls == 3 and slept == [1.5, 1.5]
    one = ScriptedTimer([(0.16, 0.30), (0.10, 0.44)])
    assert L.measure_models([m, m], SHAPE, one) == [0.16, 0.30] and one.calls == 1  # one pass by default


def test_latency_model_anchors_are_each_models_fastest_pass(tmp_path):
    from prunekit import shrink
    from prunekit.inference import latency as L

    class PhasedTimer(FakeTimer):
        """Every model's first pass hits a slow phase that adds 0.1 ms a call (small models suffer most)."""

        def __init__(self):
            super().__init__()
            self.seen: list[list[float]] = []  # each pass's milliseconds

        def interleaved_ms(self, modules, example):
            out = [ms + (0.1 if not self.seen else 0.0) for ms in super().interleaved_ms(modules, example)]
            self.seen.append(out)
            return out

    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5)), SHAPE)
    dense_model = strip(m, copy=True)

    def build(keep):
        removed = {g.name: list(range(int(k), g.size)) for g, k in zip(p.groups, keep, strict=True) if k < g.size}
        return shrink(dense_model, SHAPE, removed, graph=p.graph, check=False).model

    timer = PhasedTimer()
    cost = L.LatencyCost(dense_model, SHAPE, ChannelFractions(p.graph, p.groups),
                         L.LatencyTable(timer, cache=tmp_path), grid=4, round_to=4, build=build)
    assert len(timer.seen) == L.CALIBRATION_PASSES
    # every anchor at its quiet passes' time, not the slow first pass's
    assert [c["measured_ms"] for c in cost.calibration] == pytest.approx(timer.seen[1])
    assert timer.seen[0] == pytest.approx([ms + 0.1 for ms in timer.seen[1]])


def test_latency_model_is_calibrated_on_measured_whole_models(tmp_path):
    from prunekit import shrink
    from prunekit.inference import latency as L

    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5)), SHAPE)
    timer = FusingTimer()
    dense_model = strip(m, copy=True)
    sizes = np.array([g.size for g in p.groups])

    def build(keep):
        removed = {g.name: list(range(int(k), g.size)) for g, k in zip(p.groups, keep, strict=True) if k < g.size}
        return shrink(dense_model, SHAPE, removed, graph=p.graph, check=False).model

    def measure(keep):
        return L.measure_model(build(keep), SHAPE, timer)

    fr = ChannelFractions(p.graph, p.groups)
    cost = L.LatencyCost(dense_model, SHAPE, fr, L.LatencyTable(timer, cache=tmp_path), grid=4, round_to=4,
                         build=build)
    naive = L.LatencyCost(dense_model, SHAPE, fr, L.LatencyTable(timer, cache=tmp_path), grid=4, round_to=4)
    assert cost.slope == pytest.approx(0.5, rel=0.05) and naive.slope == 1.0
    assert [c["model"] for c in cost.calibration] == ["dense", "uniform 0.25", "uniform 0.5", "uniform 0.75"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = np.maximum(4, (sizes * rng.uniform(0.2, 1.0, len(sizes)) / 4).round() * 4).clip(max=sizes)
        truth = measure(keep)
        assert cost(keep) == pytest.approx(truth, rel=0.05)
        assert abs(naive(keep) - truth) > 0.2 * truth  # without calibration the fused model is mispredicted


def test_fit_falls_back_to_slope_one_when_points_do_not_determine_it():
    from prunekit.inference.latency import _fit

    assert _fit([2.0], [3.0]) == (1.0, 1.0)
    assert _fit([2.0, 2.0], [3.0, 5.0]) == (1.0, 1.0)
    assert _fit([1.0, 2.0], [100.0, 1.0]) == (1.0, 99.0)  # slope < 0: fall back
    assert _fit([1.0, 2.0, 3.0], [3.0, 5.0, 7.0]) == pytest.approx((2.0, 1.0))


def test_latency_table_is_cached_and_keyed_by_machine_runtime_and_batch(tmp_path, monkeypatch):
    from prunekit.inference import latency as L

    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5)), SHAPE)
    timer = FakeTimer()
    table = L.LatencyTable(timer, cache=tmp_path)
    cost = L.LatencyCost(strip(m, copy=True), SHAPE, ChannelFractions(p.graph, p.groups), table, grid=4)
    assert table.measured > 20 and table.path.is_file()
    dense = np.array([g.size for g in p.groups])
    assert cost(dense) == pytest.approx(cost.dense)  # the intercept makes the dense prediction the measurement
    half = dense // 2
    assert cost(half) < cost(dense)
    again = L.LatencyTable(timer, cache=tmp_path)
    L.LatencyCost(strip(m, copy=True), SHAPE, ChannelFractions(p.graph, p.groups), again, grid=4)
    assert again.measured == 0  # the second search measures nothing
    other = FakeTimer()
    other.batch = 32
    assert L.LatencyTable(other, cache=tmp_path).path != table.path and not L.LatencyTable(other, cache=tmp_path).entries


# --- end to end ------------------------------------------------------------------------------------------------


def test_plan_and_prune_with_a_budget(tiny_model_dir, tmp_path):
    rc, out, err = run_cli("plan", "--model", tiny_model_dir, "--budget", "macs=0.5x", "--search-candidates", "4",
                           "--search-finetune-steps", "3", "--set", "prune.sensitivity_images=128", "--set",
                           "prune.calib_images=64", "--out", tmp_path / "plan")
    assert rc == 0, err
    assert "searched" in out and "uniform" in out and "predicted" in out and "next: prunekit prune" in out
    assert "ranked" in out.splitlines()[[i for i, ln in enumerate(out.splitlines()) if ln.startswith("group")][0]]
    assert {"sensitivity.json", "sensitivity.png", "budget_plan.json", "allocation.png"} <= {
        f.name for f in (tmp_path / "plan").iterdir()}
    plan = json.loads((tmp_path / "plan" / "budget_plan.json").read_text())
    assert plan["predicted"] <= plan["target"] == pytest.approx(0.5 * plan["dense_cost"])
    floor, kept = plan["allocation"]["floor"], [g["kept"] for g in plan["allocation"]["groups"]]
    uniform_kept = [g["kept"] for g in plan["uniform"]["groups"]]
    assert "prune.search_floor" in out and ", ".join(map(str, floor)) in out
    finalists = [r for r in plan["candidates"] if "refined_top1" in r]  # uniform, greedy, the best 4 (at most)
    assert 2 <= len(finalists) <= 6 and {"uniform", "greedy"} <= {r["method"] for r in finalists}
    a = plan["allocation"]
    best = a.get("rejected_score") or a["score"]  # the fine-tuned pick (uniform's allocation if not confirmed)
    assert "fine-tuned" in a["method"] and best["refined_top1"] == max(r["refined_top1"] for r in finalists)
    c = a.get("confirm")  # checked on the bundled set's fresh images, unless the pick is uniform's allocation
    if c is None:
        assert kept == uniform_kept and "fresh held-out images" not in out
    else:
        assert c["images"] > 0 and (c["kept"] == "uniform") == (kept == uniform_kept) == \
            ("not confirmed" in a["method"])
        assert f"search's pick {c['searched_top1']:.2f}% vs uniform {c['uniform_top1']:.2f}%, {c['diff']:+.2f} +- " \
            f"{c['se']:.2f} paired" in out
    assert f"after 3 fine-tuning steps each (prune.search_finetune_steps): searched {a['score']['refined_top1']:.2f}%" \
        in out and f"uniform {plan['uniform']['score']['refined_top1']:.2f}%" in out
    assert all(k >= f >= 0.5 * u for k, f, u in zip(kept, floor, uniform_kept, strict=True))
    # the prune runs below compare the two allocations: without the check on fresh images, which on this briefly
    # trained fixture may or may not keep the search's pick
    assert any(r["method"] == "ranked" for r in plan["candidates"]) or \
        [g["kept"] for g in plan["ranked"]["groups"]] in [r["kept"] for r in plan["candidates"]]  # a candidate too
    rc, out, err = run_cli("prune", "--model", tiny_model_dir, "--budget", "macs=0.5x", "--search-candidates", "4",
                           "--budget-allocation", "searched",
                           "--set", "prune.sensitivity_images=128", "--set", "prune.calib_images=64",
                           "--set", "prune.search_confirm_images=0", "--epochs", "0.25", "--out", tmp_path / "p")
    assert rc == 0, err
    b = json.loads((tmp_path / "p" / "budget.json").read_text())
    assert b["met"] and b["measured"] <= b["target"] and b["measured"] == b["predicted"]
    pruned_plan = json.loads((tmp_path / "p" / "budget_plan.json").read_text())  # by default: adaptive BN alone
    assert not any("refined_top1" in r for r in pruned_plan["candidates"]) and "fine-tuned" not in \
        pruned_plan["allocation"]["method"]
    assert b["used"] == "searched" and b["predicted"] == b["allocation"]["cost"]
    # the plan's other allocation: uniform pruning sized to the same budget, checked the same way
    rc, out, err = run_cli("prune", "--model", tiny_model_dir, "--budget", "macs=0.5x", "--search-candidates", "4",
                           "--budget-allocation", "uniform", "--set", "prune.sensitivity_images=128", "--set",
                           "prune.calib_images=64", "--set", "prune.search_confirm_images=0", "--epochs", "0.25",
                           "--out", tmp_path / "pu")
    assert rc == 0, err
    bu = json.loads((tmp_path / "pu" / "budget.json").read_text())
    assert bu["used"] == "uniform" and bu["met"] and bu["measured"] == bu["predicted"] == bu["uniform"]["cost"]
    assert bu["uniform"]["cost"] != bu["allocation"]["cost"]  # a different model from the searched one
    # by default the ranked allocation (no search): the prune step runs no candidate search for it
    rc, out, err = run_cli("prune", "--model", tiny_model_dir, "--budget", "macs=0.5x", "--search-candidates", "4",
                           "--set", "prune.sensitivity_images=128", "--set", "prune.calib_images=64",
                           "--epochs", "0.25", "--out", tmp_path / "pr")
    assert rc == 0, err
    br = json.loads((tmp_path / "pr" / "budget.json").read_text())
    assert br["used"] == "ranked" and br["met"] and br["measured"] == br["predicted"] == br["ranked"]["cost"]
    assert br["ranked"]["method"].startswith("ranked") and br["ranked"]["score"]["top1"] >= 0
    assert br["candidates"] == [] and br["allocation"]["method"].startswith("greedy")
    rc, out, err = run_cli("surgery", "--model", tmp_path / "pu" / "model", "--out", tmp_path / "su", "--json")
    assert rc == 0 and json.loads(out)["macs_after"] == bu["uniform"]["cost"]
    rc, out, err = run_cli("surgery", "--model", tmp_path / "p" / "model", "--out", tmp_path / "s", "--json")
    assert rc == 0 and json.loads(out)["macs_after"] == b["measured"]


def test_plan_without_candidates_is_the_greedy_allocation_above_the_floor(tiny_model_dir, tmp_path):
    rc, out, err = run_cli("plan", "--model", tiny_model_dir, "--budget", "macs=0.25x", "--search-candidates", "0",
                           "--set", "prune.sensitivity_images=128", "--set", "prune.calib_images=64",
                           "--out", tmp_path / "plan")
    assert rc == 0, err
    plan = json.loads((tmp_path / "plan" / "budget_plan.json").read_text())
    a, u = plan["allocation"], plan["uniform"]
    assert a["method"].startswith("greedy") and plan["candidates"] == [] and a["cost"] <= plan["target"]
    assert all(g["kept"] >= f >= 0.5 * h["kept"] for g, f, h in zip(a["groups"], a["floor"], u["groups"],
                                                                     strict=True))
    assert "prune.search_floor" in out
    # a MAC budget's plan also holds uniform_fill (uniform spending the whole budget), which prune can use
    fill = plan["uniform_fill"]
    assert u["cost"] <= fill["cost"] <= plan["target"] and fill["uniform_cost"] == u["cost"]
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("group"))
    assert lines[head].split() == ["group", "total", "uniform", "uniform_fill", "ranked", "searched"]
    assert [int(ln.split()[3]) for ln in lines[head + 1:head + 1 + len(u["groups"])]] == [
        g["kept"] for g in fill["groups"]]
    assert f"uniform_fill {fill['score']['top1']:.2f}%" in out and "uniform, uniform_fill for the other" in out
    assert all(g["kept"] >= h["kept"] for g, h in zip(fill["groups"], u["groups"], strict=True))
    rc, out, err = run_cli("prune", "--model", tiny_model_dir, "--budget", "macs=0.25x", "--budget-allocation",
                           "uniform_fill", "--set", "prune.sensitivity_images=128", "--set", "prune.calib_images=64",
                           "--epochs", "0.25", "--out", tmp_path / "pf")
    assert rc == 0, err
    b = json.loads((tmp_path / "pf" / "budget.json").read_text())
    assert b["used"] == "uniform_fill" and b["met"] and b["measured"] == b["predicted"] == fill["cost"]


class DriftingTimer:
    """A deterministic runtime whose speed drifts: each later timing of whole models runs 10% slower, as this
    machine does over minutes (the per-layer table is timed in one go). Whole models are 0.6 of their layers'
    sum (fusion)."""

    clock = [1.0]

    def __init__(self, runtime, batch, threads, max_seconds=0.25, repeats=15, rounds=1):
        self.runtime, self.batch, self.threads, self.rounds = runtime, batch, threads, rounds

    def version(self):
        return "drift"

    def careful(self):
        return self

    def _ms(self, module, example):
        from prunekit.cost import profile

        whole = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules()) > 1
        return (0.6 if whole else 1.0) * 1e-5 * profile(module, tuple(example.shape[1:])).macs + 0.01

    def model_ms(self, module, example):
        return self._ms(module, example)

    def interleaved_ms(self, modules, example):
        self.clock[0] *= 1.1
        return [self.clock[0] * self._ms(m, example) for m in modules]


@pytest.mark.parametrize("allocation", ["ranked", "uniform_fill"])
def test_prune_to_a_latency_budget_end_to_end(tiny_model_dir, tmp_path, monkeypatch, allocation):
    """plan -> prune -> check for latency_ms=0.5x: the table is calibrated on whole models (fusion), and the
    check times the pruned and dense models interleaved, so the machine's drift since planning cancels. A latency
    plan makes (builds and times) the uniform_fill allocation only when it is the one used."""
    from prunekit.inference import latency as L

    monkeypatch.setattr(L, "Timer", DriftingTimer)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    rc, out, err = run_cli("prune", "--model", tiny_model_dir, "--budget", "latency_ms=0.5x", "--search-candidates",
                           "4", "--set", "prune.sensitivity_images=128", "--set", "prune.calib_images=64",
                           "--budget-allocation", allocation, "--epochs", "0.25", "--out", tmp_path / "p")
    assert rc == 0, err
    b = json.loads((tmp_path / "p" / "budget.json").read_text())
    assert b["used"] == allocation and b["predicted"] == b[allocation]["cost"]
    timed = {c["allocation"] for c in b["checks"]}
    assert ("uniform_fill" in b) == ("uniform_fill" in timed) == (allocation == "uniform_fill")
    assert b["runtime"] == "onnxruntime-fp32" and b["target"] == pytest.approx(0.5 * b["dense_cost"])
    assert b["met"] and b["measured"] == pytest.approx(b["ratio"] * b["dense_cost"])
    assert b["model_ms"] > b["measured"]  # drifted: the raw time alone would have failed the check
    assert b["predicted"] == pytest.approx(b["measured"], rel=0.05)  # calibrated on whole models


class OptimisticTableTimer(DriftingTimer):
    """The allocation checked first after calibration runs 30% slower than the table predicts, every time it is
    timed (the search found an allocation the table underestimates); the others behave."""

    calls, slow = [0], []

    def interleaved_ms(self, modules, example):
        from prunekit.cost import profile
        from prunekit.inference.latency import CALIBRATION_PASSES

        self.calls[0] += 1
        macs = profile(modules[0], tuple(example.shape[1:])).macs
        if self.calls[0] == CALIBRATION_PASSES + 1:  # the calibration's passes come first
            self.slow.append(macs)
        out = [self._ms(m, example) for m in modules]
        return [out[0] * 1.3, *out[1:]] if macs in self.slow else out


def test_a_latency_plan_measures_its_choice_and_re_aims(tiny_model_dir, tmp_path, monkeypatch):
    from prunekit.inference import latency as L

    monkeypatch.setattr(L, "Timer", OptimisticTableTimer)
    refs, measure_ratio = [], L.measure_ratio

    def spy(*a, **k):  # each check's dense model times 20% faster than the one before: a slow phase ending
        refs.append(k.get("dense_ref"))
        r = measure_ratio(*a, **k)
        return {**r, "dense_ms": r["dense_ms"] * 0.8 ** len(refs)}

    monkeypatch.setattr(L, "measure_ratio", spy)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    rc, out, err = run_cli("plan", "--model", tiny_model_dir, "--budget", "latency_ms=0.5x", "--search-candidates",
                           "4", "--set", "prune.sensitivity_images=128", "--set", "prune.calib_images=64",
                           "--out", tmp_path / "plan")
    assert rc == 0, err
    plan = json.loads((tmp_path / "plan" / "budget_plan.json").read_text())
    target = plan["target"]
    searched = [c for c in plan["checks"] if c["allocation"] == "searched"]
    assert len(searched) >= 2 and searched[0]["measured"] > target >= searched[1]["measured"]
    assert searched[1]["aim"] < searched[0]["aim"]  # re-aimed below the target by the measured excess
    fits = [c for c in searched if c["measured"] <= target]
    best = max(fits, key=lambda c: c["measured"])  # the least-pruned allocation that fits as measured
    assert plan["predicted"] == pytest.approx(best["predicted"])
    from prunekit.steps import FIT_LOW

    assert best["measured"] >= FIT_LOW * target or len(searched) == 4  # moved into [FIT_LOW, 1] x target, or gave up
    uniform_fits = [c for c in plan["checks"] if c["allocation"] == "uniform" and c["measured"] <= target]
    assert uniform_fits
    # every check knows the dense model's fastest latency seen so far while planning (to notice a slow phase of
    # the machine, also one the first measurement fell in); the plan keeps it for the prune step's check
    dense = [c["dense_ms"] for c in plan["checks"]]
    assert len(refs) == len(dense) >= 3 and dense == sorted(dense, reverse=True)
    assert refs == [pytest.approx(min([plan["dense_cost"], *dense[:i]])) for i in range(len(refs))]
    assert plan["dense_fastest"] == pytest.approx(min(plan["dense_cost"], *dense))
    assert plan["dense_fastest"] < refs[1] < refs[0]


def test_the_prune_check_takes_the_plans_fastest_dense_time_as_its_reference(monkeypatch):
    from types import SimpleNamespace

    from prunekit import steps
    from prunekit.config import parse_config
    from prunekit.inference import latency as L

    seen = []
    monkeypatch.setattr(L, "Timer", DriftingTimer)
    monkeypatch.setattr(L, "measure_ratio", lambda *a, **k: seen.append(k["dense_ref"]) or {
        "ratio": 0.5, "model_ms": 1.0, "dense_ms": 2.0, "ratios": [0.5]})
    cfg = parse_config({"prune": {"budget": "latency_ms=0.5x"}})
    m = mobilenet()
    plan = SimpleNamespace(budget="latency_ms=0.5x", dense_cost=4.0, target=2.0, dense_fastest=3.0)
    assert steps.measure_cost(plan, m, SHAPE, cfg, dense=m)["measured"] == pytest.approx(2.0)  # ratio x dense_cost
    plan.dense_fastest = None  # a plan without it: the dense latency it was set with
    steps.measure_cost(plan, m, SHAPE, cfg, dense=m)
    assert seen == [3.0, 4.0]


def test_sensitivity_command_writes_json_and_plot_and_is_cached(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    args = ["sensitivity", "--model", tiny_model_dir, "--layers", r"blocks\.(1|7)\.pw", "--images", "64",
            "--calib-images", "32", "--out", tmp_path / "s"]
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    doc = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert set(doc["groups"]) == {"blocks.1.pw.conv", "blocks.7.pw.conv"} and len(doc["sparsities"]) == 9
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 1000 and "blocks.7.pw.conv" in out
    rc, out, err = run_cli(*args, "--json")
    assert rc == 0 and "cached" in err and json.loads(out)["groups"] == doc["groups"]


def test_greedy_walks_through_a_cost_that_does_not_fall_with_every_step():
    """Measured latency tables are not monotone: a step that saves nothing (here group 0's first step costs
    more) must not end the search while the budget is reachable further down."""
    names, sizes, _, sens = _toy()

    class Bumpy:
        kind = "latency_ms"

        def __call__(self, keep):
            k = np.asarray(keep, dtype=float)
            bump = 40.0 if 0 < sizes[0] - k[0] <= 4 else 0.0  # group 0 one step below dense costs more
            return float(k.sum() + bump)

    limits = Limits(round_to=4, max_sparsity=0.75)
    floor = Bumpy()([limits.keep(n, 0.75) for n in sizes])
    target = floor + 2.0
    a = greedy(sens, names, sizes, Bumpy(), target, limits)
    assert a.cost <= target
    with pytest.raises(PrunekitError, match="cannot be met"):
        greedy(sens, names, sizes, Bumpy(), floor - 1.0, limits)


def test_calibration_curve_passes_through_the_measured_models_and_falls_back_when_not_monotone():
    from prunekit.inference.latency import _curve

    assert _curve([10.0, 2.0, 5.0], [9.0, 1.0, 3.0]) == ([2.0, 5.0, 10.0], [1.0, 3.0, 9.0])
    assert _curve([10.0, 2.0, 5.0], [9.0, 4.0, 3.0]) is None  # a noisy measurement that falls: the line instead
    assert _curve([3.0], [1.0]) is None


def test_latency_prediction_follows_the_calibration_curve(tmp_path):
    from prunekit.inference import latency as L

    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5)), SHAPE)
    cost = L.LatencyCost(strip(m, copy=True), SHAPE, ChannelFractions(p.graph, p.groups),
                         L.LatencyTable(FakeTimer(), cache=tmp_path), grid=4)
    sizes = np.array([g.size for g in p.groups])
    half, dense = cost._layers(sizes // 2), cost._layers(sizes)
    cost.curve = ([half, dense], [1.0, 3.0])  # a measured curve that the line would not give
    assert cost(sizes // 2) == pytest.approx(1.0) and cost(sizes) == pytest.approx(3.0)
    assert cost(sizes * 3 // 4) == pytest.approx(1.0 + 2.0 * (cost._layers(sizes * 3 // 4) - half) / (dense - half))
    assert cost(np.ones_like(sizes)) >= 0.0  # extended below the smallest anchor, never negative


def test_monotone_envelope_lowers_a_cell_slower_than_a_larger_one_and_keeps_the_rest():
    from prunekit.inference.latency import monotone

    v = np.array([[1.0, 2.0, 3.0],
                  [2.0, 9.0, 4.0],   # 9: a slow phase; the cells with more channels in both took 4 and 5
                  [3.0, 4.0, 5.0]])
    want = v.copy()
    want[1, 1] = 4.0
    assert np.array_equal(monotone(v), want)
    assert np.array_equal(monotone(want), want)  # a monotone table is kept as measured
    assert np.array_equal(monotone(np.array([[1.0, 5.0, 2.0, 3.0]])), [[1.0, 2.0, 2.0, 3.0]])  # depthwise: one row


def test_latency_model_tables_go_through_the_envelope(tmp_path):
    """A layer cell timed in a slow phase (the 50 % input-channel cell of one layer, 50x) would make a smaller model
    predicted slower than a larger one; through the envelope it is not, and without it (for comparison) it is."""
    from prunekit.inference import latency as L

    class SlowCellTimer(FakeTimer):
        def model_ms(self, module, example):
            ms = super().model_ms(module, example)
            conv = module[0] if isinstance(module, torch.nn.Sequential) else None  # a layer, not the whole model
            return 50 * ms if isinstance(conv, torch.nn.Conv2d) and conv.groups == 1 and conv.in_channels == 16 \
                else ms

    m = mobilenet()
    p = prune_(m, PruningConfig(schedule=OneShot(0.5)), SHAPE)
    fr, sizes = ChannelFractions(p.graph, p.groups), np.array([g.size for g in p.groups])
    kw = {"grid": 4, "round_to": 1}
    cost = L.LatencyCost(strip(m, copy=True), SHAPE, fr, L.LatencyTable(SlowCellTimer(), cache=tmp_path), **kw)
    raw = L.LatencyCost(strip(m, copy=True), SHAPE, fr, L.LatencyTable(SlowCellTimer(), cache=tmp_path),
                        envelope=False, **kw)
    assert any((v != L.monotone(v)).any() for _, _, v in raw.grids)
    assert all((v == L.monotone(v)).all() for _, _, v in cost.grids)
    fractions = np.linspace(0.25, 1.0, 13)
    preds = [cost(np.maximum(1, np.round(sizes * f))) for f in fractions]
    assert all(a <= b + 1e-12 for a, b in zip(preds, preds[1:], strict=False)), preds
    raw_preds = [raw(np.maximum(1, np.round(sizes * f))) for f in fractions]
    assert any(a > b for a, b in zip(raw_preds, raw_preds[1:], strict=False)), raw_preds
