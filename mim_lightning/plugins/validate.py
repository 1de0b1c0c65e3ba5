"""Call a run's components once on small inputs before any compute is spent on them.

A link must map z (..., r) to finite values of shape (...); a loss must map (t, y) to finite
per-sample values with a finite gradient in t; an activation must map u to finite values of the
same shape with a finite derivative. Anything else is a one-line MimError naming the config key,
the component and what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mim_lightning.errors import MimError
from mim_lightning.plugins.manager import get_registry

PROBE_SHAPE = (2, 16)


def _fail(key: str, name: str, problem: str) -> MimError:
    return MimError(f"{key} {name!r} {problem}")


def _call(key: str, name: str, fn, *args) -> torch.Tensor:
    try:
        out = fn(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of user code becomes one line
        raise _fail(key, name, f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                    f" on a probe input of shape {tuple(args[0].shape)}") from None
    if not isinstance(out, torch.Tensor):
        raise _fail(key, name, f"returned a {type(out).__name__}, not a torch.Tensor")
    return out


def _check_values(key: str, name: str, out: torch.Tensor, shape) -> None:
    if tuple(out.shape) != tuple(shape):
        raise _fail(key, name, f"returned shape {tuple(out.shape)} for an input of shape {tuple(shape)}; it must be elementwise")
    if not bool(torch.isfinite(out).all()):
        raise _fail(key, name, "returned NaN or inf on a probe input (values in [-3, 3])")


def _check_gradient(key: str, name: str, out: torch.Tensor, wrt: torch.Tensor, variable: str) -> None:
    try:
        (grad,) = torch.autograd.grad(out.sum(), wrt, allow_unused=True)
    except RuntimeError as exc:
        raise _fail(key, name, f"is not differentiable in {variable} by autograd ({str(exc).splitlines()[0]})") from None
    if grad is None or not bool(torch.isfinite(grad).all()):
        raise _fail(key, name, f"has no finite autograd derivative in {variable}; write it with torch operations")


def probe_link(name: str, fn, r: int) -> None:
    z = torch.linspace(-3, 3, PROBE_SHAPE[0] * PROBE_SHAPE[1] * r).reshape(*PROBE_SHAPE, r)
    _check_values("data.link", name, _call("data.link", name, fn, z), PROBE_SHAPE)


def probe_loss(key: str, name: str, fn) -> None:
    t = torch.linspace(-3, 3, PROBE_SHAPE[0] * PROBE_SHAPE[1]).reshape(PROBE_SHAPE).requires_grad_(True)
    y = torch.linspace(2, -2, PROBE_SHAPE[0] * PROBE_SHAPE[1]).reshape(PROBE_SHAPE)
    out = _call(key, name, fn, t, y)
    _check_values(key, name, out, PROBE_SHAPE)
    _check_gradient(key, name, out, t, "t")


def probe_activation(name: str, fn) -> None:
    u = torch.linspace(-3, 3, PROBE_SHAPE[0] * PROBE_SHAPE[1]).reshape(PROBE_SHAPE).requires_grad_(True)
    out = _call("model.activation", name, fn, u)
    _check_values("model.activation", name, out, PROBE_SHAPE)
    _check_gradient("model.activation", name, out, u, "u")


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
