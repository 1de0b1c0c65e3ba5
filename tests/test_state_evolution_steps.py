"""The state evolution in fewer steps (issue 20): warm starts from the neighbouring alpha and Aitken
jumps where the steps shrink geometrically give the fixed points computed before, in a fraction of
the steps."""

import pytest
import torch

from mim_lightning.core.state_evolution import bayes_optimal_overlap


def sum_he2(z):
    return (z * z - 1).sum(-1)


def test_the_same_fixed_points_in_a_fraction_of_the_steps():
    """sum_he2, r = 2, noiseless, alpha = 1.5, 2, 3 (the README's 0.52 / 0.91 / 1.00): Q = q I as the
    plain iteration from Q_0 = 1e-3 I gave it before (in 69, 248 and 42 steps) within 1e-4, far below
    the stated error (0.03 and 0.05 at 1.5 and 2), in at most a third of the steps."""
    before = [0.26669555810793716, 0.8223541556906465, 0.9999980151692871]
    out = bayes_optimal_overlap(sum_he2, 2, [1.5, 2, 3], 0.0, error_estimate=False)
    assert all(out["converged"])
    for q, expected in zip(out["Q"], before):
        assert torch.tensor(q) == pytest.approx(expected * torch.eye(2, dtype=torch.float64), abs=1e-4)
    assert sum(out["iterations"]) <= (69 + 248 + 42) / 3, out["iterations"]


def test_a_stop_ends_the_computation_at_its_next_check():
    class Stop(Exception):
        pass

    checks = []

    def stop():
        checks.append(1)
        if len(checks) == 3:
            raise Stop

    with pytest.raises(Stop):
        bayes_optimal_overlap(sum_he2, 2, [2.0], 0.0, stop=stop)
    assert len(checks) == 3
