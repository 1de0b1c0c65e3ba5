"""The Bayes-optimal limit on disk (``limit.bayes_optimal``): one JSON file per computation, named by
a hash of its key (the link and the code that defines it, r, the alphas, the noise and every
setting of the method), in the user's cache folder and in a sweep's folder.

A file holds ``{"key", "result", "sha256"}``, the digest taken over the key and the result. It is
written atomically (``run_folder.write_atomic``) and checked when read: a file that is not such a
JSON object, whose key is not the one asked for, whose digest does not match, or whose result does
not have the shape of the key's (one entry per alpha, r x r overlaps, cosines in [0, 1]) is ignored
with a warning, and replaced by a valid copy or a new computation. Delete the folder (or its
bayes-optimal-*.json files) to clear the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

from mim_lightning.training.run_folder import write_atomic

CACHE_ENV = "MIM_CACHE_DIR"  # the user cache folder; default $XDG_CACHE_HOME/mim-lightning or ~/.cache/mim-lightning
FORMAT = 1  # of the files; a file of another format is ignored
PER_ALPHA = ("alpha", "Q", "eigenvalues", "cosines", "iterations", "converged", "error", "z_mse", "label_mse")


def user_folder() -> Path:
    """The user's cache folder: MIM_CACHE_DIR when set, else $XDG_CACHE_HOME/mim-lightning, else
    ~/.cache/mim-lightning."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mim-lightning"


def canonical(value) -> str:
    """The canonical JSON of ``value`` (sorted keys, no spaces; NaN as NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def file_name(key: dict) -> str:
    """'bayes-optimal-<16 hex digits of sha256 of the key>.json'."""
    return f"bayes-optimal-{hashlib.sha256(canonical(key).encode()).hexdigest()[:16]}.json"


def warn(text: str) -> None:
    sys.stderr.write(f"Warning: {text}\n")


def read(folders, key: dict) -> tuple[tuple[dict, Path] | None, list[Path]]:
    """((result, path) from the first folder holding a valid file for ``key``, or None; the
    folders without a valid file). An invalid file is ignored with a warning naming it and why."""
    key = json.loads(canonical(key))  # as it reads back from a file
    found, lacking = None, []
    for folder in map(Path, folders):
        path = folder / file_name(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            lacking.append(folder)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"it cannot be read ({exc})"
        else:
            problem = check(text, key)
        if problem is not None:
            warn(f"ignoring the cached Bayes-optimal limit {str(path)!r}: {problem}; it is replaced")
            lacking.append(folder)
        elif found is None:
            found = json.loads(text)["result"], path
    return found, lacking


def check(text: str, key: dict) -> str | None:
    """What is wrong with the text of a cache file for ``key``, or None when it is valid."""
    try:
        stored = json.loads(text)
    except ValueError:
        return "it is not JSON (a torn or foreign file)"
    if not isinstance(stored, dict) or set(stored) != {"key", "result", "sha256"}:
        return "it is not a mim cache file (no key, result and sha256)"
    if stored["key"] != key:
        return "it holds another computation (its key differs from its name's)"
    if stored["sha256"] != hashlib.sha256(canonical({"key": stored["key"], "result": stored["result"]}).encode()).hexdigest():
        return "its digest does not match its contents (the file was changed or damaged)"
    return shape_problem(stored["result"], key)


def shape_problem(result, key: dict) -> str | None:
    """What in ``result`` does not fit ``key``, or None: per-alpha lists for the key's alphas, r x r
    symmetric finite overlaps with eigenvalues and cosines in [0, 1]."""
    r, alphas = key["r"], key["alphas"]
    if not isinstance(result, dict) or not all(isinstance(result.get(name), list) for name in PER_ALPHA):
        return "its result lacks the per-alpha lists"
    if any(len(result[name]) != len(alphas) for name in PER_ALPHA) or result["alpha"] != alphas:
        return "its result is not for the alphas of its key"
    for q, eig, cos in zip(result["Q"], result["eigenvalues"], result["cosines"]):
        rows = q if isinstance(q, list) and len(q) == r and all(isinstance(row, list) and len(row) == r for row in q) else None
        if rows is None or not all(_finite(x) for row in rows for x in row) or any(
                abs(rows[i][j] - rows[j][i]) > 1e-9 for i in range(r) for j in range(i)):
            return f"an overlap Q is not a finite symmetric {r} x {r} matrix"
        if not (len(eig) == len(cos) == r and all(_finite(x) and 0 <= x <= 1 for x in (*eig, *cos))):
            return "an eigenvalue or cosine is outside [0, 1]"
    return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def write(folders, key: dict, result: dict) -> None:
    """Store ``result`` under ``key`` in each folder (created if needed), replacing what is there; a
    folder that cannot be written is named in a warning and skipped (the cache only saves time)."""
    text = canonical({"key": key, "result": result, "sha256": hashlib.sha256(canonical({"key": key, "result": result}).encode()).hexdigest()})
    for folder in folders:
        path = Path(folder) / file_name(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
        except OSError as exc:
            warn(f"could not cache the Bayes-optimal limit in {str(path)!r} ({exc.strerror or exc}); it is computed again next time")
