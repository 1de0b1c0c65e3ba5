"""Checks of the paper's assumptions (docs/theory.md#assumptions), as structured reports.

Every check returns a plain JSON-serialisable dict with at least ``assumption`` (1, 2, 3 or 5),
``component`` (the name(s) checked), ``holds`` (bool) and ``message`` (one sentence with the key
numbers), plus the numbers themselves. Checks are deterministic (fixed grids, quadrature rules
and seeds) and cached per component name (and r), so a second call is free.

Components are given by registered name (unknown names raise ``MimError`` listing the available
ones) or, for testing and plugins in progress, as a callable: pass ``fn=`` (or the callable
itself in place of the name).

- Assumption 1 (``check_link``): the link is a polynomial of constant degree.
- Assumption 2 (``check_activation``): sigma in C^3, sigma'(0) = 0, sigma''(0) = 1, sigma''' bounded.
- Assumption 3 (``check_loss``): the loss is convex, C^1 and Lipschitz in the prediction t.
- Assumption 5 (``check_pair``): M = E[loss'(0, y) (z z^T - I_r)] has full rank r.
"""

from __future__ import annotations

import torch

from mim_lightning.analysis import theory
from mim_lightning.analysis.common import DTYPE, HERMITE_RESIDUAL_TOL, loss_derivatives, memoize, resolve
from mim_lightning.core.contracts import activation_values, autograd_derivative
from mim_lightning.analysis.moments import eigen_summary

LINK_RESIDUAL_TOL = HERMITE_RESIDUAL_TOL  # Assumption 1: variance fraction beyond the degree cap
ACTIVATION_TOL = 1e-4  # Assumption 2: |sigma'(0)| and |sigma''(0) - 1|
ACTIVATION_STEP = 1e-4  # sigma^(k)(0) = mean of autograd values at +-STEP (robust to |u| in code)
GRID_RANGE = 50.0  # activation grid [-R, R]; loss grid [-R, R]^2 in (t, y)
GROWTH = 1.5  # "grows": sup over [-R, R] > GROWTH * sup over [-R/5, R/5]
LOSS_TOL = 1e-8  # Assumption 3: convexity slack, relative to 1 + sup|loss'|
PAIR_RATIO_TOL = 1e-3  # Assumption 5: min|lambda| / max|lambda| must exceed this ...
PAIR_MARGIN = 10.0  # ... and min|lambda| must exceed PAIR_MARGIN * r * (error of M's entries)


def _target(kind: str, name, fn):
    """(label, what to pass to theory.*): a registered name, or a callable labelled by name."""
    if fn is not None:
        return str(name) if name is not None else getattr(fn, "__name__", kind), fn
    label, _, _ = resolve(kind, name)  # MimError for an unknown name
    return label, name


def _grows(values: torch.Tensor, inner: torch.Tensor) -> tuple[float, float, bool]:
    """(sup |values|, sup over the inner part, whether it grows with the range)."""
    sup, sup_inner = float(values.abs().max()), float(values[inner].abs().max())
    return sup, sup_inner, sup > GROWTH * sup_inner + 1e-9


def _max_jump(values: torch.Tensor, slopes: torch.Tensor, step: float, dim: int = -1) -> float:
    """Largest jump of ``values`` between grid neighbours beyond what its derivative ``slopes``
    allows (mean value theorem: |f(b) - f(a)| <= h (max(|f'(a)|, |f'(b)|) + |f'(b) - f'(a)|)).
    Positive: f is discontinuous (or f' is not its derivative) somewhere on the grid."""
    dv = values.diff(dim=dim).abs()
    a, b = slopes.narrow(dim, 0, slopes.shape[dim] - 1), slopes.narrow(dim, 1, slopes.shape[dim] - 1)
    allowed = 1.5 * step * (torch.maximum(a.abs(), b.abs()) + (b - a).abs())
    return float((dv - allowed - 1e-9 * (1 + values.abs().max())).max())


# --------------------------------------------------------------------------- Assumption 1


