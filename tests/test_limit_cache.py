"""The Bayes-optimal limit cached on disk (issue 20): in the user's cache folder (MIM_CACHE_DIR, here
the test's own, tests/conftest.py) and in a sweep's folder, checked on reading; the sweep's limit
step on its default path (limit on), with a line per alpha and a stop within a second."""

import json
import os
import signal
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from mim_lightning import hookimpl
from mim_lightning.analysis import limit, limit_cache
from mim_lightning.cli import main
from mim_lightning.experiments import sweep as sweeps

from helpers import plugin_registered

ALPHAS = (0.4,)  # he2 below alpha_c = 1/2: Q decays to 0 in a few steps


@pytest.fixture
def computed(monkeypatch):
    """A fresh process's memory (no result kept in-process) and the list of the alphas that the
    state evolution was run for."""
    monkeypatch.setattr(limit, "_memory", {})
    calls = []
    real = limit.bayes_optimal_overlap

    def spy(fn, r, alphas, noise, **kwargs):
        calls.append(tuple(alphas))
        return real(fn, r, alphas, noise, **kwargs)

    monkeypatch.setattr(limit, "bayes_optimal_overlap", spy)
    return calls


def cached_file(folder) -> os.PathLike:
    (path,) = folder.glob("bayes-optimal-*.json")
    return path


def test_a_second_call_is_served_from_the_cache(tmp_path, computed, monkeypatch, capsys):
    lines = []
    first = limit.bayes_optimal("he2", 1, ALPHAS, 0.0, echo=lines.append)
    assert computed == [ALPHAS] and "computing" in lines[0] and lines[1].startswith("  alpha = 0.4: cosines")
    path = cached_file(tmp_path / "mim-cache")
    stored = json.loads(path.read_text())
    assert stored["key"]["link"] == "he2" and stored["key"]["alphas"] == [0.4] and stored["key"]["noise"] == 0.0
    assert stored["key"]["version"] and stored["key"]["method"]["tol"] == 1e-6

    monkeypatch.setattr(limit, "_memory", {})  # another process
    again = limit.bayes_optimal("he2", 1, ALPHAS, 0.0, echo=lines.append)
    assert computed == [ALPHAS] and again == first
    assert lines[-1].endswith(f"from the cache {path}")
    limit.bayes_optimal("he2", 1, ALPHAS, 0.01)  # another noise: another computation
    limit.bayes_optimal("he2", 1, (0.4, 0.45), 0.0)  # other alphas too
    assert computed == [ALPHAS, ALPHAS, (0.4, 0.45)]
    assert capsys.readouterr().err == ""  # no warning


def edited(text, part, name, value):
    """The cache file's text with ``stored[part][name] = value`` (its digest left as it was)."""
    stored = json.loads(text)
    stored[part][name] = value
    return json.dumps(stored)


