"""A sweep in TensorBoard: ``DIR/tensorboard/<name>/`` per run, named by the sweep folder's name, the
run's number in the grid and its swept values (``sweep_alpha-007_data.alpha=4,seed=1``), each with
its own HParams session (its trial id that name), and ``DIR/tensorboard/sweep/`` with the HParams
experiment (the swept keys first, their values as domains), the figures (IMAGES), the table and the
sweep file (TEXT).

``tensorboard --logdir DIR`` (or ``DIR/tensorboard``) then compares the whole sweep: one run per
seed in SCALARS / TIME SERIES and CUSTOM SCALARS, one row per run in HPARAMS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mim_lightning.config import all_keys, flatten
from mim_lightning.experiments.grid import Run, Sweep
from mim_lightning.experiments.plots import FIGURES
from mim_lightning.training.run_folder import remove_event_files, write_atomic
from mim_lightning.training.tensorboard import Board, hparam_infos

FOLDER = "tensorboard"
SUMMARY = "sweep"  # the sweep's own run (a run's name always holds '-<number>_')
NAMES = "names.json"  # DIR/tensorboard/names.json: {run key: its TensorBoard name}, kept across grids
MAX_NAME = 120  # longer names are cut and get the run's key
UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def run_name(run: Run, prefix: str = "") -> str:
    """``prefix`` and the run's swept values as ``key=value`` joined by ',' (strings unquoted). A
    name that had to be changed to be a folder name (a '/' in a value, too long) ends with '~' and
    the first 8 hex digits of the run's key, so that names stay distinct."""
    name = prefix + (",".join(f"{k}={v}" for k, v in run.values.items()) or run.key)
    safe = UNSAFE.sub("_", name).lstrip(".")
    if safe != name or len(safe) > MAX_NAME:
        safe = f"{safe[:MAX_NAME]}~{run.key[:8]}"
    return safe


def _names(out: Path) -> dict[str, str]:
    path = Path(out) / FOLDER / NAMES
    return json.loads(path.read_text()) if path.is_file() else {}


def name_runs(sweep: Sweep, out: Path) -> dict[str, str]:
    """{run key: TensorBoard name} for the sweep's runs, recorded in ``DIR/tensorboard/names.json``:
    ``<sweep folder's name>-<number>_<swept values>``, numbered in grid order from 1 with at least 3
    digits, so that the names (the HParams trial ids, by which TensorBoard sorts the table) sort
    in grid order and differ between two sweeps under one log folder. A run named before keeps
    its name (a changed grid numbers its new runs after the others)."""
    names = _names(out)
    width = max(3, len(str(len(names) + len(sweep.runs))))
    sweep_name = Path(out).resolve().name
    for run in sweep.runs:
        if run.key not in names:
            names[run.key] = run_name(run, f"{sweep_name}-{len(names) + 1:0{width}d}_")
    (Path(out) / FOLDER).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out) / FOLDER / NAMES, json.dumps(names, indent=1))
    return names


def run_board(out: Path, run: Run) -> Path:
    """The folder of the run's TensorBoard files: its name from ``name_runs`` (the swept values alone
    for a run the sweep's start did not name)."""
    return Path(out) / FOLDER / _names(out).get(run.key, run_name(run))


def clear(path: Path) -> None:
    """Remove a run's TensorBoard event files (and nothing else) before it is trained (again)."""
    remove_event_files(path)


def differing(sweep: Sweep) -> dict[str, list]:
    """{config key: its distinct values} for the keys whose value differs between the sweep's runs
    (swept keys, keys that variants set), swept keys first."""
    values: dict[str, list] = {}
    for run in sweep.runs:
        for key, value in flatten(run.cfg.model_dump()).items():
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
    keys = [k for k in sweep.keys if k in values] + list(values)
    return {k: values[k] for k in dict.fromkeys(keys) if len(values[k]) > 1 and k in all_keys()}


def start(sweep: Sweep, out: Path) -> None:
    """The runs' names (``name_runs``), and ``DIR/tensorboard/sweep/`` afresh with the HParams
    experiment (the keys that differ between runs first, with their values as discrete domains) and
    the sweep file (TEXT)."""
    name_runs(sweep, out)
    path = Path(out) / FOLDER / SUMMARY
    clear(path)
    board = Board(path)
    keys = differing(sweep)
    board.experiment(hparam_infos(first=list(keys), domains=keys))
    sweep_file = Path(out) / "sweep.yaml"
    if sweep_file.is_file():
        board.text("sweep/config", _code(sweep_file.read_text()), "DIR/sweep.yaml: the base config and the swept values.")
    board.close()


def add_figures(out: Path, plots: list[Path], table: str) -> None:
    """The sweep's PNG figures (IMAGES, ``sweep/<figure>``) and the table of means (TEXT) in
    ``DIR/tensorboard/sweep/``."""
    board = Board(Path(out) / FOLDER / SUMMARY)
    for path in plots:
        metric = FIGURES.get(path.stem)
        what = metric.ylabel if metric is not None else path.stem
        board.image(f"sweep/{path.stem}", path.read_bytes(),
                    f"{what} against the swept key ({path.name} in the sweep folder): mean over seeds with the "
                    "min-max band, the spectral baseline dashed, the chance level dotted, alpha_c dash-dotted.")
    board.text("sweep/results", _code(table), "Means over seeds (DIR/results.csv holds every run).")
    board.close()


def _code(text: str) -> str:
    """Text as a Markdown code block (TensorBoard renders Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())