@memoize
def check_link(name, r: int, fn=None) -> dict:
    """Assumption 1: the link g is a polynomial of constant degree.

    Hermite expansion up to total degree ``HERMITE_CAP`` (``theory.hermite_degree``).
    holds iff ``residual`` (fraction of Var(g) beyond the cap) < ``LINK_RESIDUAL_TOL``.
    Extra keys: ``degree`` (None when the link is not a polynomial up to degree ``cap``),
    ``residual``, ``cap``, ``declared_degree``, ``tolerance``, ``r``.
    """
    label, target = _target("link", name, fn)
    h = theory.hermite_degree(target, r)
    holds = h["polynomial"]
    if holds:
        message = (
            f"link {label!r} is a polynomial of degree {h['degree']} (r = {r}): a fraction"
            f" {h['residual']:.1e} of its variance lies beyond degree {h['cap']}"
        )
    else:
        message = (
            f"link {label!r} is not a polynomial up to degree {h['cap']} (r = {r}): a fraction"
            f" {h['residual']:.3g} of its variance lies beyond degree {h['cap']} (tolerance {LINK_RESIDUAL_TOL:g})"
        )
    declared = h["declared_degree"]
    if declared is not None and holds and declared != h["degree"]:
        message += f"; it declares degree {declared}"
    return {
        "assumption": 1,
        "component": label,
        "holds": holds,
        "message": message,
        "r": r,
        "degree": h["degree"] if holds else None,
        "residual": h["residual"],
        "cap": h["cap"],
        "declared_degree": declared,
        "tolerance": LINK_RESIDUAL_TOL,
    }


# --------------------------------------------------------------------------- Assumption 2


def _activation_derivatives(label: str, fn, u: torch.Tensor) -> list[torch.Tensor]:
    """[sigma and its derivatives of order 1 to 4] at u by autograd (zeros where one vanishes);
    sigma is checked by ``core.contracts`` (elementwise, differentiable)."""
    u = u.clone().requires_grad_(True)
    with torch.enable_grad():
        out = [activation_values(label, fn, u, finite=False)]
        for order in range(1, 5):
            prev = out[-1]
            d = None
            if prev.requires_grad:
                d = autograd_derivative("activation", label, prev, u, "u" if order == 1 else f"u (order {order})",
                                        create_graph=True)
            out.append(torch.zeros_like(u) if d is None else d)
    return [v.detach().to(DTYPE) for v in out]


@memoize
def check_activation(name, fn=None) -> dict:
    """Assumption 2: sigma in C^3 with sigma'(0) = 0, sigma''(0) = 1 and sigma''' bounded.

    sigma'(0), sigma''(0): autograd at u = +-``ACTIVATION_STEP``, averaged (an implementation
    through |u| has a meaningless autograd value at exactly 0). sigma''': autograd on a grid of
    20000 points over [-R, R] (R = ``GRID_RANGE``, 0 excluded); it "grows" when its sup over
    [-R, R] exceeds ``GROWTH`` times its sup over [-R/5, R/5]. C^3 sanity: all derivatives finite,
    and no jump of sigma or its first three derivatives between grid neighbours beyond what the
    next derivative allows (a kink, e.g. relu at 0, is a jump of sigma'). holds iff |sigma'(0)| and
    |sigma''(0) - 1| are below ``ACTIVATION_TOL``, sigma''' is bounded and the sanity checks pass.
    Extra keys: ``d1_at_0``, ``d2_at_0``, ``sup_d3``, ``sup_d3_inner``, ``d3_bounded``, ``smooth``,
    ``max_jump``, ``tolerance``, ``range``.
    """
    label, target = _target("activation", name, fn)
    _, act, _ = resolve("activation", target)
    near = _activation_derivatives(label, act, torch.tensor([-ACTIVATION_STEP, ACTIVATION_STEP], dtype=DTYPE))
    d1_0, d2_0 = float(near[1].mean()), float(near[2].mean())
    u = torch.linspace(-GRID_RANGE, GRID_RANGE, 20000, dtype=DTYPE)
    derivs = _activation_derivatives(label, act, u)
    finite = all(bool(torch.isfinite(v).all()) for v in derivs + near)
    step = float(u[1] - u[0])
    if finite:
        sup3, sup3_inner, grows = _grows(derivs[3], u.abs() <= GRID_RANGE / 5)
        jump = max(_max_jump(derivs[k], derivs[k + 1], step) for k in range(4))
    else:
        sup3, sup3_inner, grows, jump = float("inf"), float("inf"), True, float("inf")
    smooth = finite and jump <= 0
    problems = []
    if abs(d1_0) >= ACTIVATION_TOL:
        problems.append(f"sigma'(0) = {d1_0:.4g}, not 0")
    if abs(d2_0 - 1) >= ACTIVATION_TOL:
        problems.append(f"sigma''(0) = {d2_0:.4g}, not 1")
    if not finite:
        problems.append("non-finite values or derivatives up to order 3")
    elif grows:
        problems.append(
            f"sigma''' grows (sup |sigma'''| = {sup3:.3g} on [-{GRID_RANGE:g}, {GRID_RANGE:g}]"
            f" vs {sup3_inner:.3g} on [-{GRID_RANGE / 5:g}, {GRID_RANGE / 5:g}])"
        )
    if finite and not smooth:
        problems.append(f"not C^3 (a derivative of order <= 3 jumps by up to {jump:.3g} between grid points)")
    holds = not problems
    if holds:
        message = (
            f"activation {label!r}: sigma'(0) = {d1_0:.2g}, sigma''(0) = {d2_0:.6g},"
            f" sup |sigma'''| = {sup3:.3g} on [-{GRID_RANGE:g}, {GRID_RANGE:g}] (bounded)"
        )
    else:
        message = f"activation {label!r} violates Assumption 2: " + "; ".join(problems)
    return {
        "assumption": 2,
        "component": label,
        "holds": holds,
        "message": message,
        "d1_at_0": d1_0,
        "d2_at_0": d2_0,
        "sup_d3": sup3,
        "sup_d3_inner": sup3_inner,
        "d3_bounded": finite and not grows,
        "smooth": smooth,
        "max_jump": max(jump, 0.0) if finite else float("inf"),
        "tolerance": ACTIVATION_TOL,
        "range": GRID_RANGE,
    }


