"""Built-in link functions g(z), z = U x of shape (..., r).

Metadata: ``min_r`` (the smallest r the link needs) and ``degree`` (polynomial degree, None when
the link is not a polynomial).
"""

import torch

from mim_lightning.plugins.hookspecs import hookimpl


def z1z2(z):
    """g(z) = z1 * z2: population matrix (squared loss) has eigenvalues +1 and -1 on U."""
    return z[..., 0] * z[..., 1]


def sum_he2(z):
    """g(z) = sum_k (z_k^2 - 1): population matrix (squared loss) is 2 I_r."""
    return (z * z - 1).sum(-1)


def he2(z):
    """g(z) = z1^2 - 1: the single-index Hermite polynomial He2."""
    return z[..., 0] ** 2 - 1


def tanh_sum(z):
    """g(z) = tanh(sum_k (z_k^2 - 1)): smooth, not a polynomial, depends on every coordinate."""
    return torch.tanh((z * z - 1).sum(-1))


def staircase(z):
    """g(z) = z1 + z1 * z2: a leap/staircase target."""
    return z[..., 0] + z[..., 0] * z[..., 1]


def linear_he2(z):
    """g(z) = z1 + (z2^2 - 1): z1 enters only linearly, so under squared loss the population
    matrix is M = diag(0, -2) (rank 1, Assumption 5 fails); a loss whose preprocessing T(y) is
    non-linear in y (e.g. ``even_tanh_sq``) sees both directions."""
    return z[..., 0] + z[..., 1] ** 2 - 1


def weighted_he2(z):
    """g(z) = (z1^2 - 1) + (z2^2 - 1) / 2: population matrix (squared loss) -diag(2, 1), so long
    power iteration collapses onto z1 (the effect of T1)."""
    return z[..., 0] ** 2 - 1 + 0.5 * (z[..., 1] ** 2 - 1)


@hookimpl
def register_links(register):
    register("z1z2", z1z2, min_r=2, degree=2)
    register("sum_he2", sum_he2, min_r=1, degree=2)
    register("he2", he2, min_r=1, degree=2)
    register("tanh_sum", tanh_sum, min_r=1, degree=None)
    register("staircase", staircase, min_r=2, degree=2)
    register("linear_he2", linear_he2, min_r=2, degree=2)
    register("weighted_he2", weighted_he2, min_r=2, degree=2)
