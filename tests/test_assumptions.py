"""Assumption checks (docs/theory.md#assumptions): known verdicts, numbers, errors and caching."""

import json

import numpy as np
import pytest
import torch

from mim_lightning.analysis import assumptions
from mim_lightning.errors import MimError

KEYS = {"assumption", "component", "holds", "message"}


def _report_ok(report, assumption):
    assert KEYS <= set(report) and report["assumption"] == assumption
    assert isinstance(report["holds"], bool) and isinstance(report["message"], str)
    json.dumps(report)


# ----------------------------------------------------------------------------- Assumption 1


@pytest.mark.parametrize("link", ["z1z2", "sum_he2", "he2", "staircase", "linear_he2"])
def test_polynomial_links_pass(link):
    report = assumptions.check_link(link, 2)
    _report_ok(report, 1)
    assert report["holds"] and report["degree"] == 2 and report["residual"] < 1e-10


def test_tanh_sum_is_not_a_polynomial():
    report = assumptions.check_link("tanh_sum", 2)
    assert not report["holds"] and report["residual"] > 1e-3
    assert "not a polynomial" in report["message"]


def test_link_as_function_and_min_r():
    report = assumptions.check_link("cubic", 1, fn=lambda z: z[..., 0] ** 3)
    assert report["holds"] and report["degree"] == 3 and report["component"] == "cubic"
    with pytest.raises(MimError, match=r"link 'z1z2' needs r >= 2 \(its min_r\), got r = 1"):
        assumptions.check_link("z1z2", 1)
    with pytest.raises(MimError, match="unknown link 'z1z3'.*did you mean 'z1z2'"):
        assumptions.check_link("z1z3", 2)


# ----------------------------------------------------------------------------- Assumption 2


@pytest.mark.parametrize("activation", ["logcosh", "one_minus_cos", "quadratic"])
def test_good_activations_pass(activation):
    report = assumptions.check_activation(activation)
    _report_ok(report, 2)
    assert report["holds"], report["message"]
    assert abs(report["d1_at_0"]) < 1e-6 and report["d2_at_0"] == pytest.approx(1, abs=1e-6)
    assert report["d3_bounded"] and report["smooth"]


def test_relu_and_tanh_fail():
    relu = assumptions.check_activation("relu")
    assert not relu["holds"] and relu["d2_at_0"] == 0 and not relu["smooth"]
    tanh = assumptions.check_activation("tanh")
    assert not tanh["holds"] and tanh["d1_at_0"] == pytest.approx(1) and tanh["d2_at_0"] == pytest.approx(0, abs=1e-6)
    assert "sigma''(0)" in tanh["message"]


def test_growing_third_derivative_fails():
    report = assumptions.check_activation("quartic", fn=lambda u: 0.5 * u * u + u**4)
    assert not report["holds"] and not report["d3_bounded"] and "grows" in report["message"]
    kinked = assumptions.check_activation("kinked", fn=lambda u: 0.5 * u * u + u.abs() ** 3 / 6)
    assert kinked["d3_bounded"] and not kinked["smooth"] and not kinked["holds"]  # sigma''' = sign(u): C^2 only
    with pytest.raises(MimError, match="unknown activation"):
        assumptions.check_activation("gelu")


# ----------------------------------------------------------------------------- Assumption 3


@pytest.mark.parametrize("loss", ["huber", "pseudo_huber", "logcosh", "even_tanh_sq"])
def test_lipschitz_convex_losses_pass(loss):
    report = assumptions.check_loss(loss)
    _report_ok(report, 3)
    assert report["holds"], report["message"]
    assert report["convex"] and report["c1"] and report["lipschitz"]


def test_squared_is_convex_but_not_lipschitz():
    report = assumptions.check_loss("squared")
    assert not report["holds"] and report["convex"] and not report["lipschitz"]
    assert report["sup_d1"] > 4 * report["sup_d1_inner"]
    assert "not Lipschitz" in report["message"]


@pytest.mark.parametrize(
    "fn", [lambda t, y: torch.cos(t - y), lambda t, y: -((t - y) ** 2), lambda t, y: -(t - y).abs()]
)
def test_non_convex_losses_fail(fn):
    report = assumptions.check_loss("bad", fn=fn)
    assert not report["holds"] and not report["convex"] and "not convex" in report["message"]


