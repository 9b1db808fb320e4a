import numpy as np
import pytest
import torch

from prunekit.data import synthetic
from prunekit.errors import PrunekitError
from prunekit.models import create_model
from prunekit.pruning import (
    ConstantSparsity,
    OneShot,
    Override,
    PolynomialDecay,
    PruningConfig,
    prune_,
    strip,
)
from prunekit.train import TrainConfig, fit

SHAPE = (1, 28, 28)


def model(seed=0):
    torch.manual_seed(seed)
    return create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)


def one_shot(s, **kw):
    return PruningConfig(schedule=OneShot(s), **kw)


def randomize_bn(m):
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.2)


def test_masked_model_equals_surgery_result():
    m = model().eval()
    randomize_bn(m)
    p = prune_(m, one_shot(0.6), SHAPE)
    p.step(0)
    x = torch.randn(4, *SHAPE)
    masked_out = m(x)
    res = p.shrink(inputs=x)
    assert res.max_abs_diff <= 1e-4
    assert torch.allclose(res.model.eval()(x), masked_out, atol=1e-5)
    assert res.params_after < res.params_before
    dense_out = strip(m, copy=True).eval()(x)
    assert (dense_out - masked_out).abs().max() > 1e-2 * dense_out.abs().max()  # the masks did something


def test_local_sparsity_round_to_and_min_channels():
    m = model()
    p = prune_(m, one_shot(0.7, round_to=8, min_channels=8), SHAPE)
    p.step(0)
    for g, alive in zip(p.groups, p.alive().values(), strict=True):
        k = int(alive.sum())
        assert k >= 8 and (k % 8 == 0 or k == g.size)
        assert abs(k - round(g.size * 0.3)) <= 4


def test_monotone_masks_and_exclusions():
    m = model()
    cfg = PruningConfig(schedule=ConstantSparsity(0.5, begin_step=0, end_step=10, frequency=5),
                        overrides=[Override(r"blocks\.12", exclude=True), Override(r"blocks\.0\.", sparsity=0.25)])
    p = prune_(m, cfg, SHAPE)
    p.step(0)
    first = p.alive()
    with torch.no_grad():  # make previously pruned channels look important: they must stay pruned
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.mul_(-1).add_(torch.rand_like(mod.weight))
    p.step(5)
    for gid, a in p.alive().items():
        assert not (a & ~first[gid]).any()
    by = {g.name: a for g, a in zip(p.groups, p.alive().values(), strict=True)}
    assert by["blocks.12.pw.conv"].all()
    assert by["blocks.0.pw.conv"].mean() == pytest.approx(0.75)
    assert by["blocks.5.pw.conv"].mean() == pytest.approx(0.5)


def test_global_scope_keeps_total_and_differs_per_layer():
    m = model()
    with torch.no_grad():
        m.blocks[3].pw.conv.weight.mul_(0.01)  # one layer's filters are far less important
    p = prune_(m, one_shot(0.5, scope="global", criterion="l1_filters", global_norm="mean"), SHAPE)
    p.step(0)
    assert p.sparsity() == pytest.approx(0.5, abs=0.01)
    by = {g.name: a.mean() for g, a in zip(p.groups, p.alive().values(), strict=True)}
    assert by["blocks.3.pw.conv"] < 0.5 and max(by.values()) > 0.5


def _kept_global(floor, s=0.5, norm="mean"):
    m = model()
    with torch.no_grad():
        m.blocks[3].pw.conv.weight[4:].mul_(0.001)  # all but 4 filters far below their layer's mean score
    p = prune_(m, one_shot(s, scope="global", criterion="l1_filters", global_floor=floor, global_norm=norm), SHAPE)
    p.step(0)
    return p, {g.name: int(a.sum()) for g, a in zip(p.groups, p.alive().values(), strict=True)}


def test_global_floor_bounds_how_far_a_layer_falls_below_the_local_count():
    _, none = _kept_global(0.0)
    p, half = _kept_global(0.5)
    local = {g.name: round(g.size * 0.5) for g in p.groups}
    assert none["blocks.3.pw.conv"] < local["blocks.3.pw.conv"] / 2  # unfloored: the layer is ranked away
    assert all(half[k] >= local[k] / 2 for k in local), half  # floored: at least half its local count
    assert half["blocks.3.pw.conv"] < local["blocks.3.pw.conv"]  # still ranked below the others
    assert p.sparsity() == pytest.approx(0.5, abs=0.01)  # and the total is still the target
    _, same = _kept_global(1.0)
    assert same == local  # floor 1: every layer at its local count, i.e. local scope


