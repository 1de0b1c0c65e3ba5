"""A sweep in a real TensorBoard server: one run per seed with a readable name, the described tags,
the reference series, the custom-scalars layout, typed HParams sessions and the sweep's figures,
read back through TensorBoard's HTTP data API; the run names of sweeps (numbered, kept across grids,
distinct between sweeps)."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from mim_lightning.core.chance import median_min_cosine
from mim_lightning.experiments import board
from mim_lightning.experiments.grid import Run, Sweep
from mim_lightning.experiments.sweep import run_sweep
from mim_lightning.training.tensorboard import LAYOUT, describe

BASE = {"data": {"d": 32, "alpha2": 8, "n_test": 512}, "model": {"width": 32}, "stage1": {"steps": 3}}
NAMES = ["out-001_data.alpha=4,seed=0", "out-002_data.alpha=4,seed=1", "out-003_data.alpha=8,seed=0",
         "out-004_data.alpha=8,seed=1"]
RUNS = {f"tensorboard/{name}" for name in NAMES}
SUMMARY = "tensorboard/sweep"
STARTUP_SECONDS = 25


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def raw(self, path: str, **query) -> bytes:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()

    def get(self, path: str, **query):
        return json.loads(self.raw(path, **query))

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.base + path, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def fake_runs(values: list[dict]) -> Sweep:
    """A sweep of runs with these swept values (keys from the values; no configs: naming needs none)."""
    runs = [Run(values=v, cfg=None, key=f"{i:016x}") for i, v in enumerate(values)]
    return Sweep(base=None, axes={k: [] for k in values[0]}, runs=runs)


def test_run_names_are_numbered_in_grid_order_and_kept(tmp_path):
    first = fake_runs([{"data.alpha": a} for a in (0.5, 1, 2, 16)])
    names = board.name_runs(first, tmp_path / "sweep_alpha")
    assert list(names.values()) == ["sweep_alpha-001_data.alpha=0.5", "sweep_alpha-002_data.alpha=1",
                                    "sweep_alpha-003_data.alpha=2", "sweep_alpha-004_data.alpha=16"]
    assert sorted(names.values()) == list(names.values())   # string order is grid order
    assert board.run_board(tmp_path / "sweep_alpha", first.runs[3]).name == "sweep_alpha-004_data.alpha=16"
    # a grid that drops a run and adds one: named runs keep their names, the new one comes after
    second = fake_runs([{"data.alpha": a} for a in (0.5, 1, 2, 16, 32)])
    second.runs = second.runs[1:]
    again = board.name_runs(second, tmp_path / "sweep_alpha")
    assert again[second.runs[0].key] == "sweep_alpha-002_data.alpha=1"
    assert again[second.runs[-1].key] == "sweep_alpha-005_data.alpha=32"
    # another sweep folder under the same log folder: other names (HParams trial ids do not collide)
    other = board.name_runs(first, tmp_path / "sweep_beta")
    assert set(other.values()).isdisjoint(names.values())


def test_every_layout_chart_and_tag_pattern_is_described():
    for charts in LAYOUT.values():
        for tags in charts.values():
            for pattern in tags:
                example = pattern.strip("^$").replace(r"\d+", "2")
                assert len(describe(example)) > 40, pattern


slow = pytest.mark.slow   # the tests below start a tensorboard server subprocess


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2 x 2 sweep (data.alpha x seed) at d = 32: (its folder, {run name: results dict})."""
    root = tmp_path_factory.mktemp("tensorboard")
    path = root / "tb.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sweep": {"data.alpha": [4, 8], "seed": [0, 1]}}, sort_keys=False))
    done = run_sweep(path, out=root / "out", echo=lambda *a, **k: None)
    results = {name: done["results"][run.key] for name, run in zip(NAMES, done["sweep"].runs, strict=True)}
    return root / "out", results


