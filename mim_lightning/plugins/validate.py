"""Call a run's components once on small inputs before any compute is spent on them.

A link must map z (..., r) to finite values of shape (...); a loss must map (t, y) to finite
per-sample values with a finite gradient in t; an activation must map u to finite values of the
same shape with a finite derivative. Anything else is a one-line MimError naming the config key,
then the component and what went wrong in the words of ``core.contracts`` (the sentence that
``mim check``, ``mim theory`` and data generation use too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mim_lightning.core import contracts
from mim_lightning.errors import MimError
from mim_lightning.plugins.manager import get_registry

PROBE_SHAPE = (2, 16)


def _keyed(key: str, exc: contracts.ComponentError) -> MimError:
    return MimError(f"{key}: {exc}")


def probe_link(name: str, fn, r: int, key: str = "data.link") -> None:
    z = torch.linspace(-3, 3, PROBE_SHAPE[0] * PROBE_SHAPE[1] * r).reshape(*PROBE_SHAPE, r)
    try:
        with torch.no_grad():
            contracts.link_values(name, fn, z)
    except contracts.ComponentError as exc:
        raise _keyed(key, exc) from None


def probe_loss(key: str, name: str, fn) -> None:
    t = torch.linspace(-3, 3, PROBE_SHAPE[0] * PROBE_SHAPE[1]).reshape(PROBE_SHAPE).requires_grad_(True)
    y = torch.linspace(2, -2, PROBE_SHAPE[0] * PROBE_SHAPE[1]).reshape(PROBE_SHAPE)
    try:
        with torch.enable_grad():
            out = contracts.loss_values(name, fn, t, y)
            grad = contracts.autograd_derivative("loss", name, out, t, "t")
        contracts.check_derivative("loss", name, grad, "t")
    except contracts.ComponentError as exc:
        raise _keyed(key, exc) from None


def probe_activation(name: str, fn, key: str = "model.activation") -> None:
    u = torch.linspace(-3, 3, PROBE_SHAPE[0] * PROBE_SHAPE[1]).reshape(PROBE_SHAPE).requires_grad_(True)
    try:
        with torch.enable_grad():
            out = contracts.activation_values(name, fn, u)
            grad = contracts.autograd_derivative("activation", name, out, u, "u")
        contracts.check_derivative("activation", name, grad, "u")
    except contracts.ComponentError as exc:
        raise _keyed(key, exc) from None


@dataclass(frozen=True)
class RunComponents:
    """The functions a run uses, looked up once."""

    link: Callable
    stage1_loss: Callable
    stage2_loss: Callable
    activation: Callable


def resolve_run_components(cfg) -> RunComponents:
    """Look up a run's components by their config keys (errors name the key and list what is
    available), check the link's ``min_r`` against data.r, and probe each one once."""
    registry = get_registry()
    for info in registry.broken():  # once per registry: a run says so even if it needs none of them
        registry.warn(f"{info.describe()} is broken: {info.error}")
    found = {}
    for key, kind, name in [("data.link", "link", cfg.data.link), ("stage1.loss", "loss", cfg.stage1.loss),
                            ("stage2.loss", "loss", cfg.stage2.loss), ("model.activation", "activation", cfg.model.activation)]:
        try:
            found[key] = registry.get(kind, name)
        except MimError as exc:
            raise MimError(f"{key}: {exc}") from None
    min_r = found["data.link"].metadata.get("min_r", 1)
    if cfg.data.r < min_r:
        raise MimError(f"data.r = {cfg.data.r} is too small for link {cfg.data.link!r}, which needs r >= {min_r}")
    components = RunComponents(*(c.fn for c in found.values()))
    probe_link(cfg.data.link, components.link, cfg.data.r)
    probe_loss("stage1.loss", cfg.stage1.loss, components.stage1_loss)
    probe_loss("stage2.loss", cfg.stage2.loss, components.stage2_loss)
    probe_activation(cfg.model.activation, components.activation)
    return components