def test_lamp_scores():
    from prunekit.pruning.policy import lamp

    alive = np.array([True, True, True, False])
    got = lamp(np.array([2.0, 1.0, 3.0, 5.0]), alive)
    np.testing.assert_allclose(got, [4 / 13, 1 / 14, 1.0, 0.0])  # s^2 over the squares of those not below it
    tie = lamp(np.array([1.0, 1.0]), np.array([True, True]))
    assert tie[0] == 1.0 and tie[1] == pytest.approx(0.5)  # ties: the lower index ranks higher, as _top keeps it


def test_global_lamp_is_blind_to_a_layers_scale_and_differs_from_the_mean():
    """LAMP compares each score with the layer's own better ones: a layer whose filters are all 1024x smaller
    keeps exactly what it keeps unscaled, and the total meets the target; the allocation is not the mean's."""
    def kept(scale, norm):
        m = model()
        with torch.no_grad():  # both producers of the group's channels: its scores scale by `scale`
            m.blocks[3].pw.conv.weight.mul_(scale)
            m.blocks[4].dw.conv.weight.mul_(scale)
        p = prune_(m, one_shot(0.5, scope="global", criterion="l1_filters", global_norm=norm, global_floor=0.0),
                   SHAPE)
        p.step(0)
        assert p.sparsity() == pytest.approx(0.5, abs=0.01)
        return {g.name: int(a.sum()) for g, a in zip(p.groups, p.alive().values(), strict=True)}

    lamp = kept(1.0, "lamp")
    assert kept(2.0 ** -10, "lamp") == lamp  # (a power of two: the scores scale exactly)
    assert kept(1.0, "mean") != lamp


@pytest.mark.parametrize("target", ["macs", "params"])
def test_global_per_cost_takes_channels_from_the_layers_that_cost_most_per_channel(target):
    """With ``global_per_cost`` a MAC (parameter) target ranks each channel by its normalised score per MAC
    (parameter) its removal saves: at equal scores, the channels saving the most per channel go first. Here every
    channel scores the same, so the plain ranking only breaks ties, and the per-cost one keeps a smaller share of
    the channels of the groups above the median cost per channel, a larger one below it; both meet the target."""
    def run(per_cost):
        m = model()
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.Conv2d):
                    mod.weight.fill_(0.1)
        p = prune_(m, one_shot(0.5, scope="global", criterion="l1_filters", target=target, global_floor=0.0,
                               global_per_cost=per_cost), SHAPE)
        full = {g.id: np.ones(g.size, dtype=bool) for g in p.groups}
        unit, dense = p.allocator.unit_costs(full), p.allocator.cost(full)
        p.step(0)
        kept = {g.name: float(a.mean()) for g, a in zip(p.groups, p.alive().values(), strict=True)}
        assert p.allocator.cost(p.alive()) <= 0.5 * dense * 1.001
        return kept, {g.name: unit[g.id] for g in p.groups}

    plain, unit = run(False)
    kept, _ = run(True)
    med = np.median(list(unit.values()))
    costly, cheap = [k for k in unit if unit[k] > med], [k for k in unit if unit[k] < med]
    share = lambda d, ks: np.mean([d[k] for k in ks])  # noqa: E731  mean kept fraction of these groups
    assert share(kept, costly) < share(plain, costly) and share(kept, cheap) > share(plain, cheap)


@pytest.mark.parametrize("target", ["macs", "params"])
def test_mac_and_param_targets(target):
    from prunekit.cost import profile

    m = model()
    p = prune_(m, one_shot(0.6, target=target), SHAPE)
    p.step(0)
    res = p.shrink(check=False)
    before = profile(strip(m, copy=True), SHAPE)
    after = profile(res.model, SHAPE)
    attr = "macs" if target == "macs" else "params"
    removed = 1 - getattr(after, attr) / getattr(before, attr)
    # the selected (pointwise) groups can remove at most part of the cost; the target is hit within a few %
    assert 0.55 <= removed <= 0.65, removed


