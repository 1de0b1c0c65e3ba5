"""An example mim-lightning plugin: one link, one loss and one activation, all inside the theory.

- link ``cubic_saddle``: g(z) = z1^2 - z2^2 + z1 (z2^2 - 1) / 2, a degree-3 polynomial (Assumption 1)
  whose population matrix M is full rank with eigenvalues of both signs (Assumption 5).
- loss ``fair``: the Fair loss |u| - log(1 + |u|), u = t - y: convex, C^2 and 1-Lipschitz in t
  (Assumption 3); its preprocessing is T(y) = -loss'(0, y) = y / (1 + |y|).
- activation ``u_tanh``: sigma(u) = u tanh(u) / 2, with sigma'(0) = 0, sigma''(0) = 1 and a bounded
  sigma''' (Assumption 2); it grows like |u| / 2, so it is Lipschitz too.

Install it with ``pip install -e plugins/mim-example-plugin`` and try
``mim train --set data.link=cubic_saddle --set stage1.loss=fair --set model.activation=u_tanh``.
"""

import torch

from mim_lightning import hookimpl


def cubic_saddle(z):
    """g(z) = z1^2 - z2^2 + z1 (z2^2 - 1) / 2 (z: tensor of shape (..., r), r >= 2)."""
    z1, z2 = z[..., 0], z[..., 1]
    return z1 * z1 - z2 * z2 + 0.5 * z1 * (z2 * z2 - 1)


def fair(t, y):
    """The Fair loss with c = 1: |u| - log(1 + |u|), u = t - y."""
    u = (t - y).abs()
    return u - torch.log1p(u)


def u_tanh(u):
    """sigma(u) = u tanh(u) / 2."""
    return 0.5 * u * torch.tanh(u)


@hookimpl
def register_links(register):
    register("cubic_saddle", cubic_saddle, min_r=2, degree=3)


@hookimpl
def register_losses(register):
    register("fair", fair)


@hookimpl
def register_activations(register):
    register("u_tanh", u_tanh)
