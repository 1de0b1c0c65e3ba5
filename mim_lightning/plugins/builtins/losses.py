"""Built-in losses loss(t, y), elementwise, differentiable in the prediction t.

Their label preprocessing is T(y) = -loss'(0, y): squared gives T(y) = y, huber clips y to
[-1, 1], pseudo_huber gives y / sqrt(1 + y^2), logcosh gives tanh(y).
"""


import torch
import torch.nn.functional as F

from mim_lightning.plugins.hookspecs import hookimpl
from mim_lightning.core.preprocessed_losses import optimal_sum_he2_loss, preprocessed_loss
from mim_lightning.plugins.builtins.activations import logcosh as logcosh_activation


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
    """log cosh(t - y) (the activation's stable form, with the exact derivative tanh(t - y))."""
    return logcosh_activation(t - y)


def even_tanh(y):
    """T(y) = tanh(y^2) - 1/2: even and bounded (|T| <= 1/2)."""
    return torch.tanh(y * y) - 0.5


#: A preprocessed loss sqrt(1 + t^2) - 1 - t T(y) with T = ``even_tanh``: convex and 1.5-Lipschitz
#: in t, an even preprocessing that sees directions a link uses only linearly (e.g. ``linear_he2``).
#: Meant for stage 1 (its minimiser in t is T / sqrt(1 - T^2), not y).
even_tanh_sq = preprocessed_loss(even_tanh)


@hookimpl
def register_losses(register):
    """Also the preprocessed losses of sum_he2 on r = 1..4 coordinates (he2 is r = 1),
    T(y) = y / (y + r s) with s = sqrt(2), and for r = 2 with s = 2 (``optimal_sum_he2_r2_s2``, |T| < 1);
    see ``mim_lightning.core.preprocessed_losses`` for what s trades off."""
    register("squared", squared)
    register("huber", huber)
    register("pseudo_huber", pseudo_huber)
    register("logcosh", logcosh)
    register("even_tanh_sq", even_tanh_sq)
    losses = {r: optimal_sum_he2_loss(r) for r in range(1, 5)}
    register("optimal_he2", losses[1])   # he2 is sum_he2 on one coordinate: the same loss
    for r, loss in losses.items():
        register(f"optimal_sum_he2_r{r}", loss)
    # the same preprocessing with s = 2, where |T| < 1 (configs/paper/preprocessing_s.yaml)
    register("optimal_sum_he2_r2_s2", optimal_sum_he2_loss(2, 2.0))