def test_strip_removes_hooks_and_masks():
    m = model().eval()
    randomize_bn(m)
    x = torch.randn(2, *SHAPE)
    ref = m(x)
    p = prune_(m, one_shot(0.5), SHAPE)
    p.step(0)
    assert (m(x) - ref).abs().max() > 1e-2 * ref.abs().max()
    strip(m)
    assert not hasattr(m, "prunekit_masks") and torch.equal(m(x), ref)
    assert not any(getattr(h, "_prunekit", False) for mod in m.modules() for h in mod._forward_hooks.values())


def test_bake_zeroes_weights_so_the_zero_rule_finds_them():
    from prunekit.surgery import shrink

    m = model().eval()
    randomize_bn(m)
    p = prune_(m, one_shot(0.5), SHAPE)
    p.step(0)
    x = torch.randn(3, *SHAPE)
    masked = m(x)
    removed = p.removed()
    p.bake()
    strip(m)
    assert torch.allclose(m(x), masked, atol=1e-5)  # baked weights == masks
    res = shrink(m, SHAPE, "zero", inputs=x)
    assert res.removed == removed and res.max_abs_diff <= 1e-4


def test_gradual_pruning_resume_mid_schedule_is_identical(tmp_path):
    data = synthetic(train_size=128, test_size=32)
    sched = PolynomialDecay(0.0, 0.6, begin_step=2, end_step=12, frequency=2)
    tcfg = dict(epochs=4, batch_size=32, lr=0.05, warmup_epochs=0)
    for criterion in ("l1", "taylor"):
        cfg = dict(schedule=sched, criterion=criterion, taylor_batches=2)
        ref = model()
        pr = prune_(ref, PruningConfig(**cfg), SHAPE)
        fit(ref, data, TrainConfig(**tcfg), tmp_path / f"a{criterion}", callbacks=[pr], progress=False,
            log=lambda s: None)
        m1 = model()
        p1 = prune_(m1, PruningConfig(**cfg), SHAPE)
        fit(m1, data, TrainConfig(**tcfg, max_steps=7), tmp_path / f"b{criterion}", callbacks=[p1], progress=False,
            log=lambda s: None)
        assert 0 < p1.sparsity() < 0.6  # stopped mid-schedule
        m2 = model(seed=99)
        p2 = prune_(m2, PruningConfig(**cfg), SHAPE)
        fit(m2, data, TrainConfig(**tcfg), tmp_path / f"b{criterion}", callbacks=[p2], resume=True, progress=False,
            log=lambda s: None)
        assert pr.removed() == p2.removed(), criterion
        for (k, a), b in zip(ref.state_dict().items(), m2.state_dict().values(), strict=True):
            assert torch.equal(a, b), (criterion, k)
        assert p2.sparsity() == pytest.approx(0.6, abs=0.02)
        assert [h["step"] for h in pr.history] == [h["step"] for h in p2.history]


def test_layer_selection_errors():
    with pytest.raises(PrunekitError, match="matches no prunable layer"):
        prune_(model(), one_shot(0.5, layers=r"^nothing$"), SHAPE)
    with pytest.raises(PrunekitError, match="invalid layer regex"):
        prune_(model(), one_shot(0.5, layers="(("), SHAPE)
    m = model()
    prune_(m, one_shot(0.5), SHAPE)
    with pytest.raises(ValueError, match="already carries prunekit masks"):
        prune_(m, one_shot(0.5), SHAPE)


def test_save_and_load_masked_model(tmp_path):
    from prunekit import saved
    from prunekit.models import InputSpec, ModelSpec

    m = model().eval()
    p = prune_(m, one_shot(0.4), SHAPE)
    p.step(0)
    spec = ModelSpec("mobilenet_v1", {"width": 0.25, "num_classes": 10, "in_channels": 1, "small_input": True},
                     InputSpec([28, 28], 1, [0.5], [0.5]))
    saved.save(m, tmp_path, spec)
    loaded = saved.load(tmp_path)
    assert loaded.pruner is not None and loaded.pruner.removed() == p.removed()
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(loaded.model.eval()(x), m(x))
    np.testing.assert_array_equal(np.concatenate(list(loaded.pruner.alive().values())),
                                  np.concatenate(list(p.alive().values())))
