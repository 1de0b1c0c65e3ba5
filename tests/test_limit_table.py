"""The crossing and bootstrap maths of scripts/limit_table.py (mim_lightning.analysis.crossing)
against closed forms: small pure-Python cases, no training."""

from __future__ import annotations

import math

import pytest

from mim_lightning.analysis import crossing


def test_stays_above_interpolates_an_increasing_curve():
    assert crossing.stays_above([1, 2, 3], [0.2, 0.4, 0.8], 0.5) == pytest.approx(2.25)
    assert crossing.stays_above([3, 1, 2], [0.8, 0.2, 0.4], 0.5) == pytest.approx(2.25)  # order of the points


def test_stays_above_takes_the_last_upward_crossing_of_a_non_monotone_curve():
    # above at alpha 1, below at 2, above from 3: the curve stays above only after 2
    assert crossing.stays_above([1, 2, 3, 4], [0.6, 0.4, 0.7, 0.9], 0.5) == pytest.approx(2 + 1 / 3)


def test_stays_above_censored_and_never():
    assert crossing.stays_above([1, 2], [0.6, 0.7], 0.5) == 1  # at or before the first alpha
    assert crossing.stays_above([1, 2, 3], [0.6, 0.7, 0.4], 0.5) == math.inf  # falls below at the end
    assert crossing.stays_above([1, 2], [0.5, 0.1], 0.5) == math.inf
    assert crossing.stays_above([1, 2], [0.4, 0.5], 0.5) == 2  # reaching the level counts


def test_mean_curve_uses_the_seeds_with_a_value():
    alphas, means = crossing.mean_curve([{1: 0.2, 2: 0.4}, {1: 0.4}])
    assert alphas == [1, 2] and means == pytest.approx([0.3, 0.4])


def test_quantile_matches_linear_interpolation_of_order_statistics():
    values = list(range(101))  # the q-quantile of 0..100 is 100 q
    assert crossing.quantile(values, 0.025) == pytest.approx(2.5)
    assert crossing.interval(values) == pytest.approx((2.5, 97.5))
    assert crossing.quantile([3, 1, 2], 0.5) == 2
    assert crossing.quantile([1, math.inf], 0.5) == math.inf
    assert crossing.quantile([1, 1, math.inf], 0.25) == 1


def test_bootstrap_of_a_two_point_mean_has_the_binomial_law():
    # resampling the means of {0, 1} (n = 2): mean 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4
    draws = crossing.bootstrap([0.0, 1.0], lambda s: sum(s) / len(s), resamples=20000, seed=1)
    for value, p in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert draws.count(value) / len(draws) == pytest.approx(p, abs=0.015)
    assert crossing.interval(draws) == (0.0, 1.0)
    assert crossing.bootstrap([0.0, 1.0], sum, 50, seed=3) == crossing.bootstrap([0.0, 1.0], sum, 50, seed=3)


def test_bootstrap_of_identical_seeds_is_a_point():
    curves = [{1: 0.2, 2: 0.8}] * 5
    draws = crossing.bootstrap(curves, lambda s: crossing.stays_above(*crossing.mean_curve(s), 0.5), 100)
    assert draws == [pytest.approx(1.5)] * 100


@pytest.mark.parametrize(("f", "level", "root"), [
    (lambda a: 1 - 1 / a, 0.5, 2.0),
    (lambda a: math.sqrt(max(0.0, 1 - 1 / a)), 0.5, 4 / 3),
    (lambda a: 0.0 if a < 1.7 else 1.0, 0.5, 1.7),  # a jump: the bracket closes on it
])
def test_solve_level_finds_the_closed_form_root(f, level, root):
    alpha, evaluations = crossing.solve_level(f, 1.0, 3.0, level, xtol=1e-6)
    assert alpha == pytest.approx(root, abs=1e-5) and evaluations <= 40


def test_solve_level_needs_a_bracket():
    with pytest.raises(ValueError, match="bracket"):
        crossing.solve_level(lambda a: a, 1.0, 2.0, 5.0)