# --------------------------------------------------------------------------- Assumption 3


@memoize
def check_loss(name, fn=None) -> dict:
    """Assumption 3: loss(t, y) convex, C^1 and Lipschitz in t.

    On the grid t in [-R, R] (1000 points, 0 excluded) x y in [-R, R] (41 points), R =
    ``GRID_RANGE``, with loss' and loss'' in t by autograd: convex iff min loss'' >= -tol and
    loss' is non-decreasing in t between grid points (catches concave kinks that autograd misses;
    Huber's loss'' is 0 outside its quadratic zone, which is fine), tol = ``LOSS_TOL`` (1 +
    sup|loss'|); C^1 iff loss' is finite and has no jump beyond what loss'' allows; Lipschitz iff
    sup |loss'| over [-R, R]^2 is at most ``GROWTH`` times its sup over [-R/5, R/5]^2.
    Extra keys: ``min_d2``, ``min_d1_increment``, ``convex``, ``c1``, ``max_jump``, ``sup_d1``,
    ``sup_d1_inner``, ``lipschitz``, ``range``.
    """
    label, target = _target("loss", name, fn)
    _, loss, _ = resolve("loss", target)
    t = torch.linspace(-GRID_RANGE, GRID_RANGE, 1000, dtype=DTYPE)
    y = torch.linspace(-GRID_RANGE, GRID_RANGE, 41, dtype=DTYPE)
    tt, yy = torch.meshgrid(t, y, indexing="xy")  # shape (41, 2000): rows fixed y, t along dim 1
    d1, d2 = loss_derivatives(label, loss, tt, yy, order=2)
    finite = bool(torch.isfinite(d1).all() and torch.isfinite(d2).all())
    if finite:
        sup1, sup1_inner, grows = _grows(d1, (tt.abs() <= GRID_RANGE / 5) & (yy.abs() <= GRID_RANGE / 5))
        tol = LOSS_TOL * (1 + sup1)
        min_d2, min_inc = float(d2.min()), float(d1.diff(dim=1).min())
        convex = min_d2 >= -tol and min_inc >= -tol
        jump = _max_jump(d1, d2, float(t[1] - t[0]), dim=1)
    else:
        sup1 = sup1_inner = min_d2 = min_inc = jump = float("nan")
        grows, convex = True, False
    c1 = finite and jump <= 0
    problems = []
    if not finite:
        problems.append("loss' or loss'' is not finite on the grid")
    if finite and not convex:
        problems.append(f"not convex in t (min loss'' = {min_d2:.3g}, min increment of loss' = {min_inc:.3g})")
    if finite and not c1:
        problems.append(f"not C^1 in t (loss' jumps by up to {jump:.3g})")
    if finite and grows:
        problems.append(
            f"not Lipschitz in t (sup |loss'| = {sup1:.3g} on [-{GRID_RANGE:g}, {GRID_RANGE:g}]^2"
            f" vs {sup1_inner:.3g} on [-{GRID_RANGE / 5:g}, {GRID_RANGE / 5:g}]^2)"
        )
    holds = not problems
    if holds:
        message = (
            f"loss {label!r} is convex (min loss'' = {min_d2 + 0.0:.3g}), C^1 and Lipschitz in t"
            f" (sup |loss'| = {sup1:.3g} on [-{GRID_RANGE:g}, {GRID_RANGE:g}]^2)"
        )
    else:
        message = f"loss {label!r} violates Assumption 3: " + "; ".join(problems)
    return {
        "assumption": 3,
        "component": label,
        "holds": holds,
        "message": message,
        "min_d2": min_d2,
        "min_d1_increment": min_inc,
        "convex": convex,
        "c1": c1,
        "max_jump": max(jump, 0.0) if finite else float("nan"),
        "sup_d1": sup1,
        "sup_d1_inner": sup1_inner,
        "lipschitz": finite and not grows,
        "range": GRID_RANGE,
    }


