"""State evolution of Bayes-optimal AMP for Gaussian multi-index models (issue 14).

Model: z = U x ~ N(0, I_r), y = g(z) + sigma eps (eps ~ N(0, 1)), Gaussian prior on U, n / d =
alpha, d -> inf (Aubin et al. 2018; Troiani et al. 2024). With Q the r x r overlap and V = I - Q,
omega ~ N(0, Q), z | omega ~ N(omega, V) (the joint law of omega = Q z + (Q - Q^2)^{1/2} xi with
z; written z = omega + V^{1/2} u, u ~ N(0, I)):

    g_out(y, omega) = V^{-1} (E[z | y, omega] - omega) = V^{-1/2} E[u | y, omega],
    Qhat = alpha E[g_out g_out^T],   Q_new = Qhat (I + Qhat)^{-1},   V_new = (I + Qhat)^{-1}.

Linearised at Q = 0 this is Qhat = alpha E_y[G(y) Q G(y)], G(y) = E[z z^T - I | y], so weak
recovery starts at alpha_c = 1 / (top eigenvalue of M -> E_y[G M G]).

``bayes_optimal_overlap`` iterates this to its fixed points (Q, principal cosines sqrt(eig Q),
Bayes-optimal test error), a deterministic quadrature (no sampling) in float64 on the CPU, for r <= 3.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Sequence

import numpy as np
import torch

from mim_lightning.errors import MimError

DTYPE = torch.float64
VERSION = 2  # of the method: raised with every change that moves its results (``method_key``)
SPREAD = 0.5  # cell half-width in y = SPREAD h |grad_u g|; much below 0.5, y tells cells of one level set apart
HALF_WIDTH = 5.0  # u-grids cover [-5, 5]^r (points used: |u| <= 5 + h sqrt(r) / 2)
# Per r: (u-grid points per dimension, y-bins, finest omega spacing). A second u-grid with
# (n + 1) // 2 points (spacing 2h) serves the Richardson extrapolation S = (4 S_h - S_2h) / 3.
RESOLUTION = {1: (201, 4096, 0.06), 2: (33, 1024, 0.5), 3: (17, 512, 1.0)}
# omega = Q^{1/2} xi, xi on a trapezoid grid pruned to the ball |xi| <= OMEGA_RADIUS[r], spacing
# the first of SPACINGS <= KAPPA[r] min eig V / sqrt(max eig Q) (the width of the dip in
# E[g_out g_out^T | omega] around critical points of g), but no finer than the resolution allows.
KAPPA = {1: 0.3, 2: 0.8, 3: 1.0}
OMEGA_RADIUS = {1: 5.5, 2: 4.5, 3: 4.0}
SPACINGS = (1.4, 1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.09, 0.06)  # 1.4: only for ``error``
CHUNK_POINTS = 2**16  # (omega node, u-grid point) pairs per call of ``_binned``
# ``_jump``: extrapolate when successive steps shrink by a ratio in this range, along one direction
JUMP_RATIOS = (0.3, 0.999)
JUMP_ALIGNMENT = 0.1
JUMP_AGREEMENT = 0.1
JUMP_REACH = 0.1  # a jump at most divides 1 - max eig Q by 10


def check_inputs(link, r, alphas, noise) -> tuple[int, list[float], float]:
    """(r, alphas, noise) as int, floats and float, or a MimError naming the bad input."""
    if not callable(link):
        raise MimError(f"link must be a callable g(z) on tensors of shape (..., r), got {type(link).__name__}")
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= 3:
        raise MimError(f"r must be 1, 2 or 3 for the Bayes-optimal state evolution (tensor quadrature), got {r!r}")
    try:
        alphas = [float(a) for a in alphas]
    except (TypeError, ValueError):
        raise MimError(f"alphas must be a sequence of finite numbers > 0, got {alphas!r}") from None
    if not alphas or not all(math.isfinite(a) and a > 0 for a in alphas):
        raise MimError(f"alphas must be a non-empty sequence of finite numbers > 0, got {alphas}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
        raise MimError(f"noise must be a finite number >= 0 (relative to std g(z)), got {noise!r}")
    return int(r), alphas, float(noise)


def _sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """M^{1/2} (or M^{-1/2}) of a symmetric PSD matrix, eigenvalues clamped at 0 (1e-16)."""
    e, vecs = torch.linalg.eigh((m + m.T) / 2)
    e = e.clamp(min=1e-16).rsqrt() if inverse else e.clamp(min=0).sqrt()
    return (vecs * e) @ vecs.T


def _grid(r: int, n: int) -> dict:
    """The uniform grid of [-5, 5]^r with n points per dimension (spacing h, 'ij' order), as
    ``_binned`` reads it: the points kept, |u| <= 5 + h sqrt(r) / 2 (``uk``, and |uk|^2 / 2); the
    ``points`` at which it evaluates the link (the kept ones and their neighbours along each axis);
    and per kept point the rows of ``points`` that are the point itself (``at``) and its upper and
    lower neighbours along each axis (``up``, ``down``; the point itself at a face of the grid),
    with their distance (``spacing``: 2h inside, h at a face): torch.gradient's differences."""
    x = torch.linspace(-HALF_WIDTH, HALF_WIDTH, n, dtype=DTYPE)
    u = torch.cartesian_prod(*[x] * r).reshape(-1, r)
    h = float(x[1] - x[0])
    keep = ((u * u).sum(1) <= (HALF_WIDTH + h * r**0.5 / 2) ** 2).nonzero()[:, 0]
    coords = torch.cartesian_prod(*[torch.arange(n)] * r).reshape(-1, r)[keep]
    strides = torch.tensor([n ** (r - 1 - d) for d in range(r)])
    inside_up, inside_down = coords < n - 1, coords > 0
    rows = torch.cat([keep, (keep[:, None] + strides * inside_up).flatten(), (keep[:, None] - strides * inside_down).flatten()])
    needed, position = torch.unique(rows, return_inverse=True)
    g = len(keep)
    return dict(h=h, points=u[needed], uk=u[keep], half_sq=(u[keep] ** 2).sum(1) / 2, at=position[:g],
                up=position[g:g * (r + 1)].reshape(g, r), down=position[g * (r + 1):].reshape(g, r),
                spacing=h * (inside_up.to(DTYPE) + inside_down.to(DTYPE)))