@pytest.fixture(scope="module")
def server(sweep):
    """``tensorboard --logdir DIR`` on a free port of 127.0.0.1, until it lists the sweep's runs."""
    out, _ = sweep
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(out), "--host", "127.0.0.1",
                                "--port", str(port), "--reload_interval", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tb, answered, runs = Server(port), False, []
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            try:
                runs = tb.get("/data/runs")
                answered = True
                if set(runs) >= RUNS | {SUMMARY}:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        if not answered:
            process.kill()
            error = process.communicate(timeout=10)[1].decode(errors="replace").strip().splitlines()[-3:]
            pytest.skip(f"the tensorboard server did not start: {' / '.join(error) or 'no answer'}")
        assert set(runs) >= RUNS | {SUMMARY}, f"TensorBoard lists {runs} after {STARTUP_SECONDS} s"
        yield tb
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@slow
def test_one_readable_run_per_seed(server):
    assert sorted(server.get("/data/runs")) == sorted(RUNS | {SUMMARY})


@slow
def test_every_stage1_tag_is_there_and_described(server):
    tags = server.get("/data/plugin/scalars/tags")
    expected = {"stage1/principal_cosine_1", "stage1/principal_cosine_2", "stage1/principal_cosine_min",
                "stage1_reference/principal_cosine_min_spectral", "stage1_reference/principal_cosine_min_chance",
                "stage1/subspace_mass", "stage1_reference/subspace_mass_chance", "stage1/direction_mass_1",
                "stage1/direction_mass_2", "stage1_reference/direction_mass_chance", "stage1/log10_weight_norm",
                "stage1/weight_growth", "stage1/loss", "stage1/loss_change", "stage2/loss",
                "summary/min_principal_cosine", "summary/subspace_mass", "summary/test_rel_mse",
                "summary/spectral_min_principal_cosine"}
    for run in RUNS:
        assert set(tags[run]) == expected, run
        for tag, info in tags[run].items():
            assert len(info["description"]) > 40, (run, tag)  # every tag says what it shows


def values(server, run, tag):
    return [(step, value) for _, step, value in server.get("/data/plugin/scalars/scalars", run=run, tag=tag)]


@slow
def test_series_are_per_replica_and_the_references_are_constant(server, sweep):
    _, results = sweep
    chance = median_min_cosine(32, 2)
    for name in NAMES:
        run, mine = f"tensorboard/{name}", results[name]
        assert [s for s, _ in values(server, run, "stage1/subspace_mass")] == [0, 1, 2, 3]
        assert values(server, run, "stage1/subspace_mass")[-1][1] == pytest.approx(mine["subspace_mass"], rel=1e-6)
        cosines = [values(server, run, f"stage1/principal_cosine_{k}")[-1][1] for k in (1, 2)]
        assert cosines == pytest.approx(mine["principal_cosines"], rel=1e-6)
        assert [v for _, v in values(server, run, "stage1/principal_cosine_min")] == pytest.approx(
            [v for _, v in values(server, run, "stage1/principal_cosine_2")])
        # the references: lines from step 0 to T1
        assert values(server, run, "stage1_reference/principal_cosine_min_chance") == [(0, pytest.approx(chance)),
                                                                                        (3, pytest.approx(chance))]
        spectral = min(mine["spectral_principal_cosines"])
        assert values(server, run, "stage1_reference/principal_cosine_min_spectral") == [
            (0, pytest.approx(spectral)), (3, pytest.approx(spectral))]
        assert [v for _, v in values(server, run, "stage1_reference/subspace_mass_chance")] == pytest.approx([2 / 32] * 2)
        # the final metrics: one point at T1
        assert values(server, run, "summary/test_rel_mse") == [(3, pytest.approx(mine["test_rel_mse"], rel=1e-6))]
        assert values(server, run, "stage1/loss_change")[0] == (1, 0.0)
        growth = [v for _, v in values(server, run, "stage1/weight_growth")]
        norms = [v for _, v in values(server, run, "stage1/log10_weight_norm")]
        assert growth == pytest.approx([10 ** (b - a) for a, b in zip(norms, norms[1:])], rel=1e-4)
    # the replicas of a batched group are different runs
    assert values(server, f"tensorboard/{NAMES[0]}", "stage1/subspace_mass") != \
        values(server, f"tensorboard/{NAMES[1]}", "stage1/subspace_mass")