# --------------------------------------------------------------------------- Assumption 5


@memoize
def check_pair(link, loss, r: int, link_fn=None, loss_fn=None) -> dict:
    """Assumption 5: M = E[loss'(0, y) (z z^T - I_r)], z ~ N(0, I_r), y = g(z), has full rank r.

    M comes from ``theory.population_moments`` (quadrature or quasi-Monte Carlo, with an error
    estimate of its entries). holds iff ratio = min|lambda| / max|lambda| > ``PAIR_RATIO_TOL`` and
    min|lambda| > ``PAIR_MARGIN`` * r * error (Weyl: an entrywise error e moves eigenvalues by at
    most r e), so a rank-deficient M is never reported as full rank.
    Extra keys: ``link``, ``loss``, ``r``, ``M`` (r x r list), ``eigenvalues`` (sorted by
    |lambda| descending), ``ratio``, ``isotropic`` (E[loss'(0, y)]), ``tolerance``, ``error``,
    ``method``.
    """
    link_label, link_target = _target("link", link, link_fn)
    loss_label, loss_target = _target("loss", loss, loss_fn)
    moments = theory.population_moments(link_target, loss_target, r)
    eigenvalues, ratio = eigen_summary(moments["M"])
    smallest, error = abs(eigenvalues[-1]), moments["error"]
    resolved = smallest > PAIR_MARGIN * r * error
    holds = ratio > PAIR_RATIO_TOL and resolved
    where = f"M for link {link_label!r} under loss {loss_label!r} (r = {r})"
    numbers = f"eigenvalues [{', '.join(f'{v:.4g}' for v in eigenvalues)}], min/max |lambda| = {ratio:.3g}"
    if holds:
        message = f"{where} has full rank: {numbers} (tolerance {PAIR_RATIO_TOL:g}, error {error:.1e})"
    elif ratio <= PAIR_RATIO_TOL:
        message = (
            f"{where} is rank-deficient: {numbers} <= {PAIR_RATIO_TOL:g}; a direction of the hidden"
            f" subspace is invisible to stage 1 under this loss (another preprocessing T(y) may reveal it)"
        )
    else:
        message = (
            f"{where} may be rank-deficient: {numbers}, but the smallest |lambda| = {smallest:.3g}"
            f" is not clearly above the estimation error {error:.1e}"
        )
    return {
        "assumption": 5,
        "component": f"{link_label}+{loss_label}",
        "holds": holds,
        "message": message,
        "link": link_label,
        "loss": loss_label,
        "r": r,
        "M": moments["M"].tolist(),
        "eigenvalues": eigenvalues,
        "ratio": ratio,
        "isotropic": moments["isotropic"],
        "tolerance": PAIR_RATIO_TOL,
        "error": error,
        "method": moments["method"],
    }


def check_components(link, loss, activation, r: int) -> list[dict]:
    """The checks for one run: Assumption 1 on the link, 2 on the activation, 3 on the loss and
    5 on (link, loss), in that order (each cached)."""
    return [check_link(link, r), check_activation(activation), check_loss(loss), check_pair(link, loss, r)]


__all__ = ["check_link", "check_activation", "check_loss", "check_pair", "check_components"]
