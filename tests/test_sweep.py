"""`mim sweep`: the grid, results.csv, plots, content-keyed caching, batched seed groups, failures,
chance levels, bad files."""

import csv
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mim_lightning.analysis.theory import alpha_c
from mim_lightning.cli import main
from mim_lightning.config import load_config
from mim_lightning.errors import MimError, RunFailed
from mim_lightning.core import chance
from mim_lightning.experiments import execute, plots, tables
from mim_lightning.experiments import grid as grids
from mim_lightning.experiments import sweep as sweeps
from mim_lightning.training import run as runner
from mim_lightning.training.run_folder import RunFolder

from helpers import TINY

BASE = {"data": {"d": 32, "alpha2": 8, "n_test": 512}, "model": {"width": 32}, "stage1": {"steps": 3}}
COLUMNS = ["data.alpha", "seed", "min_principal_cosine", "mean_principal_cosine", "subspace_mass", "test_rel_mse",
           "spectral_min_principal_cosine", "spectral_mean_principal_cosine", "spectral_subspace_mass",
           "spectral_estimator", *(f"spectral_{prep}_{order}_min_principal_cosine" for prep in ("centred", "uncentred")
                                   for order in ("magnitude", "largest", "smallest")),
           "weakest_eigenspace_mass_per_dim", "stage1_unbounded_fraction", "stage2_loss", "status", "run"]
PLOTS = ["min_principal_cosine.png", "subspace_mass.png", "test_rel_mse.png"]  # sum_he2: M = -2 I, no weakest eigenspace


def write_sweep(path, grid, **base):
    path.write_text(yaml.safe_dump({**BASE, **base, "sweep": grid}, sort_keys=False))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)], catch_exceptions=False)


