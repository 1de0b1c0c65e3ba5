"""The Bayes-optimal limit for named links and `mim theory --alphas`."""

import json

import pytest
from click.testing import CliRunner

from mim_lightning.analysis.limit import alpha_at_cosine, bayes_optimal
from mim_lightning.cli import main
from mim_lightning.errors import MimError


@pytest.mark.slow
def test_he2_by_name_recovers_above_its_threshold():
    low, high = bayes_optimal("he2", 1, (0.4, 1.2), 0.0)["cosines"]
    assert low[0] < 0.05 and high[0] > 0.99   # alpha_c = 1/2; perfect recovery from ~1.13


def test_the_limit_refuses_r_above_3():
    with pytest.raises(MimError, match="r <= 3"):
        bayes_optimal("sum_he2", 4, (1.0,))


def test_alpha_at_cosine_interpolates_the_crossing():
    assert alpha_at_cosine([1, 2, 4], [0.1, 0.3, 0.7]) == pytest.approx(3.0)
    assert alpha_at_cosine([1, 2], [0.1, 0.2]) is None
    assert alpha_at_cosine([1, 2], [0.6, 0.9]) == 1


@pytest.mark.slow
def test_theory_alphas_json_and_bad_alphas():
    done = CliRunner().invoke(main, ["theory", "--link", "he2", "--r", "1", "--alphas", "0.4,1.2", "--noise", "0", "--json"])
    assert done.exit_code == 0, done.output
    limit = json.loads(done.stdout)["bayes_optimal"]
    assert limit["alpha"] == [0.4, 1.2] and limit["cosines"][1][0] > 0.99
    bad = CliRunner().invoke(main, ["theory", "--link", "he2", "--r", "1", "--alphas", "1,x"])
    assert bad.exit_code == 2 and "--alphas" in bad.output