def test_absolute_loss_is_not_c1():
    report = assumptions.check_loss("abs", fn=lambda t, y: (t - y).abs())
    assert report["convex"] and report["lipschitz"] and not report["c1"] and not report["holds"]


# ----------------------------------------------------------------------------- Assumption 5


def test_full_rank_pairs():
    for link, loss in [("z1z2", "squared"), ("sum_he2", "squared"), ("z1z2", "huber"), ("sum_he2", "pseudo_huber")]:
        report = assumptions.check_pair(link, loss, 2)
        _report_ok(report, 5)
        assert report["holds"], report["message"]
    report = assumptions.check_pair("z1z2", "squared", 2)
    assert sorted(report["eigenvalues"]) == pytest.approx([-1, 1], abs=1e-9)
    assert np.allclose(report["M"], [[0, -1], [-1, 0]], atol=1e-6)
    assert report["isotropic"] == pytest.approx(0, abs=1e-9)
    assert report["error"] < 1e-9 and report["tolerance"] == assumptions.PAIR_RATIO_TOL


def test_linear_direction_needs_a_nonlinear_preprocessing():
    squared = assumptions.check_pair("linear_he2", "squared", 2)
    assert not squared["holds"] and squared["ratio"] < 1e-9 and "rank-deficient" in squared["message"]
    assert squared["eigenvalues"] == pytest.approx([-2, 0], abs=1e-9)
    repaired = assumptions.check_pair("linear_he2", "even_tanh_sq", 2)
    assert repaired["holds"] and repaired["ratio"] > 0.5
    assert min(abs(v) for v in repaired["eigenvalues"]) > 1e3 * repaired["error"]


@pytest.mark.parametrize("link, loss, r", [("he2", "huber", 2), ("z1z2", "pseudo_huber", 3), ("he2", "squared", 3)])
def test_unused_direction_is_never_full_rank(link, loss, r):
    # The link ignores a coordinate: M has an exact zero eigenvalue, whatever the estimator.
    report = assumptions.check_pair(link, loss, r)
    assert not report["holds"] and abs(report["eigenvalues"][-1]) <= r * report["error"]


def test_pair_with_functions():
    report = assumptions.check_pair(
        "mine", "sq", 2, link_fn=lambda z: z[..., 0] * z[..., 1], loss_fn=lambda t, y: 0.5 * (t - y) ** 2
    )
    assert report["holds"] and report["component"] == "mine+sq"


# ----------------------------------------------------------------------------- all four


def test_check_components_are_cached_and_return_copies(monkeypatch):
    reports = assumptions.check_components("sum_he2", "squared", "logcosh", 2)
    assert [rep["assumption"] for rep in reports] == [1, 2, 3, 5]
    assert [rep["holds"] for rep in reports] == [True, True, False, True]  # squared is out of theory
    json.dumps(reports)
    reports[0]["holds"] = "mutated"

    def recomputed(*args, **kwargs):
        raise AssertionError("computed again instead of served from the cache")

    from mim_lightning.analysis import hermite, moments
    monkeypatch.setattr(hermite, "_hermite_grid", recomputed)
    monkeypatch.setattr(moments, "_quadrature_moments", recomputed)
    again = assumptions.check_components("sum_he2", "squared", "logcosh", 2)
    assert again[0]["holds"] is True


def test_check_components_errors():
    with pytest.raises(MimError, match="unknown loss 'nope'"):
        assumptions.check_components("z1z2", "nope", "logcosh", 2)
    with pytest.raises(MimError, match="min_r"):
        assumptions.check_components("staircase", "huber", "logcosh", 1)


def test_cache_follows_the_registry():
    # The same name registered to another function (plugins changed) is not served from the cache.
    import types

    from helpers import plugin_registered
    from mim_lightning import hookimpl

    for link, degree in [(lambda z: z[..., 0] ** 2 - 1, 2), (lambda z: z[..., 0] ** 3, 3)]:
        plugin = types.SimpleNamespace(register_links=hookimpl(lambda register: register("swap_link", link)))
        with plugin_registered(plugin, "swap_plugin"):
            assert assumptions.check_link("swap_link", 1)["degree"] == degree
