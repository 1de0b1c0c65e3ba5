"""The Bayes-optimal limit on the sweep plots against data.alpha (issue 14): the curve drawn is
``analysis.limit.bayes_optimal``'s smallest cosine at the sweep's alphas, per (link, r <= 3, noise),
switchable (mim sweep --no-limit, MIM_SWEEP_LIMIT=0)."""

import pytest
import yaml
from click.testing import CliRunner

from mim_lightning.analysis import limit
from mim_lightning.cli import main
from mim_lightning.experiments import grid as grids
from mim_lightning.experiments import plots, tables
from mim_lightning.experiments import sweep as sweeps
from mim_lightning.training.run_folder import RunFolder

BASE = {"data": {"d": 32, "r": 1, "link": "he2", "alpha2": 4, "n_test": 256}, "model": {"width": 16},
        "stage1": {"steps": 3}}
ALPHAS = [0.75, 2]


def write(path, grid, **data):
    path.write_text(yaml.safe_dump({**BASE, "data": {**BASE["data"], **data}, "sweep": grid}, sort_keys=False))
    return path


def lines(fig, prefix):
    (ax,) = fig.axes
    return {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines if (line.get_gid() or "").startswith(prefix)}


def drawn(out, path, **kwargs):
    sweep = grids.load_sweep(path)
    results = {run.key: RunFolder(out / "runs" / run.key).results() for run in sweep.runs}
    rows = tables.rows_of(sweep, results)
    return plots.figures(rows, sweeps.shapes_of(sweep), sweeps.figures_of(sweep, **kwargs))


def test_the_bayes_curve_is_the_limits_smallest_cosine(tmp_path, monkeypatch):
    monkeypatch.delenv(sweeps.LIMIT_ENV, raising=False)
    path = write(tmp_path / "alpha.yaml", {"data.alpha": ALPHAS, "seed": [0]})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figs = drawn(tmp_path / "out", path)
    expected = limit.bayes_optimal("he2", 1, tuple(ALPHAS), 0.0)  # noiseless data: the noiseless limit
    mins = [cos[-1] for cos in expected["cosines"]]
    assert lines(figs["min_principal_cosine"], "bayes") == {"bayes:he2:1": (ALPHAS, mins)}
    assert mins[0] < 0.9 and mins[1] > 0.99  # he2: partial recovery at 0.75, perfect past ~1.13
    for name in ("subspace_mass", "test_rel_mse"):  # only on the smallest cosine
        assert lines(figs[name], "bayes") == {}
    # switched off: by argument or by the environment
    assert lines(drawn(tmp_path / "out", path, limit=False)["min_principal_cosine"], "bayes") == {}
    monkeypatch.setenv(sweeps.LIMIT_ENV, "0")
    assert lines(drawn(tmp_path / "out", path)["min_principal_cosine"], "bayes") == {}
    assert lines(drawn(tmp_path / "out", path, limit=True)["min_principal_cosine"], "bayes") != {}


def test_limits_noise_relative_to_std_g_and_what_is_left_out(tmp_path, monkeypatch):
    calls = []

    def fake(link, r, alphas, noise=0.01):
        calls.append((link, r, alphas, noise))
        return {"alpha": list(alphas), "cosines": [[1.0] * r for _ in alphas]}

    monkeypatch.setattr(limit, "bayes_optimal", fake)
    sweep = grids.load_sweep(write(tmp_path / "n.yaml", {"data.alpha": [4, 1, 2]}, noise=0.3))
    (key,) = sweeps.limits(sweep)
    assert calls == [("he2", 1, (1.0, 2.0, 4.0), pytest.approx(0.3 / limit.link_std("he2", 1)))]
    assert key[:2] == ("he2", 1)
    assert limit.link_std("he2", 1) == pytest.approx(2**0.5, rel=1e-3)  # Var He2(z) = 2
    # r > 3: no curve (the state evolution covers r <= 3); x key not data.alpha: none
    assert sweeps.limits(grids.load_sweep(write(tmp_path / "r4.yaml", {"data.alpha": [1, 2]}, link="sum_he2", r=4))) == {}
    assert sweeps.limits(grids.load_sweep(write(tmp_path / "w.yaml", {"model.width": [8, 16]}))) is None
    assert len(calls) == 1
