import math

import pytest

from prunekit.pruning import AGP, ConstantSparsity, Linear, OneShot, PolynomialDecay, from_config

# Hand-computed with tfmot's formula: s = final + (initial - final) * (1 - p)^power, p = clip((t-b)/(e-b), 0, 1);
# prune when b <= t <= e and (t - b) % freq == 0.
POLY = PolynomialDecay(0.1, 0.8, begin_step=10, end_step=110, power=3, frequency=20)
POLY_TABLE = [  # step, should_prune, sparsity
    (0, False, 0.1), (10, True, 0.1), (20, False, 0.8 - 0.7 * 0.9 ** 3), (30, True, 0.8 - 0.7 * 0.8 ** 3),
    (60, False, 0.8 - 0.7 * 0.5 ** 3), (90, True, 0.8 - 0.7 * 0.2 ** 3), (110, True, 0.8), (120, False, 0.8),
    (130, False, 0.8),
]


@pytest.mark.parametrize("step,should,sparsity", POLY_TABLE)
def test_polynomial_decay_matches_tfmot(step, should, sparsity):
    got = POLY(step)
    assert got[0] is should and got[1] == pytest.approx(sparsity, abs=1e-12)


@pytest.mark.parametrize("step,should", [(4, False), (5, True), (7, False), (15, True), (10_000_005, True)])
def test_constant_sparsity_prunes_forever_with_end_minus_one(step, should):
    s = ConstantSparsity(0.5, begin_step=5, end_step=-1, frequency=10)
    assert s(step) == (should, 0.5)


def test_aliases_and_one_shot():
    assert AGP(0.0, 0.5, 0, 100, frequency=10)(50)[1] == PolynomialDecay(0.0, 0.5, 0, 100, 3, 10)(50)[1]
    assert Linear(0.0, 0.5, 0, 100, frequency=10)(50)[1] == pytest.approx(0.25)
    one = OneShot(0.6, begin_step=3)
    assert [one(t)[0] for t in range(6)] == [False, False, False, True, False, False]


def test_config_round_trip_and_epochs():
    for s in (POLY, ConstantSparsity(0.3, 0, 50, 5), AGP(0.0, 0.5, 0, 10, 2), OneShot(0.4, 7)):
        assert from_config(s.to_config()) == s
    e = from_config({"kind": "polynomial_decay", "initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_epoch": 1,
                     "end_epoch": 3, "frequency_epochs": 0.5}, steps_per_epoch=100)
    assert (e.begin_step, e.end_step, e.frequency) == (100, 300, 50)
    tf_style = {"class_name": "PolynomialDecay", "config": {"initial_sparsity": 0.0, "final_sparsity": 0.5,
                                                           "begin_step": 0, "end_step": 10, "power": 3,
                                                           "frequency": 1}}
    assert from_config(tf_style).final_sparsity == 0.5


@pytest.mark.parametrize("kwargs,msg", [
    (dict(initial_sparsity=0.0, final_sparsity=1.0, begin_step=0, end_step=10), "final_sparsity must be"),
    (dict(initial_sparsity=-0.1, final_sparsity=0.5, begin_step=0, end_step=10), "initial_sparsity must be"),
    (dict(initial_sparsity=0.0, final_sparsity=math.nan, begin_step=0, end_step=10), "final_sparsity must be"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=20, end_step=10), "begin_step .* <= end_step"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=-1), "end_step cannot be -1"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, frequency=0), "frequency must be > 0"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=-3, end_step=10), "begin_step must be >= 0"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, power=0), "power"),
])
def test_validation_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        PolynomialDecay(**kwargs)


def test_from_config_errors():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        from_config({"kind": "cosine"})
    with pytest.raises(ValueError, match="unknown argument 'finalsparsity'"):
        from_config({"kind": "constant", "finalsparsity": 0.5})
    with pytest.raises(ValueError, match="needs steps_per_epoch"):
        from_config({"kind": "constant", "target_sparsity": 0.5, "begin_epoch": 1})
