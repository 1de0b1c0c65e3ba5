"""`mim sweep`: the grid, results.csv, plots, content-keyed caching, batched seed groups, bad files."""

import csv
import io
import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from mim_lightning.training import run as runner
from mim_lightning.experiments import sweep as sweeps
from mim_lightning.cli import main
from mim_lightning.config import load_config

from helpers import TINY

BASE = {"data": {"d": 32, "alpha2": 8, "n_test": 512}, "model": {"width": 32}, "stage1": {"steps": 3}}
COLUMNS = ["data.alpha", "seed", "min_principal_cosine", "mean_principal_cosine", "subspace_mass", "test_rel_mse",
           "spectral_min_principal_cosine", "spectral_mean_principal_cosine", "spectral_subspace_mass",
           "spectral_largest_min_principal_cosine", "weakest_direction_mass", "stage2_loss", "status", "run"]
PLOTS = ["min_principal_cosine.png", "subspace_mass.png", "test_rel_mse.png", "weakest_direction_mass.png"]


def write_sweep(path, grid, **base):
    path.write_text(yaml.safe_dump({**BASE, **base, "sweep": grid}, sort_keys=False))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)], catch_exceptions=False)


class Spy:
    """Counts the runner's training calls (and the seeds of each), then calls through."""

    def __init__(self, monkeypatch):
        self.calls = []
        train, replicas = runner.train, runner.train_replicas

        def spy_train(cfg, out, *args, **kwargs):
            self.calls.append([cfg.seed])
            return train(cfg, out, *args, **kwargs)

        def spy_replicas(cfg, out, seeds, *args, **kwargs):
            self.calls.append(list(seeds))
            return replicas(cfg, out, seeds, *args, **kwargs)

        monkeypatch.setattr(runner, "train", spy_train)
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
        assert results["config"]["seed"] == int(row["seed"])
        assert results["config"]["data"]["alpha"] == float(row["data.alpha"])
        assert yaml.safe_load((folder / "config.yaml").read_text()) == results["config"]
        assert row["run"] == sweeps.run_key(load_config(folder / "config.yaml"))
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "means over seeds" in output and "4/4 runs" in output


def test_rerun_trains_nothing(swept, monkeypatch):
    out, _, _ = swept
    before = mtimes(out)
    spy = Spy(monkeypatch)
    result = invoke(out.parent / "alpha.yaml", "--out", out)
    assert result.exit_code == 0, result.output
    assert spy.calls == []
    assert mtimes(out) == before and len(before) == 4
    assert "4/4 runs (4 cached)" in result.output
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
        alone = runner.train(cfg, tmp_path / row["seed"])
        for field in ("principal_cosines", "spectral_principal_cosines", "spectral_principal_cosines_largest"):
            assert alone[field] == pytest.approx(batched[field], abs=1e-5)
        for field in ("subspace_mass", "test_rel_mse", "stage2_loss"):
            assert alone[field] == pytest.approx(batched[field], abs=1e-5)
        assert alone["config"] == batched["config"]


def test_lbfgs_groups_are_trained_seed_by_seed():
    assert sweeps.batchable(load_config(None, TINY))
    assert sweeps.batchable(load_config(None, [*TINY, "stage2.loss=huber", "stage2.solver=gd"]))
    assert not sweeps.batchable(load_config(None, [*TINY, "stage2.loss=huber"]))  # auto: lbfgs alone
    assert not sweeps.batchable(load_config(None, [*TINY, "stage2.loss=huber", "stage2.solver=lbfgs"]))


