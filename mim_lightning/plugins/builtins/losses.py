"""Built-in losses loss(t, y), elementwise, differentiable in the prediction t.

Their label preprocessing is T(y) = -loss'(0, y): squared gives T(y) = y, huber clips y to
[-1, 1], pseudo_huber gives y / sqrt(1 + y^2), logcosh gives tanh(y).
"""

import math

import torch
import torch.nn.functional as F

from mim_lightning.plugins.hookspecs import hookimpl
from mim_lightning.core.preprocessed_losses import optimal_sum_he2_loss


def squared(t, y):
    """(t - y)^2 / 2."""
    return 0.5 * (t - y) ** 2


def huber(t, y):
    """Huber loss with delta = 1: quadratic for |t - y| <= 1, linear beyond."""
    return F.huber_loss(t, y, reduction="none", delta=1.0)


def pseudo_huber(t, y):
    """sqrt(1 + (t - y)^2) - 1, a smooth Huber loss with delta = 1."""
    return torch.sqrt(1 + (t - y) ** 2) - 1


def logcosh(t, y):
    """log cosh(t - y), computed stably as u + softplus(-2u) - log 2 with u = t - y."""
    u = t - y
    return u + F.softplus(-2 * u, threshold=40.0) - math.log(2.0)


def even_tanh_sq(t, y):
    """A preprocessed loss: sqrt(1 + t^2) - 1 - t * T(y) with T(y) = tanh(y^2) - 1/2.

    Convex and 1.5-Lipschitz in t, with -loss'(0, y) = T(y), an even, bounded preprocessing that
    sees directions a link uses only linearly (e.g. ``linear_he2``). Meant for stage 1: its
    minimiser in t is T / sqrt(1 - T^2), not y, so stage 2 should use another loss.
    """
    return torch.sqrt(1 + t * t) - 1 - t * (torch.tanh(y * y) - 0.5)


@hookimpl
def register_losses(register):
    """Also the optimal preprocessed losses of sum_he2 on r = 1..4 coordinates (he2 is r = 1),
    T(y) = y / (y + r sqrt(2)), tuned for alpha = 2 alpha_c (``mim_lightning.core.preprocessed_losses``)."""
    register("squared", squared)
    register("huber", huber)
    register("pseudo_huber", pseudo_huber)
    register("logcosh", logcosh)
    register("even_tanh_sq", even_tanh_sq)
    register("optimal_he2", optimal_sum_he2_loss(1), stage=1, link="he2", r=1)
    for r in range(1, 5):
        register(f"optimal_sum_he2_r{r}", optimal_sum_he2_loss(r), stage=1, link="sum_he2", r=r)
