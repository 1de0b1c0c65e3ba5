"""What a component must return, checked in one place with one wording.

A link maps z of shape (..., r) to finite y of shape (...); a loss maps (t, y) of one shape to
finite per-sample values of that shape (and loss'(0, y), its derivative in t, must be finite); an
activation maps u to finite values of u's shape. The probes run before training
(``plugins.validate``), the theory and the checks (``analysis.theory``, ``analysis.assumptions``)
and data generation (``core.streams``) all call these functions, so a broken component gets the
same sentence wherever it is met. Errors are ``ComponentError`` (a ``MimError``) whose message
starts with the kind and the name: "link 'x' returned shape (4096, 1) for z of shape (4096, 2);
a link must map z of shape (..., r) to y of shape (...)".
"""

from __future__ import annotations

from typing import Callable

import torch

from mim_lightning.errors import MimError

RULES = {
    "link": "a link must map z of shape (..., r) to y of shape (...)",
    "loss": "a loss must map t and y of one shape to per-sample values of that shape",
    "activation": "an activation must be elementwise: u of any shape to values of the same shape",
}
INPUT = {"link": "z", "loss": "t and y", "activation": "u"}


class ComponentError(MimError):
    """A component broke its contract; ``kind`` (link, loss, activation) and ``name`` say which."""

    def __init__(self, kind: str, name: str, problem: str):
        super().__init__(f"{kind} {name!r} {problem}")
        self.kind, self.name, self.problem = kind, name, problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def call(kind: str, name: str, fn: Callable, *args: torch.Tensor):
    """fn(*args); any exception becomes a ComponentError naming the input shape."""
    try:
        return fn(*args)
    except MimError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of user code becomes one line
        text = " ".join(str(exc).split())
        raise ComponentError(kind, name, f"raised {type(exc).__name__} for {INPUT[kind]} of shape"
                                         f" {tuple(args[0].shape)}" + (f": {text}" if text else "")) from None


def check_output(kind: str, name: str, out, given: torch.Tensor, finite: bool = True) -> torch.Tensor:
    """``out``, the value of a component on the input ``given`` (z for a link, t for a loss, u for an
    activation), checked: a tensor of the shape the contract requires and, if ``finite``, finite."""
    expected = tuple(given.shape[:-1]) if kind == "link" else tuple(given.shape)
    if not isinstance(out, torch.Tensor):
        raise ComponentError(kind, name, f"returned a {type(out).__name__}, not a torch.Tensor; {RULES[kind]}")
    if tuple(out.shape) != expected:
        raise ComponentError(kind, name, f"returned shape {tuple(out.shape)} for {INPUT[kind]} of shape"
                                         f" {tuple(given.shape)}; {RULES[kind]}")
    if finite and not bool(torch.isfinite(out).all()):
        raise ComponentError(kind, name, f"returned NaN or inf for {INPUT[kind]} of shape {tuple(given.shape)}"
                                         f" (values in [{float(given.min()):.3g}, {float(given.max()):.3g}])")
    return out


def link_values(name: str, fn: Callable, z: torch.Tensor, finite: bool = True) -> torch.Tensor:
    """y = g(z) for z of shape (..., r), checked: a (finite) tensor of shape (...)."""
    return check_output("link", name, call("link", name, fn, z), z, finite)


def loss_values(name: str, fn: Callable, t: torch.Tensor, y: torch.Tensor, finite: bool = True) -> torch.Tensor:
    """loss(t, y), checked: a (finite) tensor of t's shape."""
    return check_output("loss", name, call("loss", name, fn, t, y), t, finite)


def activation_values(name: str, fn: Callable, u: torch.Tensor, finite: bool = True) -> torch.Tensor:
    """sigma(u), checked: a (finite) tensor of u's shape."""
    return check_output("activation", name, call("activation", name, fn, u), u, finite)


def check_derivative(kind: str, name: str, derivative: torch.Tensor | None, variable: str, at: str = "") -> torch.Tensor:
    """A derivative computed by autograd, checked to exist and be finite (``at``: where, e.g.
    't = 0'). None (the value does not depend on the variable) is an error too."""
    if derivative is None or not bool(torch.isfinite(derivative).all()):
        where = f" at {at}" if at else ""
        raise ComponentError(kind, name, f"has no finite autograd derivative in {variable}{where};"
                                         " write it with differentiable torch operations")
    return derivative


def autograd_derivative(kind: str, name: str, out: torch.Tensor, wrt: torch.Tensor, variable: str,
                        create_graph: bool = False):
    """d out.sum() / d wrt by autograd (None when out does not depend on wrt); a failure of
    autograd (e.g. a detached output) is a ComponentError."""
    try:
        (grad,) = torch.autograd.grad(out.sum(), wrt, create_graph=create_graph, allow_unused=True)
    except RuntimeError as exc:
        raise ComponentError(kind, name, f"is not differentiable in {variable} by autograd"
                                         f" ({_first_line(exc).removeprefix('RuntimeError: ')})") from None
    return grad


def loss_slope_at_zero(name: str, fn: Callable, y: torch.Tensor) -> torch.Tensor:
    """loss'(0, y), the derivative in the prediction t at t = 0 (the preprocessing is -loss'(0, y)),
    checked: finite and of y's shape."""
    with torch.enable_grad():
        t = torch.zeros_like(y).requires_grad_(True)
        value = loss_values(name, fn, t, y.detach(), finite=False)
        grad = autograd_derivative("loss", name, value, t, "t")
    return check_derivative("loss", name, None if grad is None else grad.detach(), "t", "t = 0")


__all__ = ["ComponentError", "call", "check_output", "link_values", "loss_values", "activation_values",
           "check_derivative", "autograd_derivative", "loss_slope_at_zero", "RULES"]