@functools.lru_cache(maxsize=64)
def _omega_rule(r: int, level: int, even: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes xi and weights for E over xi ~ N(0, I_r): the trapezoid rule of spacing
    SPACINGS[level] on the ball |xi| <= OMEGA_RADIUS[r], weights phi(xi) (a + b |xi|^2) with a, b
    such that the rule is exact for 1 and |xi|^2 (which the truncation would miss); for an ``even``
    link only one node of each pair +-xi, with twice the weight."""
    m = int(OMEGA_RADIUS[r] / SPACINGS[level] + 1e-9)
    xi = torch.cartesian_prod(*[torch.arange(-m, m + 1, dtype=DTYPE) * SPACINGS[level]] * r).reshape(-1, r)
    xi = xi[(xi * xi).sum(1) <= OMEGA_RADIUS[r] ** 2 + 1e-9]
    phi, sq = torch.exp(-(xi * xi).sum(1) / 2), (xi * xi).sum(1)
    m0, m2, m4 = (float((phi * sq**k).sum()) for k in (0, 1, 2))
    moments = torch.tensor([[m0, m2], [m2, m4]], dtype=DTYPE)
    a, b = torch.linalg.solve(moments, torch.tensor([1.0, float(r)], dtype=DTYPE))
    w = phi * (a + b * sq)
    if even:  # S(-omega) = S(omega) for an even link: keep one of each pair xi, -xi
        first = xi[torch.arange(len(xi)), (xi != 0).to(torch.int8).argmax(1)]
        w = torch.where(first == 0, w, 2 * w)
        xi, w = xi[first >= 0], w[first >= 0]
    return xi, w


def _setup(r: int, resolution) -> dict:
    """The u-grids of spacing h and 2h, the number of y-bins and the finest omega level allowed."""
    n, bins, finest = resolution
    top = max(i for i, sp in enumerate(SPACINGS) if sp >= finest - 1e-12)
    return dict(r=r, bins=int(bins), top=top, grids=[_grid(r, int(n)), _grid(r, (int(n) + 1) // 2)])


def _level(q, v, s, floor=0) -> int:
    """Index into SPACINGS for (Q, V): spacing <= KAPPA min eig V / sqrt(max eig Q), not below ``floor``."""
    v_min, q_max = float(torch.linalg.eigvalsh(v)[0]), float(torch.linalg.eigvalsh(q)[-1])
    target = KAPPA[s["r"]] * max(v_min, 0.0) / max(q_max, 1e-300) ** 0.5
    level = next((i for i, sp in enumerate(SPACINGS) if sp <= target), len(SPACINGS) - 1)
    return max(floor, 1, min(level, s["top"]))


def _call(link, z: torch.Tensor) -> torch.Tensor:
    """g(z) as float64, checked: shape (...) and finite."""
    with torch.no_grad():
        y = link(z)
    if not isinstance(y, torch.Tensor) or y.shape != z.shape[:-1]:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise MimError(f"link must map a tensor of shape (..., r) to one of shape (...), got {got}")
    y = y.to(DTYPE)
    if not torch.isfinite(y).all():
        raise MimError("link returned non-finite values on the quadrature grid (|z| up to ~9)")
    return y


def _binned(link, t, wxi, v_half, sigma, s, grid) -> tuple[torch.Tensor, float]:
    """The omega nodes' terms of S = E_omega sum_b E[u 1_b | omega] E[u 1_b | omega]^T / P(b | omega)
    (= E[E[u|y,omega] E[u|y,omega]^T] with y read in bins b) and of E_omega Var(g(z) | omega) on one
    u-grid: their sums weighted by ``wxi``; t = V^{-1/2} omega at the nodes.

    z = V^{1/2} (h m + u_i): the u-grid is shifted by the lattice point h m nearest t, so the points
    z stay on one lattice and omega enters only through the weights w_i prop. to phi(u_i - delta),
    delta = t - h m (smooth in omega; a grid moving with omega makes E[u | y, omega] ripple). Each
    cell spreads its mass uniformly over g_i +- SPREAD h |grad_u g_i| (its own y-extent for g
    linear on the cell, so y never tells apart the cells of one level set), deposited exactly
    (CIC deposit of the piecewise-linear CDF's second derivative, one cumsum) on the node's own
    ``bins`` bins over its y-range +- 5 sigma; the noise multiplies their spectrum by that of
    N(0, sigma^2). No likelihood is evaluated, so no noise is too small to resolve.

    The deposit of the sums of u_i - delta is that of u_i less delta times the mass (the deposit
    is linear); a CIC deposit of weight v at x = b + f (bins b and b + 1 get (1 - f) v and f v),
    summed up to each bin, is A - B with A the running sum of v and B the f v deposited at b.
    """
    r, bins = s["r"], s["bins"]
    h, k_nodes = grid["h"], len(t)
    shift = h * torch.round(t / h)
    delta = t - shift
    w = torch.exp(delta @ grid["uk"].T - grid["half_sq"])  # phi(u - delta) up to a factor per node
    w = w / w.sum(1, keepdim=True)
    g_all = _call(link, (grid["points"] @ v_half)[None] + (shift @ v_half)[:, None, :])
    slopes = [(g_all[:, grid["up"][:, d]] - g_all[:, grid["down"][:, d]]) / grid["spacing"][:, d] for d in range(r)]
    a = SPREAD * h * torch.sqrt(sum(d * d for d in slopes))
    g = g_all[:, grid["at"]]
    mean = (g * w).sum(1)
    label_var = float(wxi @ ((g * g * w).sum(1) - mean * mean).clamp(min=0))

    lo = (g - a).amin(1, keepdim=True) - 5 * sigma
    hi = (g + a).amax(1, keepdim=True) + 5 * sigma
    dy = ((hi - lo) / (bins - 4)).clamp(min=1e-12 * (1 + lo.abs()))
    half = (a / dy).clamp(0.5, (bins - 3) / 2)  # box half-width in bins
    centre = ((g - lo) / dy + 2).clamp(half, bins - 2 - half)
    m = w / (2 * half)  # density of the box, per bin
    ends = torch.stack([centre - half, centre + half])  # CDF'' = m (delta_lo - delta_hi), CIC-deposited
    fl = ends.floor()
    idx = (fl.long() + (torch.arange(k_nodes) * bins)[:, None]).flatten()
    signed = torch.stack([m, -m])
    fraction = signed * (ends - fl)
    p = torch.stack([torch.bincount(idx, (signed * x).flatten(), minlength=k_nodes * bins).reshape(k_nodes, bins).cumsum(-1)
                     - torch.bincount(idx, (fraction * x).flatten(), minlength=k_nodes * bins).reshape(k_nodes, bins)
                     for x in [1.0, *grid["uk"].unbind(-1)]])  # bin masses of 1 and u, per node

    if sigma > 0:  # y_obs = y + sigma eps: multiply each node's spectrum by that of N(0, sigma^2)
        freq = torch.fft.rfftfreq(2 * bins, dtype=DTYPE)[None, :]
        gain = torch.exp(-((2 * math.pi * sigma / dy) * freq) ** 2 / 2)
        p = torch.fft.irfft(torch.fft.rfft(p, 2 * bins) * gain, 2 * bins)[..., :bins]

    mass, num = p[0], p[1:] - delta.T[:, :, None] * p[0]
    inv = torch.where(mass > 1e-12, 1 / mass.clamp(min=1e-12), 0.0)
    return wxi @ torch.einsum("ikb,jkb,kb->kij", num, num, inv).reshape(k_nodes, r * r), label_var


def _moments(link, q, v, sigma, s, level, extrapolate=True, stop=None) -> tuple[torch.Tensor, float]:
    """S of ``_binned`` (r x r) with the omega rule of ``level``, Richardson-extrapolated
    (4 S_h - S_2h) / 3 unless not ``extrapolate``, and E_omega Var(g(z) | omega) (grid h). The
    nodes go through ``_binned`` in chunks of about CHUNK_POINTS (node, point) pairs (the arrays
    stay in the processor's cache), ``stop()`` called before each."""
    r = s["r"]
    xi, wxi = _omega_rule(r, level, s["even"])
    t = xi @ _sqrtm(q) @ _sqrtm(v, inverse=True)
    v_half = _sqrtm(v)
    sums = []
    for grid in s["grids"][:2 if extrapolate else 1]:
        size = max(1, CHUNK_POINTS // len(grid["points"]))
        parts = []
        for i in range(0, len(t), size):
            if stop is not None:
                stop()
            parts.append(_binned(link, t[i:i + size], wxi[i:i + size], v_half, sigma, s, grid))
        sums.append((sum(part[0] for part in parts), sum(part[1] for part in parts)))
    (fine, label_var), coarse = sums[0], sums[1:]
    if coarse:
        fine = (4 * fine - coarse[0][0]) / 3
    return fine.reshape(r, r), label_var


def _update(link, q, v, alpha, sigma, s, level, extrapolate=True, stop=None):
    """One SE step: Qhat = alpha V^{-1/2} S V^{-1/2} (made PSD); returns (Q_new, V_new, Qhat, label_var)."""
    r = s["r"]
    m, label_var = _moments(link, q, v, sigma, s, level, extrapolate, stop)
    vi = _sqrtm(v, inverse=True)
    qhat = alpha * vi @ m @ vi
    e, vecs = torch.linalg.eigh((qhat + qhat.T) / 2)
    qhat = (vecs * e.clamp(min=0)) @ vecs.T
    v_new = torch.linalg.inv(torch.eye(r, dtype=DTYPE) + qhat)
    v_new = (v_new + v_new.T) / 2
    return qhat @ v_new, v_new, qhat, label_var


def _ratio(previous, step) -> float | None:
    """rho when ``step`` = rho ``previous`` to JUMP_ALIGNMENT of its length, rho in JUMP_RATIOS
    (the iteration converges geometrically along one direction); else None."""
    rho = float((step * previous).sum() / (previous * previous).sum())
    aligned = float((step - rho * previous).norm()) <= JUMP_ALIGNMENT * float(step.norm())
    return rho if aligned and JUMP_RATIOS[0] <= rho <= JUMP_RATIOS[1] else None


def _jump(q, step, rho, before) -> torch.Tensor | None:
    """Aitken's extrapolation of the iteration to its limit, or None: when the steps shrink by a
    steady ratio (the last ``rho`` within JUMP_AGREEMENT (1 - rho) of the one ``before``), the
    steps still to come sum to rho / (1 - rho) times the last. The eigenvalues of the result are
    kept in [0, 1 - JUMP_REACH (1 - max eig Q)] (V = I - Q stays positive definite)."""
    if rho is None or before is None or abs(rho - before) > JUMP_AGREEMENT * (1 - rho):
        return None
    e, vecs = torch.linalg.eigh(q + rho / (1 - rho) * step)
    e = e.clamp(0, 1 - JUMP_REACH * (1 - float(torch.linalg.eigvalsh(q)[-1])))
    jumped = (vecs * e) @ vecs.T
    return (jumped + jumped.T) / 2


def _iterate(link, q, v, alpha, sigma, s, tol, max_iter, damping, extrapolate=True, coarser=0, stop=None):
    """Iterate Q <- (1 - damping) F(Q) + damping Q until max |Q_new - Q| < tol; the omega level
    only ever refines along the way (so the map cannot flip between two rules). Where the steps
    shrink geometrically along one direction, Q jumps to their limit (``_jump``; not to where the
    omega level would refine) and the iteration goes on from there: the same stopping rule,
    reached in far fewer steps next to a transition. ``stop()`` is called between and within the
    steps."""
    eye = torch.eye(s["r"], dtype=DTYPE)
    label_var, level, previous, before = float("nan"), 0, None, None
    for it in range(1, max_iter + 1):
        refined = _level(q, v, s, level)
        if refined != level:  # another map: its steps are not compared with the last ones
            level, previous, before = refined, None, None
        q_new, v_new, _, label_var = _update(link, q, v, alpha, sigma, s, level - coarser, extrapolate, stop)
        if damping:
            q_new, v_new = (1 - damping) * q_new + damping * q, (1 - damping) * v_new + damping * v
        step = (q_new + q_new.T) / 2 - q
        q, v = q + step, v_new
        if float(step.abs().max()) < tol:
            return q, v, it, True, label_var
        if previous is None:  # the first step, or the first after a jump: no ratio yet
            previous = step
            continue
        rho = _ratio(previous, step)
        jumped = _jump(q, step, rho, before)
        previous, before = step, rho
        if jumped is not None and _level(jumped, eye - jumped, s, level) == level:
            q, v, previous = jumped, eye - jumped, None  # the next ratio is compared with this one
    return q, v, max_iter, False, label_var


def link_std(link, r: int) -> float:
    """std g(z), z ~ N(0, I_r), by the quadrature ``bayes_optimal_overlap`` uses at its default
    resolution (the scale of its relative noise)."""
    return _inspect(link, _setup(r, RESOLUTION[r]))


def _inspect(link, s) -> float:
    """std g(z), z ~ N(0, I_r), on the fine u-grid (trapezoid rule); sets s["even"] when
    g(-u) = g(u) on the grid (then S(omega) is even and half the omega nodes suffice)."""
    u = s["grids"][0]["uk"]
    w = torch.exp(-(u * u).sum(1) / 2)
    w = w / w.sum()
    g, g_minus = _call(link, u), _call(link, -u)
    sd = float(((g * g) @ w - (g @ w) ** 2).clamp(min=0).sqrt())
    if not sd > 0:
        raise MimError("link is constant: g(z) has zero variance, there is nothing to learn")
    s["even"] = bool(((g - g_minus).abs() <= 1e-12 * (1 + g.abs())).all())
    return sd


def bayes_optimal_overlap(
    link: Callable[[torch.Tensor], torch.Tensor],
    r: int,
    alphas: Sequence[float],
    noise: float = 0.01,
    *,
    q0: float = 1e-3,
    tol: float = 1e-6,
    max_iter: int = 500,
    damping: float = 0.0,
    warm_start: bool = True,
    error_estimate: bool = True,
    resolution: tuple[int, int, int] | None = None,
    progress: Callable[[dict], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> dict:
    """Fixed points of Bayes-optimal AMP state evolution, one per alpha (module docstring):

        Qhat = alpha E[g_out g_out^T],  g_out = V^{-1/2} E[u | y, omega],  Q <- Qhat (I + Qhat)^{-1},

    iterated from Q_0 = q0 I until max |Q_new - Q| < tol: the fixed point AMP reaches from an
    uninformed start (not the Bayes-optimal one past a first-order transition, where AMP stays on
    the lower branch). With ``warm_start`` (the default) the alphas run in increasing order, each
    from the previous fixed point P as P + q0 (I - P): the same fixed point for a monotone map,
    reached in fewer steps. Where the steps shrink by a steady ratio along one direction (next to
    a transition, thousands of steps), Q jumps to their limit (Aitken) and iterates on from there
    (``_iterate``). ``damping`` d iterates Q <- (1 - d) F(Q) + d Q. ``progress(row)`` is called
    as each alpha is done (its entries of the lists below); ``stop()`` before every chunk of the
    quadrature (well under a second apart), and may raise to end the computation.

    ``noise`` is relative: y = g(z) + noise std(g) eps. 0 (noiseless) is allowed and accurate:
    the quadrature never evaluates the likelihood (see ``_binned``). Measured on he2 (alpha in
    0.3..2, away from the transitions at 0.5 and 1.13): |Q(0.01) - Q(0)| <= 6e-4 and
    |Q(0.03) - Q(0)| <= 4e-3; the weak-recovery threshold moves by +0.02% (0.01), +0.09% (0.03),
    +0.8% (0.1); past perfect recovery Q = 1 - O(noise) instead of 1 (0.9977 at 0.01, alpha 1.2).

    Method (deterministic, no sampling): omega = Q^{1/2} xi with xi on a trapezoid grid (pruned
    ball, weights corrected to integrate 1 and |xi|^2 exactly) whose spacing refines as Q grows
    (<= KAPPA min eig V / sqrt(max eig Q), down to the resolution's finest); u = V^{-1/2}(z - omega)
    on a uniform grid of [-5, 5]^r with n points per dimension, each cell's mass spread in y over
    the cell's own y-extent, binned, then convolved with the noise; E[u | y, omega] = bin sums of u
    / bin mass; the same on a grid of spacing 2h, and the Richardson combination (4 S_h - S_2h) / 3.
    Defaults (n, y-bins, finest omega spacing): r = 1: (201, 4096, 0.06); r = 2: (33, 1024, 0.5);
    r = 3: (17, 512, 1.0); ``resolution`` overrides them.

    Accuracy (noiseless; tests): the weak-recovery threshold of the iterated map matches the exact
    alpha_c to 0.03% (he2, r = 1), 0.3% (sum_he2 and z1z2, r = 2), 2.3% (sum_he2, r = 3: high, the
    r = 3 grid is coarse); he2 reaches Q = 1 from alpha = 1.1287 +- 0.0002 (AMP's perfect-recovery
    threshold for real phase retrieval with Gaussian prior, ~1.13 in Barbier et al., PNAS 2019).
    Links that compress y (saturating, e.g. tanh) converge more slowly in n and bins (their
    noiseless limit is singular: any noise erases the compressed tail).
    ``error`` per alpha = max |Q - Q'|, Q' iterated from Q without the Richardson extrapolation,
    with half the y-bins and the omega grid one step coarser: conservative (it bounded the actual
    error in every check: he2 against an independent 1-d quadrature of the exact he2 SE, actual
    <= 1e-4; sum_he2 against finer resolutions, by ~5-25x for r >= 2), large near transitions.
    The fixed points agree with those of the plain iteration from Q_0 (the method before issue 20)
    to ~1e-5 (tests), except right at a threshold, where the plain iteration stopped while Q still
    crept towards its fixed point (by up to 3e-4 at alpha = alpha_c); these are closer to it.
    Runtime for the 10 alphas 0.5-8 of ``scripts/bench_limit.py`` with ``error``, noise 0.01, 2
    threads on a shared 2-core machine (3 runs, quiet periods): he2 (r = 1) 4.5-4.8 s, 5.0-5.5x
    faster than the plain iteration run back to back; sum_he2 r = 2 2.9-4.4 s (7.9-9.3x); r = 3
    8.0-12.3 s (7.5-12.2x). A loaded machine takes several times longer.

    Returns a dict with per-alpha lists ``alpha``, ``Q`` (r x r lists), ``eigenvalues`` (of Q,
    descending), ``cosines`` (principal cosines of the Bayes estimator, sqrt of those),
    ``iterations``, ``converged``, ``error``, ``z_mse`` (tr(I - Q) = E|z - E[z | data, x]|^2),
    ``label_mse`` (Bayes-optimal test error E[(y - E[y | x, data])^2] = E_omega Var(g(z) | omega)
    + noise^2); and ``noise`` (absolute), ``noise_relative``, ``link_std``, ``r``, ``method``.
    """
    r, alphas, noise = check_inputs(link, r, alphas, noise)
    res = tuple(resolution) if resolution is not None else RESOLUTION[r]
    s = _setup(r, res)
    sd = _inspect(link, s)
    sigma = noise * sd
    eye = torch.eye(r, dtype=DTYPE)
    order = sorted(range(len(alphas)), key=lambda i: alphas[i]) if warm_start else range(len(alphas))
    rows, q_prev = {}, torch.zeros(r, r, dtype=DTYPE)
    for i in order:
        q = q_prev + q0 * (eye - q_prev) if warm_start else q0 * eye
        q, v, its, ok, label_var = _iterate(link, q, eye - q, alphas[i], sigma, s, tol, max_iter, damping, stop=stop)
        err = float("nan")
        if error_estimate:  # from Q again, without Richardson, half the y-bins, omega grid one step coarser
            coarse = dict(s, bins=s["bins"] // 2)
            qc = _iterate(link, q, v, alphas[i], sigma, coarse, tol, max_iter, damping, extrapolate=False, coarser=1,
                          stop=stop)[0]
            err = float((qc - q).abs().max())
        eig = torch.linalg.eigvalsh(q).flip(0).clamp(0, 1)
        rows[i] = dict(alpha=alphas[i], Q=q.tolist(), eigenvalues=eig.tolist(), cosines=eig.sqrt().tolist(),
                       iterations=its, converged=ok, error=err, z_mse=float(r - torch.trace(q)),
                       label_mse=label_var + sigma**2)
        if progress is not None:
            progress(rows[i])
        q_prev = q
    out = {key: [rows[i][key] for i in range(len(alphas))] for key in rows[0]}
    out.update(noise=sigma, noise_relative=noise, link_std=sd, r=r, method=(
        f"Bayes-optimal AMP state evolution from Q_0 = {q0:g} I{' (warm start)' if warm_start else ''}, tol {tol:g}, "
        f"damping {damping:g}, Aitken jumps; deterministic quadrature: u-grids {res[0]}^{r} and {(res[0] + 1) // 2}^{r} on "
        f"[-5, 5]^{r} (Richardson), {res[1]} y-bins, omega trapezoid spacing 1.0 refined down to {res[2]}; "
        f"error = change without Richardson, with half the y-bins and the omega grid one step coarser"))
    return out


def method_key(r: int) -> dict:
    """What decides ``bayes_optimal_overlap``'s results at its default settings, besides the link,
    the alphas and the noise: VERSION, the quadrature's and the iteration's constants for this r
    and the keyword defaults (the key of ``analysis.limit``'s disk cache)."""
    defaults = {name: p.default for name, p in inspect.signature(bayes_optimal_overlap).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in ("resolution", "progress", "stop")}
    return dict(version=VERSION, resolution=RESOLUTION[r], kappa=KAPPA[r], omega_radius=OMEGA_RADIUS[r], spacings=SPACINGS,
                spread=SPREAD, half_width=HALF_WIDTH, jump=[JUMP_RATIOS, JUMP_ALIGNMENT, JUMP_AGREEMENT, JUMP_REACH], **defaults)