@pytest.mark.parametrize("damage, problem", [
    (lambda text: text[: len(text) // 2], "it is not JSON"),
    (lambda text: edited(text, "result", "cosines", [[0.5]]), "its digest does not match"),
    (lambda text: edited(text, "key", "noise", 0.5), "it holds another computation"),
    (lambda text: "[]", "it is not a mim cache file"),
])
def test_a_damaged_or_foreign_file_is_ignored_with_a_warning(tmp_path, computed, monkeypatch, capsys, damage, problem):
    first = limit.bayes_optimal("he2", 1, ALPHAS, 0.0)
    path = cached_file(tmp_path / "mim-cache")
    good = path.read_text()
    path.write_text(damage(good))
    monkeypatch.setattr(limit, "_memory", {})
    assert limit.bayes_optimal("he2", 1, ALPHAS, 0.0) == first
    assert len(computed) == 2  # computed again, not trusted
    err = capsys.readouterr().err
    assert err.startswith(f"Warning: ignoring the cached Bayes-optimal limit '{path}': {problem}") and err.count("\n") == 1
    assert json.loads(path.read_text()) == json.loads(good)  # replaced by a valid file


def test_a_result_of_the_wrong_shape_is_refused():
    key = limit.cache_key("he2", 1, [0.4, 0.8], 0.0)
    row = {"alpha": [0.4, 0.8], "Q": [[[0.1]], [[0.2]]], "eigenvalues": [[0.1], [0.2]], "cosines": [[0.3], [0.4]],
           "iterations": [3, 4], "converged": [True, True], "error": [0.0, 0.0], "z_mse": [0.9, 0.8], "label_mse": [1, 1]}
    assert limit_cache.shape_problem(row, key) is None
    assert "alphas" in limit_cache.shape_problem({**row, "alpha": [0.4, 0.9]}, key)
    assert "symmetric 1 x 1" in limit_cache.shape_problem({**row, "Q": [[[0.1, 0.0]], [[0.2]]]}, key)
    assert "outside [0, 1]" in limit_cache.shape_problem({**row, "cosines": [[0.3], [1.5]]}, key)
    assert "per-alpha lists" in limit_cache.shape_problem({**row, "error": None}, key)


def test_the_key_names_the_links_code(monkeypatch):
    """A built-in link is keyed by mim-lightning's version, a plugin's by its distribution's; a
    link whose code has no version (a plugin registered in this process) is not stored on disk."""
    key = limit.cache_key("he2", 1, ALPHAS, 0.0)
    assert key["distribution"] == "mim-lightning" and key["plugin"] == "mim_lightning.plugins.builtins.links"
    plugin = SimpleNamespace(register_links=hookimpl(lambda register: register("square_link", lambda z: z[..., 0] ** 2)))
    with plugin_registered(plugin, "local"):
        assert limit.cache_key("square_link", 1, ALPHAS, 0.0) is None
        info = limit.get_registry().plugins["local"]
        monkeypatch.setattr(info, "distribution", "mim-square")
        monkeypatch.setattr(info, "version", "1.0")
        one = limit.cache_key("square_link", 1, ALPHAS, 0.0)
        monkeypatch.setattr(info, "version", "1.1")
        other = limit.cache_key("square_link", 1, ALPHAS, 0.0)
    assert (one["distribution"], one["version"], other["version"]) == ("mim-square", "1.0", "1.1")
    assert limit_cache.file_name(one) != limit_cache.file_name(other)


def test_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(limit_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert limit_cache.user_folder() == tmp_path / "xdg" / "mim-lightning"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert limit_cache.user_folder() == tmp_path / "home" / ".cache" / "mim-lightning"


def write_sweep(tmp_path):
    path = tmp_path / "alpha.yaml"
    path.write_text(yaml.safe_dump({"data": {"d": 32, "r": 1, "link": "he2", "alpha2": 4, "n_test": 256},
                                    "model": {"width": 16}, "stage1": {"steps": 3},
                                    "sweep": {"data.alpha": [0.4, 0.45], "seed": [0]}}))
    return path


def test_the_sweeps_default_path_draws_the_limit_and_caches_it(tmp_path, computed, monkeypatch):
    """mim sweep with the limit on (as a user runs it): a line per alpha, the curve stored in the
    sweep folder and the user's cache; the same command again computes nothing."""
    monkeypatch.delenv(sweeps.LIMIT_ENV)
    path, out = write_sweep(tmp_path), tmp_path / "out"
    done = CliRunner().invoke(main, ["sweep", str(path), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert computed == [(0.4, 0.45)]
    assert "Bayes-optimal limit of he2 (r = 1, noise 0) at 2 alpha(s): computing" in done.stderr
    assert "  alpha = 0.45: cosines" in done.stderr
    stored = cached_file(out / sweeps.LIMIT_FOLDER)
    assert stored.read_text() == cached_file(tmp_path / "mim-cache").read_text()

    monkeypatch.setattr(limit, "_memory", {})  # another process
    (tmp_path / "mim-cache" / stored.name).unlink()  # the sweep folder's copy serves, and is copied back
    again = CliRunner().invoke(main, ["sweep", str(path), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert computed == [(0.4, 0.45)]
    assert f"from the cache {stored}" in again.stderr
    assert (tmp_path / "mim-cache" / stored.name).read_text() == stored.read_text()


def test_a_signal_during_the_limit_step_stops_it(tmp_path, monkeypatch):
    """SIGTERM while the limit is computed: the state evolution stops at its next check and the
    message says that the runs are done (not to continue them); nothing is cached."""
    monkeypatch.delenv(sweeps.LIMIT_ENV)
    monkeypatch.setattr(limit, "_memory", {})
    real, checks = limit.bayes_optimal_overlap, []

    def signalled(fn, r, alphas, noise, stop, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # caught by mim sweep's StopRequest

        def counted():
            checks.append(1)
            stop()

        return real(fn, r, alphas, noise, stop=counted, **kwargs)

    monkeypatch.setattr(limit, "bayes_optimal_overlap", signalled)
    out = tmp_path / "out"
    done = CliRunner().invoke(main, ["sweep", str(write_sweep(tmp_path)), "--out", str(out)])
    assert done.exit_code == 143, done.output
    assert checks == [1]  # the first check acts
    assert ("Interrupted by SIGTERM while computing the Bayes-optimal limit for the plots; the runs are done and"
            " results.csv is written: run the same command again to draw the plots") in done.stderr
    assert (out / "results.csv").is_file() and not (out / sweeps.LIMIT_FOLDER).exists()
    assert not (tmp_path / "mim-cache").exists()


def test_theory_prints_a_line_per_alpha_and_stops_on_a_signal(monkeypatch):
    monkeypatch.setattr(limit, "_memory", {})
    real = limit.bayes_optimal_overlap

    def signalled_after_one(fn, r, alphas, noise, progress, **kwargs):
        def done(row):
            progress(row)
            os.kill(os.getpid(), signal.SIGINT)

        return real(fn, r, alphas, noise, progress=done, **kwargs)

    monkeypatch.setattr(limit, "bayes_optimal_overlap", signalled_after_one)
    result = CliRunner().invoke(main, ["theory", "--link", "he2", "--r", "1", "--alphas", "0.4,0.45", "--noise", "0"])
    assert result.exit_code == 130, result.output
    assert "  alpha = 0.4: cosines 0.000 (error" in result.stderr and "alpha = 0.45" not in result.stderr
    assert "Interrupted by SIGINT while computing the Bayes-optimal limit" in result.stderr