@slow
def test_custom_scalars_draw_each_quantity_with_its_references(server):
    layout = server.get("/data/plugin/custom_scalars/layout")
    assert [category["title"] for category in layout["category"]][0] == "stage 1: recovery of span U"
    charts = {chart["title"]: chart["multiline"]["tag"] for category in layout["category"] for chart in category["chart"]}
    assert list(charts)[0] == "smallest principal cosine: network, spectral baseline, chance"
    assert charts["smallest principal cosine: network, spectral baseline, chance"] == [
        "^stage1/principal_cosine_min$", "^stage1_reference/principal_cosine_min_spectral$",
        "^stage1_reference/principal_cosine_min_chance$"]
    assert charts["subspace mass: network, chance r/d"] == ["^stage1/subspace_mass$",
                                                            "^stage1_reference/subspace_mass_chance$"]
    assert not any("summary/min" in tag for tags in charts.values() for tag in tags)   # single points: HParams


@slow
def test_hparams_one_typed_session_per_run_swept_keys_first(server, sweep):
    _, results = sweep
    experiment = server.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    first = [info["name"] for info in experiment["hparamInfos"]][:9]
    assert set(first) == {"data.alpha", "seed", "data.d", "data.r", "data.link", "stage1.loss", "stage2.loss",
                          "model.width", "stage1.steps"}
    assert infos["data.alpha"]["domainDiscrete"] == [4.0, 8.0] and infos["seed"]["domainDiscrete"] == ["0", "1"]
    assert infos["data.d"]["type"] == "DATA_TYPE_STRING"   # integers as their digits (a number would read 32.000)
    assert infos["checks.strict"]["type"] == "DATA_TYPE_BOOL" and infos["data.link"]["type"] == "DATA_TYPE_STRING"
    assert infos["trainer.devices"]["type"] == "DATA_TYPE_STRING"  # int | str
    assert [m["name"]["tag"] for m in experiment["metricInfos"]][:3] == [
        "summary/min_principal_cosine", "summary/subspace_mass", "summary/test_rel_mse"]

    request = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
               "colParams": [{"hparam": "data.alpha"}, {"hparam": "seed"},
                             {"metric": {"tag": "summary/test_rel_mse", "group": ""}}]}
    groups = server.post("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert [group["name"] for group in groups] == NAMES  # trial ids: the run names, in grid order
    for group in groups:
        (session,) = group["sessions"]
        assert session["name"] == f"tensorboard/{group['name']}" and session["status"] == "STATUS_SUCCESS"
        hparams, mine = group["hparams"], results[group["name"]]
        assert hparams["stage1.center"] is True and hparams["stage1.joint"] is False  # booleans, not 0.0
        assert hparams["data.link"] == "sum_he2" and hparams["data.alpha"] == mine["config"]["data"]["alpha"]
        assert hparams["seed"] == str(mine["config"]["seed"]) and hparams["data.d"] == "32"
        metric = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metric["summary/test_rel_mse"] == pytest.approx(mine["test_rel_mse"], rel=1e-6)


@slow
def test_the_sweep_figures_are_images(server):
    tags = server.get("/data/plugin/images/tags")
    assert set(tags) == {SUMMARY}
    assert set(tags[SUMMARY]) == {"sweep/min_principal_cosine", "sweep/subspace_mass", "sweep/test_rel_mse"}
    (image,) = server.get("/data/plugin/images/images", run=SUMMARY, tag="sweep/min_principal_cosine")
    png = server.raw("/data/plugin/images/individualImage?" + image["query"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    text = server.get("/data/plugin/text/tags")
    assert all(text[run] == ["assumptions/text_summary"] for run in RUNS)
    assert set(text[SUMMARY]) == {"sweep/config/text_summary", "sweep/results/text_summary"}
