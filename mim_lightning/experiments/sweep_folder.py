"""The folder of a sweep: which sweep it belongs to, recorded in ``DIR/sweep.yaml`` (the base config
and the swept values), so that two sweeps never share a folder's runs, table or TensorBoard files.

A sweep folder may be reused by the same base config with another grid (the runs are keyed by their
whole config, so finished runs are reused); a different base config (another sweep file, or other
``--set`` values) is refused, and by default goes to a folder of its own (``default_out``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import yaml

from mim_lightning.config import flatten
from mim_lightning.errors import MimError, os_error_line
from mim_lightning.experiments import board
from mim_lightning.experiments.grid import Sweep, sweep_section
from mim_lightning.training.run_folder import SWEEP_FILE, folder_kind, write_atomic

LOCK = ".sweep.lock"


def default_out(path: str | Path, overrides=()) -> Path:
    """``runs/<sweep file name>``; with ``--set`` overrides, ``runs/<name>-<8 hex digits of them>``, so
    that a sweep with other overrides never lands in the folder of the plain one."""
    stem = Path(path).stem
    if not overrides:
        return Path("runs") / stem
    digest = hashlib.sha256(json.dumps(sorted(overrides)).encode()).hexdigest()[:8]
    return Path("runs") / f"{stem}-{digest}"


def base_difference(recorded: dict, base: dict) -> str | None:
    """The first config key whose value differs between two base configs, as 'key (a there, b here)';
    None when they are equal."""
    ours, theirs = flatten(json.loads(json.dumps(base))), flatten(recorded)
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key, "<unset>") != theirs.get(key, "<unset>"):
            return f"{key} ({theirs.get(key, '<unset>')!r} there, {ours.get(key, '<unset>')!r} here)"
    return None


@contextmanager
def folder_lock(out: Path):
    """An exclusive lock on the sweep folder for the moment its identity is checked and written
    (two sweeps started together cannot both claim a new folder)."""
    with open(out / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(out: Path, sweep: Sweep) -> None:
    """Make ``out`` this sweep's folder, or refuse (touching nothing) when it is a run folder, a
    folder mim did not make, or the folder of a sweep with another base config. Writes sweep.yaml
    (the grid may change: it records the latest) and starts the sweep's TensorBoard run."""
    out, where = Path(out), f"--out {str(out)!r}"
    kind = folder_kind(out)
    if kind == "run":
        raise MimError(f"{where} is a mim run folder (config.yaml, status.json), not a sweep folder; choose another --out")
    if kind == "other":
        raise MimError(f"{where} is not empty and is not a mim sweep folder (no {SWEEP_FILE}); mim writes only into "
                       f"new, empty or its own folders: choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MimError(f"--out: cannot create the folder: {os_error_line(exc, out)}") from None
    base = sweep.base.model_dump()
    with folder_lock(out):
        recorded_file = out / SWEEP_FILE
        if recorded_file.is_file():
            try:
                recorded = yaml.safe_load(recorded_file.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise MimError(f"{str(recorded_file)!r} cannot be read ({exc}); choose another --out") from None
            recorded.pop("sweep", None)
            difference = base_difference(recorded, base)
            if difference is not None:
                raise MimError(f"{where} holds another sweep: its base config differs in {difference}; "
                               f"choose another --out (finished runs are never mixed between sweeps)")
        write_atomic(recorded_file, yaml.safe_dump({**base, "sweep": sweep_section(sweep)}, sort_keys=False))
        board.start(sweep, out)