class Spy:
    """Records the runner's training calls (the seeds of each), then calls through."""

    def __init__(self, monkeypatch):
        self.calls = []
        replicas = runner.train_replicas

        def spy_replicas(cfg, out, seeds, *args, **kwargs):
            self.calls.append(list(seeds))
            return replicas(cfg, out, seeds, *args, **kwargs)

        monkeypatch.setattr(runner, "train_replicas", spy_replicas)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def mtimes(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2 x 2 sweep (data.alpha x seed) at d = 32, run once for the module: (out, output, calls)."""
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root / "alpha.yaml", {"data.alpha": [2, 8], "seed": [0, 1]})
    monkeypatch = pytest.MonkeyPatch()
    spy = Spy(monkeypatch)
    try:
        result = invoke(path, "--out", root / "out")
    finally:
        monkeypatch.undo()
    assert result.exit_code == 0, result.output
    return root / "out", result.output, spy.calls


def test_sweep_writes_csv_plots_and_table(swept):
    out, output, calls = swept
    assert calls == [[0, 1], [0, 1]]  # one batched run per seed group
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["data.alpha"], r["seed"]) for r in rows] == [("2", "0"), ("2", "1"), ("8", "0"), ("8", "1")]
    for row in rows:
        folder = out / "runs" / row["run"]
        results = json.loads((folder / "results.json").read_text())
        assert float(row["min_principal_cosine"]) == min(results["principal_cosines"])
        for prep, by_order in results["spectral_estimators"].items():   # centred (the default) and uncentred
            for order, cosines in by_order.items():
                assert float(row[f"spectral_{prep}_{order}_min_principal_cosine"]) == min(cosines)
        assert row["spectral_estimator"] == results["spectral_estimator"]
        assert float(row["spectral_min_principal_cosine"]) == max(
            float(row[f"spectral_{p}_{o}_min_principal_cosine"]) for p in ("centred", "uncentred")
            for o in ("magnitude", "largest", "smallest"))
        assert float(row["stage1_unbounded_fraction"]) == results["stage1_unbounded_fraction"] == 0.0  # huber
        assert results["config"]["seed"] == int(row["seed"])
        assert results["config"]["data"]["alpha"] == float(row["data.alpha"])
        assert yaml.safe_load((folder / "config.yaml").read_text()) == results["config"]
        assert RunFolder(folder).status()["status"] == "finished"
        assert row["run"] == grids.run_key(load_config(folder / "config.yaml"))
        assert row["weakest_eigenspace_mass_per_dim"] == ""  # sum_he2: a single eigenspace
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "weakest_eigenspace_mass_per_dim.png").exists()
    assert "sweep: 0 of 4 runs cached, training 4" in output  # the progress bar's label off a terminal
    assert "means over seeds" in output and "sweep: 4/4 runs (0 cached, 4 trained in" in output
    assert "spectral: each run's strongest spectral estimator" in output


def test_rerun_trains_nothing(swept, monkeypatch):
    out, _, _ = swept
    before = mtimes(out)
    spy = Spy(monkeypatch)
    result = invoke(out.parent / "alpha.yaml", "--out", out)
    assert result.exit_code == 0, result.output
    assert spy.calls == []
    assert mtimes(out) == before and len(before) == 4
    assert "4/4 runs (4 cached, 0 trained" in result.output
    assert len(read_csv(out / "results.csv")) == 4


def test_changing_one_value_reruns_only_the_new_runs(swept, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(swept[0], out)
    before = mtimes(out)
    path = write_sweep(tmp_path / "alpha.yaml", {"data.alpha": [2, 4], "seed": [0, 1]})
    spy = Spy(monkeypatch)
    result = invoke(path, "--out", out)
    assert result.exit_code == 0, result.output
    assert spy.calls == [[0, 1]]  # only the data.alpha = 4 group
    rows = read_csv(out / "results.csv")
    assert [(r["data.alpha"], r["seed"]) for r in rows] == [("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")]
    after = mtimes(out)
    for row in rows[:2]:
        assert after[row["run"]] == before[row["run"]]
    assert len(after) == 6  # the data.alpha = 8 runs stay cached in runs/


def test_batched_group_equals_separate_runs(swept, tmp_path):
    out, _, _ = swept
    for row in read_csv(out / "results.csv")[2:]:
        batched = json.loads((out / "runs" / row["run"] / "results.json").read_text())
        cfg = load_config(out / "runs" / row["run"] / "config.yaml")
        alone = runner.train_replicas(cfg, tmp_path / row["seed"], [cfg.seed])[0]
        for field in ("principal_cosines", "spectral_principal_cosines"):
            assert alone[field] == pytest.approx(batched[field], abs=1e-5)
        for prep, by_order in batched["spectral_estimators"].items():
            for order, cosines in by_order.items():
                assert alone["spectral_estimators"][prep][order] == pytest.approx(cosines, abs=1e-5)
        for field in ("subspace_mass", "test_rel_mse", "stage2_loss"):
            assert alone[field] == pytest.approx(batched[field], abs=1e-5)
        assert alone["config"] == batched["config"]


def test_lbfgs_groups_are_trained_seed_by_seed(tmp_path, monkeypatch):
    assert execute.batchable(load_config(None, TINY))
    assert execute.batchable(load_config(None, [*TINY, "stage2.loss=huber", "stage2.solver=gd"]))
    assert not execute.batchable(load_config(None, [*TINY, "stage2.loss=huber"]))  # auto: lbfgs alone
    assert not execute.batchable(load_config(None, [*TINY, "stage2.loss=huber", "stage2.solver=lbfgs"]))
    path = write_sweep(tmp_path / "losses.yaml", {"stage2.loss": ["squared", "huber"], "seed": [0, 1]})
    spy = Spy(monkeypatch)
    result = invoke(path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert spy.calls == [[0, 1], [0], [1]]  # squared (ridge): batched; huber (lbfgs): one seed at a time
    assert [row["status"] for row in read_csv(tmp_path / "out" / "results.csv")] == ["ok"] * 4


def test_grid_order_keys_and_overrides(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"data": {"alpha": [1, 2]}, "model.width": [8, 16], "seed": [3]})
    sweep = grids.load_sweep(path, ["data.noise=0.5", "sweep.data.alpha=[4, 8]"])
    assert sweep.keys == ["data.alpha", "model.width", "seed"]
    assert [tuple(r.values.values()) for r in sweep.runs] == [(4, 8, 3), (4, 16, 3), (8, 8, 3), (8, 16, 3)]
    assert all(r.cfg.data.noise == 0.5 and r.cfg.data.d == 32 for r in sweep.runs)
    assert len({r.key for r in sweep.runs}) == 4
    groups = execute.seed_groups(grids.load_sweep(write_sweep(tmp_path / "t.yaml", {"data.alpha": [1, 2], "seed": [0, 1, 2]})).runs)
    assert [[r.cfg.seed for r in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]


def lines(fig, prefix):
    """{gid: (x data, y data)} of the figure's lines whose gid starts with ``prefix``."""
    (ax,) = fig.axes
    return {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines if (line.get_gid() or "").startswith(prefix)}


def swept_figures(out, sweep=None):
    sweep = sweep or grids.load_sweep(out.parent / "alpha.yaml")
    results = {run.key: RunFolder(out / "runs" / run.key).results() for run in sweep.runs}
    rows = tables.rows_of(sweep, results)
    return plots.figures(rows, sweeps.shapes_of(sweep), sweeps.figures_of(sweep)), rows


def test_alpha_c_marks_the_alpha_plots(swept):
    out, _, _ = swept
    figs, rows = swept_figures(out)
    assert list(figs) == [name.removesuffix(".png") for name in PLOTS]
    value = alpha_c("sum_he2", 2)
    for fig in figs.values():
        assert lines(fig, "alpha_c") == {"alpha_c:sum_he2:2": ([value, value], [0, 1])}
    # x key no longer data.alpha: no line
    sweep = grids.load_sweep(out.parent / "alpha.yaml")
    sweep.axes = {"model.width": [32], **sweep.axes}
    assert sweeps.thresholds(sweep) is None
    spec = sweeps.figures_of(sweep)
    rows = [{"model.width": 32, **row} for row in rows]
    for fig in plots.figures(rows, sweeps.shapes_of(sweep), spec).values():
        assert lines(fig, "alpha_c") == {}


def test_chance_line_is_the_chance_level_of_the_plotted_quantity(swept):
    figs, _ = swept_figures(swept[0])
    level = chance.median_min_cosine(32, 2)
    assert lines(figs["min_principal_cosine"], "chance")["chance"][1] == [level, level]
    assert lines(figs["subspace_mass"], "chance")["chance"][1] == [2 / 32, 2 / 32]
    assert lines(figs["test_rel_mse"], "chance")["chance"][1] == [1, 1]
    assert level < 0.8 * math.sqrt(2 / 32)  # the RMS cosine overstates the smallest one


def test_median_min_cosine_against_a_direct_simulation_and_the_r1_limit():
    # r = 1: the cosine is |<u, e_1>| for u uniform on the sphere, ~ |N(0, 1)| / sqrt(d): median 0.6745 / sqrt(d)
    d = 10_000
    assert chance.median_min_cosine(d, 1) == pytest.approx(0.67449 / math.sqrt(d), rel=0.06)
    rng = np.random.default_rng(12345)
    for d, r in [(50, 4), (5, 3), (3, 2)]:  # singular values of the top r x r block of an orthonormal basis
        basis, _ = np.linalg.qr(rng.standard_normal((4000, d, r)))
        direct = np.median(np.linalg.svd(basis[:, :r, :], compute_uv=False)[:, -1])
        assert chance.median_min_cosine(d, r) == pytest.approx(direct, rel=0.08), (d, r)
    assert chance.median_min_cosine(4, 4) == 1.0


def test_weakest_eigenspace_groups_tied_eigenvalues():
    assert tables.weakest_eigenspace([-2.0, -2.0]) is None  # sum_he2: M = -2 I, nothing is weaker
    assert tables.weakest_eigenspace([-1.0, 1.0]) is None  # z1z2: equal |eigenvalues|
    assert tables.weakest_eigenspace([-2.0, -1.0]) == [1]
    assert tables.weakest_eigenspace([3.0, 1.0, 1.004]) == [1, 2]  # tied within 1% of max |lambda|
    assert tables.weakest_eigenspace([3.0, 1.0, 1.1]) == [1]
    assert tables.weakest_eigenspace_of("sum_he2", "squared", 3) is None
    assert tables.weakest_eigenspace_of("weighted_he2", "squared", 2) == (1,)
    assert tables.weakest_eigenspace_of("he2", "squared", 3) == (1, 2)  # M = diag(-2, 0, 0)
    results = {"direction_mass": [0.6, 0.1, 0.2]}
    assert tables.metrics_of(results, (1, 2))["weakest_eigenspace_mass_per_dim"] == pytest.approx(0.15)
    assert tables.metrics_of(results, None)["weakest_eigenspace_mass_per_dim"] is None
    rows = [{"data.alpha": a, "weakest_eigenspace_mass_per_dim": None, "status": "ok", "run": "k"} for a in (1, 2)]
    spec = plots.Figures("data.alpha", [1, 2], [])
    assert "weakest_eigenspace_mass_per_dim" not in plots.figures(rows, {"k": plots.Shape(8, 2, "sum_he2")}, spec)
    rows[0]["weakest_eigenspace_mass_per_dim"] = 0.01
    assert "weakest_eigenspace_mass_per_dim" in plots.figures(rows, {"k": plots.Shape(8, 2, "sum_he2")}, spec)


def test_failed_runs_are_marked_and_the_baseline_stays():
    # a failed run keeps the numbers it has (a spectral baseline computed before it diverged)
    failed = tables.metrics_of({"failed": "stage 1 diverged", "spectral_principal_cosines": [0.5, 0.7]})
    assert failed["spectral_min_principal_cosine"] == 0.5 and failed["min_principal_cosine"] is None
    ok = {"principal_cosines": [0.8, 0.9], "spectral_principal_cosines": [0.6, 0.7], "subspace_mass": 0.7,
          "test_rel_mse": 0.5}
    results = {  # (alpha, seed): at alpha 2 both seeds fail (one with a baseline), at 4 one fails without
        (1, 0): ok, (1, 1): ok, (2, 0): {"failed": "x", "spectral_principal_cosines": [0.4, 0.5]},
        (2, 1): {"failed": "x"}, (4, 0): ok, (4, 1): {"failed": "x"}}
    rows = [{"data.alpha": a, "seed": seed, **tables.metrics_of(res), "status": res.get("failed", "ok"), "run": "k"}
            for (a, seed), res in results.items()]
    spec = plots.Figures("data.alpha", [1, 2, 4], [], n_seeds=2)
    fig = plots.figures(rows, {"k": plots.Shape(16, 2, "sum_he2")}, spec)["min_principal_cosine"]
    assert lines(fig, "spectral") == {"spectral:network": ([1, 2, 4], [0.6, 0.4, 0.6])}
    assert lines(fig, "network")["network:network"][0] == [1, 4]
    assert lines(fig, "failed")["failed:network"][0] == [2, 4]
    (ax,) = fig.axes
    assert [text.get_text() for text in ax.texts] == ["2/2", "1/2"]
    assert any("3 failed run(s)" in text.get_text() for text in ax.get_legend().get_texts())


def test_the_strongest_spectral_estimator_is_drawn():
    res = {"principal_cosines": [0.8, 0.9], "spectral_principal_cosines": [0.65, 0.7], "spectral_estimator": "uncentred, largest",
           "spectral_estimators": {"centred": {"magnitude": [0.6, 0.7]}, "uncentred": {"largest": [0.65, 0.7]}},
           "stage1_unbounded_fraction": 0.07}
    row = tables.metrics_of(res)
    assert row["spectral_uncentred_largest_min_principal_cosine"] == 0.65 and row["stage1_unbounded_fraction"] == 0.07
    assert row["spectral_centred_magnitude_min_principal_cosine"] == 0.6 and row["spectral_min_principal_cosine"] == 0.65
    rows = [{"data.alpha": a, **row, "status": "ok", "run": "k"} for a in (1, 2)]
    figs = plots.figures(rows, {"k": plots.Shape(16, 2, "sum_he2")}, plots.Figures("data.alpha", [1, 2], []))
    assert lines(figs["min_principal_cosine"], "spectral") == {"spectral:network": ([1, 2], [0.65, 0.65])}


def fake_results(cfg, seed):
    """A results dict with the fields the tables read and the cache checks (no training)."""
    return {"principal_cosines": [0.9, 0.8], "history": [{"principal_cosines": [0.9, 0.8]}], "spectral_principal_cosines": [0.7, 0.6],
            "spectral_estimator": "centred, magnitude", "spectral_estimators": {"centred": {"magnitude": [0.7, 0.6]}}, "subspace_mass": 0.75, "test_rel_mse": 0.5,
            "direction_mass": [0.4, 0.35], "stage2_loss": 0.1, "config": cfg.model_copy(update={"seed": seed}).model_dump()}


def test_a_batched_group_with_a_failing_replica_is_retrained_seed_by_seed(tmp_path, monkeypatch):
    calls = []

    def train_replicas(cfg, out, seeds, *args, **kwargs):
        calls.append(list(seeds))
        if 1 in seeds:  # the replica of seed 1 diverges, batched or alone
            raise RunFailed("stage 1 diverged at step 2: the first-layer weights or the loss are not finite")
        return [fake_results(cfg, seed) for seed in seeds]

    monkeypatch.setattr(runner, "train_replicas", train_replicas)
    path = write_sweep(tmp_path / "s.yaml", {"data.alpha": [2], "seed": [0, 1, 2]})
    result = invoke(path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert calls == [[0, 1, 2], [0], [1], [2]]
    warning = [line for line in result.output.splitlines() if line.startswith("Warning: sweep runs data.alpha=2")]
    assert warning == ["Warning: sweep runs data.alpha=2 (seeds 0, 1, 2 batched): stage 1 diverged at step 2: the"
                       " first-layer weights or the loss are not finite; training these seeds one by one to find which fail"]
    assert [row["status"] == "ok" for row in read_csv(tmp_path / "out" / "results.csv")] == [True, False, True]


def test_run_failures_are_divergence_and_vanishing():
    assert not execute.run_failure(MimError("stage 1 diverged by step 5 (a MimError, not a RunFailed)"))
    assert execute.run_failure(RunFailed("stage 1 diverged by step 5: the first-layer weights or the loss are not finite"))
    assert execute.run_failure(RunFailed("stage 1 vanished by step 3: the first-layer weights underflowed to ~0"))
    assert execute.run_failure(RunFailed("stage 2 diverged at step 2: the second-layer weights or the loss are not finite"))
    assert not execute.run_failure(MimError("could not write the checkpoint 'x' (No space left on device)"))
    assert not execute.run_failure(RuntimeError("stage 1 diverged"))


def test_other_errors_of_a_batched_group_stop_the_sweep(tmp_path, monkeypatch):
    def train_replicas(cfg, out, seeds, *args, **kwargs):
        raise MimError("cannot write the checkpoint")

    monkeypatch.setattr(runner, "train_replicas", train_replicas)
    path = write_sweep(tmp_path / "s.yaml", {"data.alpha": [2], "seed": [0, 1]})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1] == (
        "Error: sweep runs data.alpha=2 (seeds 0, 1 batched): cannot write the checkpoint; finished runs are kept")
    folders = [RunFolder(p) for p in (tmp_path / "out" / "runs").iterdir()]
    assert [(f.status()["status"], f.status()["message"]) for f in folders] == [("failed", "cannot write the checkpoint")] * 2
    monkeypatch.setattr(runner, "train_replicas", lambda cfg, out, seeds, *a, **k: [fake_results(cfg, s) for s in seeds])
    again = invoke(path, "--out", tmp_path / "out")  # not final: trained again
    assert again.exit_code == 0 and "2 trained" in again.output, again.output


def test_a_sweep_whose_runs_all_fail_exits_non_zero(tmp_path):
    path = write_sweep(tmp_path / "diverge.yaml", {"stage1.lr": [1e6]}, stage1={"steps": 40, "weight_decay": 0.0, "loss": "squared"},
                       model={"width": 32, "init_scale": 1.0})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "all 1 runs of the sweep failed" in result.output
