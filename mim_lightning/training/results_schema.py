"""What a valid results.json of a given run holds: the check a cache applies before it trusts a
finished run's file (it may have been written by another run, edited, or truncated)."""

from __future__ import annotations

import json
import math

from mim_lightning.config import Config

TOLERANCE = 1e-5  # cosines and masses are computed in float32: allow their rounding past [0, 1]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fraction(value) -> bool:
    return _number(value) and -TOLERANCE <= value <= 1 + TOLERANCE


def _cosines(value, r: int, nullable: bool = False) -> str | None:
    """Why ``value`` is not r principal cosines in [0, 1], descending (None when it is)."""
    if value is None and nullable:
        return None
    if not isinstance(value, list) or len(value) != r or not all(_fraction(c) for c in value):
        return f"not a list of {r} cosines in [0, 1]"
    if any(b > a + TOLERANCE for a, b in zip(value, value[1:])):
        return "not in descending order"
    return None


def results_problem(results, cfg: Config) -> str | None:
    """Why ``results`` (a parsed results.json) is not a finished result of the run ``cfg``: written
    for another config, a field missing, of the wrong type or out of range. None when it is."""
    if not isinstance(results, dict):
        return "results.json is not a JSON object"
    if json.dumps(results.get("config"), sort_keys=True) != json.dumps(cfg.model_dump(mode="json"), sort_keys=True):
        return "results.json was written for another config"
    r = cfg.data.r
    checks = {
        "principal_cosines": _cosines(results.get("principal_cosines"), r),
        "spectral_principal_cosines": _cosines(results.get("spectral_principal_cosines"), r, nullable=True),
        "subspace_mass": None if _fraction(results.get("subspace_mass")) else "not a number in [0, 1]",
        "test_rel_mse": None if _number(results.get("test_rel_mse")) and results["test_rel_mse"] >= 0
        else "not a finite number >= 0",
        "history": None if isinstance(results.get("history"), list) and results["history"]
        and all(isinstance(row, dict) and _cosines(row.get("principal_cosines"), r) is None for row in results["history"])
        else f"not a list of rows with {r} principal cosines each",
    }
    for field, problem in checks.items():
        if problem is not None:
            return f"results.json field {field!r} is {problem}"
    return None
