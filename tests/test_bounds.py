"""Bounds before work: `mim theory` and `mim sweep` refuse hostile numbers (empty list elements,
repeats, values out of range, an r the Bayes-optimal limit does not cover, a combinatorial grid)
with one line, at once, before any computation; each through the real CLI under a time limit."""

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mim_lightning.analysis.limit import MAX_ALPHA, MIN_ALPHA, parse_alphas, parse_noise
from mim_lightning.cli import main
from mim_lightning.errors import MimError
from mim_lightning.experiments.grid import MAX_RUNS, load_sweep

MIM = shutil.which("mim") or os.path.join(os.path.dirname(sys.executable), "mim")
ENV = {**os.environ, "MIM_LIGHTNING_PLUGINS": "", "MIM_SWEEP_LIMIT": "0"}
TIME_LIMIT = 30  # seconds; most of it is importing torch and Lightning (13 s on a busy 2-core machine), the refusal takes milliseconds
# 10 * 10 * 10 * 10 * 10 * 10 = 10^6 runs: each would be built and validated before the refusal
HUGE_SWEEP = ("data: {d: 32, alpha: 8, alpha2: 8, n_test: 512}\nmodel: {width: 32}\nstage1: {steps: 3}\nsweep:\n"
              "  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
              + "".join(f"  {key}: [{', '.join(str(v + 1) for v in range(10))}]\n"
                        for key in ("data.alpha", "data.alpha2", "stage1.steps", "stage2.steps", "stage1.lr")))

HOSTILE = [  # (arguments after 'mim', substrings of the one line, exit status)
    (["theory", "--link", "he2", "--r", "1", "--alphas", "1,,2"], ["--alphas '1,,2'", "value 2 is empty"], 2),
    (["theory", "--link", "he2", "--r", "1", "--alphas", "1,2,1.0"], ["--alphas", "1 is given twice"], 2),
    (["theory", "--link", "he2", "--r", "1", "--alphas", "1e300"], ["1e+300 is outside [1.19e-07, 16777216]"], 2),
    (["theory", "--link", "he2", "--r", "1", "--alphas", "1e-300"], ["1e-300 is outside [1.19e-07, 16777216]"], 2),
    (["theory", "--link", "he2", "--r", "1", "--alphas", "1", "--noise", "1e300"], ["--noise '1e300'", "1e+09"], 2),
    (["theory", "--link", "sum_he2", "--r", "4", "--alphas", "1"], ["--r 4", "r <= 3"], 2),
    (["sweep", "huge.yaml", "--out", "out"], ["1,000,000 runs", "maximum of 10,000", "--max-runs"], 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, needles, code", HOSTILE, ids=[" ".join(case[0]) for case in HOSTILE])
def test_hostile_numbers_are_refused_at_once(tmp_path, args, needles, code):
    (tmp_path / "huge.yaml").write_text(HUGE_SWEEP)
    done = subprocess.run([MIM, *args], capture_output=True, text=True, timeout=TIME_LIMIT, cwd=tmp_path, env=ENV)
    assert done.returncode == code, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # the refused sweep wrote nothing


@pytest.mark.parametrize("text", ["", ",", "1,", ",1", "1, ,2", "x", "1,x", "0", "-1", "nan", "inf", "1e-8", "2e7",
                                  "1,1", "0.5,1,0.50", ",".join(["1"] * 101)])
def test_bad_alphas(text):
    with pytest.raises(MimError, match="^--alphas"):
        parse_alphas(text)


def test_good_alphas_keep_their_order():
    assert parse_alphas(f" 2, 0.5 ,{MIN_ALPHA!r},{MAX_ALPHA!r}") == (2.0, 0.5, MIN_ALPHA, MAX_ALPHA)
    assert parse_alphas(",".join(str(i) for i in range(1, 101))) == tuple(float(i) for i in range(1, 101))


@pytest.mark.parametrize("text", ["", "x", "-0.1", "nan", "inf", "1e300", "1.1e9"])
def test_bad_noise(text):
    with pytest.raises(MimError, match="^--noise"):
        parse_noise(text)


def test_good_noise():
    assert parse_noise("0") == 0.0 and parse_noise("1e9") == 1e9 and parse_noise("0.01") == 0.01


def test_the_run_count_is_bounded_with_an_explicit_override(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("data: {d: 32, alpha: 8, alpha2: 8, n_test: 512}\nmodel: {width: 32}\n"
                    "sweep: {seed: [0, 1, 2], data.alpha: [4, 8]}\n")
    with pytest.raises(MimError, match=r"has 6 runs \(3 \(seed\) x 2 \(data.alpha\)\), more than the maximum of 5"):
        load_sweep(path, max_runs=5)
    assert len(load_sweep(path, max_runs=6).runs) == 6
    assert len(load_sweep(path).runs) == 6 <= MAX_RUNS


def test_the_sweep_help_documents_the_maximum():
    text = CliRunner().invoke(main, ["sweep", "--help"]).output
    assert "--max-runs N" in text and f"[default: {MAX_RUNS}]" in text
