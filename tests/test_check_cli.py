"""`mim check`, `mim theory` and the train-time assumption checks, through click's CliRunner."""

import json

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mim_lightning.cli import main

from helpers import TINY

IN_THEORY = ["data.link=z1z2", "stage1.loss=huber", "model.activation=logcosh"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_check_without_options_checks_the_defaults():
    result = run("check", "--json")
    assert result.exit_code == 1  # the default stage-1 loss, squared, is not Lipschitz (Assumption 3)
    checks = json.loads(result.stdout)["checks"]
    assert [(c["assumption"], c["component"], c["holds"]) for c in checks] == [
        (1, "sum_he2", True), (2, "logcosh", True), (3, "squared", False), (5, "sum_he2+squared", True)]
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
    assert [w.split()[:4] for w in warnings] == [["Warning:", "assumption", "2", "(relu):"],
                                                 ["Warning:", "assumption", "3", "(squared):"]]
    report = json.loads((tmp_path / "results.json").read_text())["assumptions"]
    assert [(c["assumption"], c["holds"]) for c in report] == [(1, True), (2, False), (3, False), (5, True)]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "assumptions/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("assumptions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| assumption | component | holds |") and "| 2 | relu | NO |" in text


def test_strict_checks_refuse_to_train(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), "--set", "model.activation=relu", "--set", "checks.strict=true")
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error == ("Error: checks.strict: refusing to train, assumption(s) 2 (relu), 3 (squared) violated;"
                     " set checks.strict=false to train anyway")
    assert not (tmp_path / "results.json").exists()


def test_strict_checks_train_in_theory_components(tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), *sets(IN_THEORY), "--set", "checks.strict=true")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    report = json.loads((tmp_path / "results.json").read_text())["assumptions"]
    assert all(c["holds"] for c in report) and len(report) == 4