def test_grid_order_keys_and_overrides(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"data": {"alpha": [1, 2]}, "model.width": [8, 16], "seed": [3]})
    sweep = sweeps.load_sweep(path, ["data.noise=0.5", "sweep.data.alpha=[4, 8]"])
    assert sweep.keys == ["data.alpha", "model.width", "seed"]
    assert [tuple(r.values.values()) for r in sweep.runs] == [(4, 8, 3), (4, 16, 3), (8, 8, 3), (8, 16, 3)]
    assert all(r.cfg.data.noise == 0.5 and r.cfg.data.d == 32 for r in sweep.runs)
    assert len({r.key for r in sweep.runs}) == 4
    groups = sweeps.seed_groups(sweeps.load_sweep(write_sweep(tmp_path / "t.yaml", {"data.alpha": [1, 2], "seed": [0, 1, 2]})).runs)
    assert [[r.cfg.seed for r in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]


def test_alpha_c_marks_the_alpha_plots(swept):
    from mim_lightning.analysis.theory import alpha_c

    out, _, _ = swept
    sweep = sweeps.load_sweep(out.parent / "alpha.yaml")
    rows = [{"_link": "sum_he2", "_r": 2}]
    assert sweeps.thresholds(sweep, rows) == {("sum_he2", 2): alpha_c("sum_he2", 2)}
    sweep.axes = {"model.width": [8, 16], **sweep.axes}  # x key no longer data.alpha: no line
    assert sweeps.thresholds(sweep, rows) is None


def test_run_key_is_a_content_hash():
    a = load_config(None, [*TINY, "data.alpha=2"])
    assert sweeps.run_key(a) == sweeps.run_key(load_config(None, [*TINY, "data.alpha=2.0"]))
    assert sweeps.run_key(a) != sweeps.run_key(load_config(None, [*TINY, "data.alpha=2", "seed=1"]))
    assert len(sweeps.run_key(a)) == 16 and int(sweeps.run_key(a), 16) >= 0


def test_progress_counts_cached_runs_and_estimates_the_rest():
    stream = io.StringIO()
    progress = sweeps.Progress(5, stream)
    progress.skip(3, 2)
    progress.finish(1, 10.0, 1)
    progress.finish(1, 10.0, 0)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("3/5 runs (3 cached)  eta ?")
    assert lines[1].endswith("4/5 runs (3 cached)  eta 0:00:10")
    assert lines[2].endswith("5/5 runs (3 cached)  done")


@pytest.mark.parametrize("grid, message", [
    ({"data.alpah": [1, 2]}, "sweep key 'data.alpah' is not a config key (did you mean 'data.alpha'?)"),
    ({"data.alpha": 4}, "sweep key 'data.alpha' must map to a list of values"),
    ({"data.alpha": []}, "sweep key 'data.alpha' has an empty list of values"),
    ({"data.alpha": [1, -2]}, "sweep data.alpha = -2: config key 'data.alpha': Input should be greater than 0"),
    ({"data.alpha": [1, 1]}, "sweep key 'data.alpha' lists the value 1 twice"),
    ({"data.d": [1, 32], "data.r": [1, 2]}, "sweep run data.d=1, data.r=2: invalid config: data.r = 2 must be <= data.d = 1"),
    ({"data.link": ["sum_he2", "nope"]}, "sweep run data.link='nope': data.link: unknown link 'nope'"),
    ([1, 2], "'sweep' must be a non-empty mapping"),
    ({"data": 3}, "sweep key 'data' is a section, not a config key"),
    ({"variant": [{"stage1.joint": True}]}, "sweep variant {'stage1.joint': True} needs a 'name'"),
    ({"variant": [{"name": "a"}, {"name": "a"}]}, "sweep variant name 'a' is used twice"),
    ({"variant": [{"name": "x", "stage1.jiont": True}]}, "sweep variant 'x': 'stage1.jiont' is not a config key"),
    ({"variant": [{"name": "x", "data.d": -1}]}, "sweep variant = 'x': config key 'data.d'"),
    ({"variant": "joint"}, "sweep 'variant' must be a non-empty list of mappings"),
])
def test_bad_sweep_files_get_one_line(tmp_path, grid, message):
    path = write_sweep(tmp_path / "bad.yaml", grid)
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_a_file_without_sweep_is_refused(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(BASE))
    result = CliRunner().invoke(main, ["sweep", str(path)])
    assert result.exit_code != 0 and "has no 'sweep:' mapping" in result.output


def test_variants_are_named_bundles_of_overrides(tmp_path):
    grid = {"variant": [{"name": "layer-wise"}, {"name": "no-rescale", "stage2": {"rescale": False}},
                        {"name": "joint", "stage1.joint": True, "stage1.lr": 0.5}],
            "data.alpha": [8], "seed": [0]}
    path = write_sweep(tmp_path / "ablations.yaml", grid)
    result = invoke(path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [row["variant"] for row in rows] == ["layer-wise", "no-rescale", "joint"]
    configs = {row["variant"]: yaml.safe_load((tmp_path / "out" / "runs" / row["run"] / "config.yaml").read_text())
               for row in rows}
    assert configs["no-rescale"]["stage2"]["rescale"] is False and configs["layer-wise"]["stage2"]["rescale"] is True
    assert configs["joint"]["stage1"]["joint"] is True and configs["joint"]["stage1"]["lr"] == 0.5
    assert rows[2]["stage2_loss"] == ""  # the joint ablation has no stage 2
    written = yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())["sweep"]
    assert written["variant"][1] == {"name": "no-rescale", "stage2.rescale": False}


def test_a_run_that_fails_is_recorded_and_the_sweep_goes_on(tmp_path):
    grid = {"stage1.lr": [0.001, 1e6], "seed": [0]}
    path = write_sweep(tmp_path / "diverge.yaml", grid, stage1={"steps": 5, "weight_decay": 0.0},
                       model={"width": 32, "init_scale": 1.0})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: sweep run stage1.lr=1000000.0")]
    assert len(warnings) == 1 and "stage 1 diverged at step" in warnings[0]
    assert "1 of 2 runs failed" in result.output
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [row["status"] == "ok" for row in rows] == [True, False]
    assert rows[1]["min_principal_cosine"] == "" and "diverged" in rows[1]["status"]
    assert len(list((tmp_path / "out" / "runs").glob("*/results.json"))) == 1
    again = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert "Warning: sweep run" not in again.output and "2/2 runs (2 cached)" in again.output  # failures cached


def test_a_sweep_whose_runs_all_fail_exits_non_zero(tmp_path):
    path = write_sweep(tmp_path / "diverge.yaml", {"stage1.lr": [1e6]}, stage1={"steps": 5, "weight_decay": 0.0},
                       model={"width": 32, "init_scale": 1.0})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "all 1 runs of the sweep failed" in result.output
