"""Built-in activations sigma(u). The theory asks for sigma'(0) = 0, sigma''(0) = 1 and a
bounded sigma''' (logcosh, one_minus_cos, quadratic); relu and tanh are out-of-theory baselines."""

import math

import torch
import torch.nn.functional as F

from mim_lightning.plugins.hookspecs import hookimpl


def logcosh(u):
    """log cosh(u) = u + softplus(-2u) - log 2: stable for large |u| (softplus turns linear only
    past -2u > 40, where the switch is below 1e-17) and smooth at 0 for autograd."""
    return u + F.softplus(-2 * u, threshold=40.0) - math.log(2.0)


def one_minus_cos(u):
    """1 - cos(u)."""
    return 1 - torch.cos(u)


def quadratic(u):
    """u^2 / 2 (cannot represent links of degree > 2 in stage 2)."""
    return 0.5 * u * u


@hookimpl
def register_activations(register):
    register("logcosh", logcosh)
    register("one_minus_cos", one_minus_cos)
    register("quadratic", quadratic)
    register("relu", torch.relu)
    register("tanh", torch.tanh)
