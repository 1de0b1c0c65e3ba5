"""`mim check`, `mim theory` and the train-time assumption checks, through click's CliRunner."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mim_lightning import hookimpl
from mim_lightning.cli import main

from helpers import TINY, plugin_registered

IN_THEORY = ["data.link=z1z2", "stage1.loss=huber", "model.activation=logcosh"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_check_without_options_checks_the_defaults():
    result = run("check", "--json")
    assert result.exit_code == 0, result.output  # the defaults are inside the theory
    checks = json.loads(result.stdout)["checks"]
    assert [(c["assumption"], c["component"], c["holds"]) for c in checks] == [
        (1, "sum_he2", True), (2, "logcosh", True), (3, "huber", True), (5, "sum_he2+huber", True)]
    assert all(isinstance(c["message"], str) and c["message"] for c in checks)


def test_check_in_theory_components_exits_0_with_a_table():
    result = run("check", "--link", "z1z2", "--loss", "huber", "--activation", "logcosh", "--r", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["assumption", "component", "holds", "numbers"]
    assert [line.split()[:3] for line in lines[1:5]] == [
        ["1", "z1z2", "yes"], ["2", "logcosh", "yes"], ["3", "huber", "yes"], ["5", "z1z2+huber", "yes"]]
    assert "eigenvalues=[" in result.stdout and "4 check(s), all hold" in result.stdout


def test_check_only_the_components_given():
    result = run("check", "--activation", "relu", "--json")
    assert result.exit_code == 1
    (only,) = json.loads(result.stdout)["checks"]
    assert (only["assumption"], only["component"], only["holds"]) == (2, "relu", False)
    assert only["d1_at_0"] == pytest.approx(0.5)
    result = run("check", "--link", "he2", "--r", "1")  # no loss given: no Assumption 5
    assert result.exit_code == 0 and "he2+" not in result.stdout


def test_check_rank_deficient_pair_exits_1():
    result = run("check", "--link", "linear_he2", "--loss", "squared", "--json")
    assert result.exit_code == 1
    pair = json.loads(result.stdout)["checks"][-1]
    assert pair["assumption"] == 5 and not pair["holds"] and pair["ratio"] < 1e-3


@pytest.mark.parametrize("args, message", [
    (["check", "--link", "nope"], "Error: --link: unknown link 'nope'; available: "),
    (["check", "--loss", "hubr"], "Error: --loss: unknown loss 'hubr' (did you mean 'huber'?); available: "),
    (["check", "--activation", "gelu"], "Error: --activation: unknown activation 'gelu'"),
    (["check", "--r", "0"], "Error: --r must be a positive integer, got 0"),
    (["check", "--link", "z1z2", "--r", "1"], "Error: --r 1 is too small for link 'z1z2', which needs r >= 2"),
    (["theory", "--link", "nope", "--r", "2"], "Error: --link: unknown link 'nope'"),
    (["theory", "--link", "he2", "--r", "-1"], "Error: --r must be a positive integer, got -1"),
    (["theory", "--link", "z1z2", "--r", "1"], "Error: --r 1 is too small for link 'z1z2', which needs r >= 2"),
    (["check", "--r", "33"], "Error: --r 33 is above the limit of the theory computations, r <= 32"),
    (["theory", "--link", "he2", "--r", "40"], "Error: --r 40 is above the limit of the theory computations, r <= 32"),
])
def test_bad_usage_exits_2_with_one_line(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(message)


def test_theory_json_and_text():
    result = run("theory", "--link", "he2", "--r", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["alpha_c"] == pytest.approx(0.5, rel=0.02)  # He2 under its optimal preprocessing
    assert report["hermite_degree"] == 2 and len(report["eigenvalues"]) == 1
    text = run("theory", "--link", "he2", "--r", "1").stdout  # cached: free the second time
    assert "alpha_c" in text and "eigenvalues of M" in text and "Hermite degree        2" in text


def test_train_warns_records_and_logs_the_report(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), "--set", "model.activation=relu")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: assumption")]
    assert [w.split()[:4] for w in warnings] == [["Warning:", "assumption", "2", "(relu):"]]
    report = json.loads((tmp_path / "results.json").read_text())["assumptions"]
    assert [(c["assumption"], c["holds"]) for c in report] == [(1, True), (2, False), (3, True), (5, True)]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "assumptions/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("assumptions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| assumption | component | holds |") and "| 2 | relu | NO |" in text


def test_strict_checks_refuse_to_train(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), "--set", "model.activation=relu", "--set", "checks.strict=true")
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error == ("Error: checks.strict: refusing to train, assumption(s) 2 (relu) violated;"
                     " set checks.strict=false to train anyway")
    assert not (tmp_path / "results.json").exists()


def test_strict_checks_train_in_theory_components(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), *sets(IN_THEORY), "--set", "checks.strict=true")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    report = json.loads((tmp_path / "results.json").read_text())["assumptions"]
    assert all(c["holds"] for c in report) and len(report) == 4


class ThreeLinks:
    """A link that needs r >= 3 and links that break the link contract."""

    @hookimpl
    def register_links(self, register):
        register("third_he2", lambda z: z[..., 2] ** 2 - 1, min_r=3)
        register("wrong_shape", lambda z: z[..., :1])
        register("nan_link", lambda z: z[..., 0] * float("nan"))


@pytest.fixture
def three_links():
    with plugin_registered(ThreeLinks(), "three_links"):
        yield


def test_check_answers_for_large_r():
    """r = 24 used to enumerate 3^24 multi-indices in the Hermite check (minutes); a hang here would
    time the suite out."""
    result = run("check", "--link", "sum_he2", "--r", "24", "--json")
    assert result.exit_code == 0, result.output
    (link,) = json.loads(result.stdout)["checks"]
    assert link["holds"] and link["degree"] == 2 and link["cap"] >= 2


def test_theory_r_defaults_like_check(three_links):
    assert json.loads(run("theory", "--link", "he2", "--json").stdout)["r"] == 2
    result = run("theory", "--link", "third_he2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["r"] == 3  # the link's min_r


def test_theory_skips_alpha_c_beyond_r_6():
    result = run("theory", "--link", "sum_he2", "--r", "7", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["alpha_c"] is None and report["alpha_c_computed"] is False
    assert "not computed: r > 6" in report["alpha_c_method"] and report["hermite_degree"] == 2


def test_a_link_beyond_the_hermite_cap_is_not_a_polynomial_up_to_the_cap():
    text = run("theory", "--link", "tanh_sum", "--r", "2").stdout
    assert "Hermite degree        not a polynomial up to degree 6" in text
    report = json.loads(run("theory", "--link", "tanh_sum", "--r", "2", "--json").stdout)
    assert report["hermite_degree"] is None and report["hermite_polynomial"] is False
    result = run("check", "--link", "tanh_sum", "--json")
    assert result.exit_code == 1
    (link,) = json.loads(result.stdout)["checks"]
    assert "is not a polynomial up to degree 6" in link["message"] and link["degree"] is None
    assert "degree=" not in run("check", "--link", "tanh_sum").stdout


@pytest.mark.parametrize("command", [["check"], ["theory"], ["check", "--loss", "huber"]])
def test_a_broken_link_exits_2_with_the_words_of_the_probe(three_links, tmp_path, command):
    result = run(*command, "--link", "wrong_shape", "--r", "2")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: --link: link 'wrong_shape' returned shape (")
    rule = "; a link must map z of shape (..., r) to y of shape (...)"
    assert line.endswith(rule)
    trained = run("train", "--out", tmp_path, *sets(TINY), "--set", "data.link=wrong_shape")
    assert trained.exit_code == 1
    assert trained.output.strip().splitlines()[-1] == (
        "Error: data.link: link 'wrong_shape' returned shape (2, 16, 1) for z of shape (2, 16, 2)" + rule)
    result = run(*command, "--link", "nan_link")
    assert result.exit_code == 2 and "Error: --link: link 'nan_link' returned NaN or inf for z of shape" in result.output


def test_top_level_help_is_light_and_whole():
    """`mim --help` imports neither torch nor the plugins, and shows each command's first sentence whole;
    the component options list what is registered."""
    code = ("import sys; from click.testing import CliRunner; from mim_lightning.cli import main;"
            " print(CliRunner().invoke(main, ['--help'], terminal_width=80).output); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    commands = out.split("Commands:")[1]
    assert "..." not in commands and out.strip().endswith("False")
    assert "the components each registers." in " ".join(commands.split())
    help_text = " ".join(run("check", "--help").stdout.split())
    assert "One of: he2, linear_he2," in help_text and "pseudo_huber, squared." in help_text
    assert "One of: logcosh," in help_text
