"""Readable forms of assumption-check reports (lists of dicts from ``assumptions.check_components``):
a plain-text table for the terminal, a Markdown table for TensorBoard, one-line warnings."""

from __future__ import annotations

import math

FIXED = ("assumption", "component", "holds", "message")


def _number(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.3g}"
    return str(value)


KEY_NUMBERS = {1: ("degree", "residual"), 2: ("d1_at_0", "d2_at_0", "sup_d3"), 3: ("min_d2", "sup_d1"),
               5: ("eigenvalues", "ratio", "isotropic")}


def key_numbers(check: dict, limit: int = 4) -> str:
    """'name=value, ...' for the key numbers of a check (short lists of numbers included)."""
    keys = KEY_NUMBERS.get(check.get("assumption"))
    if keys and all(key in check for key in keys):
        check = {key: check[key] for key in keys}
    parts = []
    for key, value in check.items():
        if key in FIXED or value is None:
            continue
        if isinstance(value, (int, float)):
            parts.append(f"{key}={_number(value)}")
        elif isinstance(value, (list, tuple)) and 0 < len(value) <= 6 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            parts.append(f"{key}=[{', '.join(_number(v) for v in value)}]")
        if len(parts) == limit:
            break
    return ", ".join(parts)


def _rows(checks: list[dict]) -> list[tuple[str, str, str, str, str]]:
    return [(str(c.get("assumption", "")), str(c.get("component", "")), "yes" if c.get("holds") else "NO",
             key_numbers(c), str(c.get("message", ""))) for c in checks]


HEADER = ("assumption", "component", "holds", "numbers", "message")


def text_table(checks: list[dict]) -> str:
    """A fixed-width table, one line per check."""
    rows = [HEADER, *_rows(checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip() for row in rows)


def markdown_table(checks: list[dict]) -> str:
    """A Markdown table (TensorBoard's TEXT tab renders it)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for row in _rows(checks):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def violations(checks: list[dict]) -> list[dict]:
    return [c for c in checks if not c.get("holds")]


def warning_line(check: dict) -> str:
    """'assumption 2 (activation 'relu'): <message>' on one line."""
    message = " ".join(str(check.get("message", "")).split())
    return f"assumption {check.get('assumption')} ({check.get('component')}): {message}"


def jsonable(value):
    """A copy safe for strict JSON: non-finite floats become None (the message keeps the words)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def hermite_text(report: dict) -> str:
    """'2', or 'not a polynomial up to degree 6' (the cap of the expansion)."""
    if report.get("hermite_polynomial", report.get("hermite_degree") is not None):
        return str(report["hermite_degree"])
    return f"not a polynomial up to degree {report['hermite_cap']}"


def format_theory(report: dict) -> str:
    """``theory.theory_report`` for the terminal."""
    r = report["r"]
    rows = [f"link {report['link']!r}, loss {report['loss']!r}, r = {r}", "",
            "M = E[loss'(0, y) (z z^T - I_r)], z ~ N(0, I_r), y = g(z):"]
    rows += ["  [" + "  ".join(f"{v:9.4f}" for v in row) + " ]" for row in report["M"]]
    rows += [
        f"  ({report['M_method']}; error of the entries {report['M_error']:.1e})",
        f"eigenvalues of M      {', '.join(f'{v:.4g}' for v in report['eigenvalues'])}"
        f"   (min/max |lambda| = {report['ratio']:.3g})",
        f"isotropic part        E[loss'(0, y)] = {report['isotropic']:.4g}",
        f"Hermite degree        {hermite_text(report)}"
        f"   (variance fraction beyond degree {report['hermite_cap']}: {report['hermite_residual']:.2g})",
    ]
    if not report.get("alpha_c_computed", True):
        rows.append(f"alpha_c               {report['alpha_c_method']}")
    else:
        alpha = "inf" if report["alpha_c"] is None else f"{report['alpha_c']:.4g}"
        error = "inf" if report["alpha_c_error"] is None else f"{report['alpha_c_error']:.1e}"
        rows += [
            f"alpha_c               {alpha}   (n = alpha_c * d samples: optimal spectral"
            f" weak-recovery threshold; relative error {error})",
            f"  ({report['alpha_c_method']})",
        ]
    return "\n".join(rows)


def format_limit(limit: dict) -> str:
    """``limit.bayes_optimal`` for the terminal: one row per alpha (test MSE relative to Var(y),
    as ``test_rel_mse`` of a run)."""
    r, variance = limit["r"], limit["link_std"] ** 2 + limit["noise"] ** 2
    width = max(len("principal cosines"), 8 * r)
    rows = [f"Bayes-optimal limit (d -> infinity), link {limit['link']!r}, r = {r}, label noise "
            f"{limit['noise_relative']:g} x std g = {limit['noise']:.3g}:",
            f"{'alpha':>8}  {'principal cosines':>{width}}  {'eigenvalues of Q':>{width}}  {'test MSE/Var(y)':>15}"
            f"  {'error':>8}  converged"]
    for i, alpha in enumerate(limit["alpha"]):
        cos = " ".join(f"{c:7.4f}" for c in limit["cosines"][i])
        eig = " ".join(f"{v:7.4f}" for v in limit["eigenvalues"][i])
        rows.append(f"{alpha:>8.4g}  {cos:>{width}}  {eig:>{width}}  {limit['label_mse'][i] / variance:>15.4f}"
                    f"  {limit['error'][i]:>8.1e}  {'yes' if limit['converged'][i] else 'no'}")
    rows.append(f"  ({limit['method']})")
    return "\n".join(rows)


def run_summary(results: dict) -> str:
    """A run's results.json for the terminal: cosines, baseline, mass, test error, times."""
    cos = ", ".join(f"{c:.3f}" for c in results["principal_cosines"])
    spectral = results["spectral_principal_cosines"]
    spec = "off" if spectral is None else (", ".join(f"{c:.3f}" for c in spectral)
                                           + f"  (strongest: {results['spectral_estimator']})")
    return (
        f"principal cosines   {cos}\n"
        f"spectral baseline   {spec}\n"
        f"subspace mass       {results['subspace_mass']:.3f}\n"
        f"test relative MSE   {results['test_rel_mse']:.4f}\n"
        f"time                stage 1 {results['timings']['stage1']:.1f} s, stage 2 {results['timings']['stage2']:.1f} s"
    )
