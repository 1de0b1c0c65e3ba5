"""A sweep in a real TensorBoard server: one run per seed with a readable name, the described tags,
the reference series, the custom-scalars layout, typed HParams sessions and the sweep's figures,
read back through TensorBoard's HTTP data API."""

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
from mim_lightning.experiments.sweep import run_sweep

pytestmark = pytest.mark.slow  # a server subprocess

BASE = {"data": {"d": 32, "alpha2": 8, "n_test": 512}, "model": {"width": 32}, "stage1": {"steps": 3}}
NAMES = ["data.alpha=4,seed=0", "data.alpha=4,seed=1", "data.alpha=8,seed=0", "data.alpha=8,seed=1"]
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


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2 x 2 sweep (data.alpha x seed) at d = 32: (its folder, {run name: results dict})."""
    root = tmp_path_factory.mktemp("tensorboard")
    path = root / "tb.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sweep": {"data.alpha": [4, 8], "seed": [0, 1]}}, sort_keys=False))
    done = run_sweep(path, out=root / "out", echo=lambda *a, **k: None)
    results = {f"data.alpha={run.values['data.alpha']},seed={run.values['seed']}": done["results"][run.key]
               for run in done["sweep"].runs}
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


def test_one_readable_run_per_seed(server):
    assert sorted(server.get("/data/runs")) == sorted(RUNS | {SUMMARY})


def test_every_stage1_tag_is_there_and_described(server):
    tags = server.get("/data/plugin/scalars/tags")
    expected = {"stage1/principal_cosine_1", "stage1/principal_cosine_2", "stage1/principal_cosine_min_spectral",
                "stage1/principal_cosine_min_chance", "stage1/subspace_mass", "stage1/subspace_mass_chance",
                "stage1/direction_mass_1", "stage1/direction_mass_2", "stage1/direction_mass_chance",
                "stage1/log10_weight_norm", "stage1/weight_growth", "stage1/loss", "stage1/loss_change", "stage2/loss",
                "final/min_principal_cosine", "final/subspace_mass", "final/test_rel_mse",
                "final/spectral_min_principal_cosine"}
    for run in RUNS:
        assert set(tags[run]) == expected, run
        for tag, info in tags[run].items():
            assert len(info["description"]) > 40, (run, tag)  # every tag says what it shows


def values(server, run, tag):
    return [(step, value) for _, step, value in server.get("/data/plugin/scalars/scalars", run=run, tag=tag)]


def test_series_are_per_replica_and_the_references_are_constant(server, sweep):
    _, results = sweep
    chance = median_min_cosine(32, 2)
    for name in NAMES:
        run, mine = f"tensorboard/{name}", results[name]
        assert [s for s, _ in values(server, run, "stage1/subspace_mass")] == [0, 1, 2, 3]
        assert values(server, run, "stage1/subspace_mass")[-1][1] == pytest.approx(mine["subspace_mass"], rel=1e-6)
        cosines = [values(server, run, f"stage1/principal_cosine_{k}")[-1][1] for k in (1, 2)]
        assert cosines == pytest.approx(mine["principal_cosines"], rel=1e-6)
        assert values(server, run, "stage1/principal_cosine_min_chance") == [(0, pytest.approx(chance)),
                                                                              (3, pytest.approx(chance))]
        spectral = min(mine["spectral_principal_cosines"])
        assert values(server, run, "stage1/principal_cosine_min_spectral") == [(0, pytest.approx(spectral)),
                                                                                (3, pytest.approx(spectral))]
        assert [v for _, v in values(server, run, "stage1/subspace_mass_chance")] == pytest.approx([2 / 32] * 2)
        assert [v for _, v in values(server, run, "final/test_rel_mse")] == pytest.approx([mine["test_rel_mse"]] * 2)
        assert values(server, run, "stage1/loss_change")[0] == (1, 0.0)
        growth = [v for _, v in values(server, run, "stage1/weight_growth")]
        norms = [v for _, v in values(server, run, "stage1/log10_weight_norm")]
        assert growth == pytest.approx([10 ** (b - a) for a, b in zip(norms, norms[1:])], rel=1e-4)
    # the replicas of a batched group are different runs
    assert values(server, "tensorboard/data.alpha=4,seed=0", "stage1/subspace_mass") != \
        values(server, "tensorboard/data.alpha=4,seed=1", "stage1/subspace_mass")


def test_custom_scalars_draw_the_cosines_with_their_references(server):
    layout = server.get("/data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart["multiline"]["tag"] for category in layout["category"] for chart in category["chart"]}
    cosines = charts["principal cosines (network, spectral baseline, chance)"]
    assert cosines == [r"^stage1/principal_cosine_\d+$", "^stage1/principal_cosine_min_spectral$",
                       "^stage1/principal_cosine_min_chance$"]
    assert any("mass" in title for title in charts) and any("loss" in title for title in charts)


def test_hparams_one_typed_session_per_run_swept_keys_first(server, sweep):
    _, results = sweep
    experiment = server.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    first = [info["name"] for info in experiment["hparamInfos"]][:9]
    assert set(first) == {"data.alpha", "seed", "data.d", "data.r", "data.link", "stage1.loss", "stage2.loss",
                          "model.width", "stage1.steps"}
    assert infos["data.alpha"]["domainDiscrete"] == [4.0, 8.0] and infos["seed"]["domainDiscrete"] == [0.0, 1.0]
    assert infos["checks.strict"]["type"] == "DATA_TYPE_BOOL" and infos["data.link"]["type"] == "DATA_TYPE_STRING"
    assert infos["trainer.devices"]["type"] == "DATA_TYPE_STRING"  # int | str
    assert [m["name"]["tag"] for m in experiment["metricInfos"]][:3] == [
        "final/min_principal_cosine", "final/subspace_mass", "final/test_rel_mse"]

    request = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
               "colParams": [{"hparam": "data.alpha"}, {"hparam": "seed"},
                             {"metric": {"tag": "final/test_rel_mse", "group": ""}}]}
    groups = server.post("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert sorted(group["name"] for group in groups) == NAMES  # trial ids: the run names
    for group in groups:
        (session,) = group["sessions"]
        assert session["name"] == f"tensorboard/{group['name']}" and session["status"] == "STATUS_SUCCESS"
        hparams, mine = group["hparams"], results[group["name"]]
        assert hparams["stage1.center"] is True and hparams["stage1.joint"] is False  # booleans, not 0.0
        assert hparams["data.link"] == "sum_he2" and hparams["data.alpha"] == mine["config"]["data"]["alpha"]
        assert hparams["seed"] == mine["config"]["seed"]
        metric = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metric["final/test_rel_mse"] == pytest.approx(mine["test_rel_mse"], rel=1e-6)


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
