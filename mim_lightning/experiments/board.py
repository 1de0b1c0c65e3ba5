"""A sweep in TensorBoard: ``DIR/tensorboard/<name>/`` per run, named by its swept values
(``data.alpha=4,seed=1``), each with its own HParams session, and ``DIR/tensorboard/sweep/`` with
the HParams experiment (the swept keys first, their values as domains), the figures (IMAGES), the
table and the sweep file (TEXT).

``tensorboard --logdir DIR`` (or ``DIR/tensorboard``) then compares the whole sweep: one run per
seed in SCALARS / TIME SERIES and CUSTOM SCALARS, one row per run in HPARAMS.
"""

from __future__ import annotations

import re
from pathlib import Path

from mim_lightning.config import all_keys, flatten
from mim_lightning.experiments.grid import Run, Sweep
from mim_lightning.experiments.plots import FIGURES
from mim_lightning.training.run_folder import remove_event_files
from mim_lightning.training.tensorboard import Board, hparam_infos

FOLDER = "tensorboard"
SUMMARY = "sweep"  # the sweep's own run (a run's name always holds '=')
MAX_NAME = 120  # longer names are cut and get the run's key
UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def run_name(run: Run) -> str:
    """The run's TensorBoard name: its swept values as ``key=value`` joined by ',' (strings
    unquoted). A name that had to be changed to be a folder name (a '/' in a value, too long) ends
    with '~' and the first 8 hex digits of the run's key, so that names stay distinct."""
    name = ",".join(f"{k}={v}" for k, v in run.values.items()) or run.key
    safe = UNSAFE.sub("_", name).lstrip(".")
    if safe != name or len(safe) > MAX_NAME:
        safe = f"{safe[:MAX_NAME]}~{run.key[:8]}"
    return safe


def run_board(out: Path, run: Run) -> Path:
    """The folder of the run's TensorBoard files."""
    return Path(out) / FOLDER / run_name(run)


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
    """``DIR/tensorboard/sweep/`` afresh with the HParams experiment (the keys that differ between
    runs first, with their values as discrete domains) and the sweep file (TEXT)."""
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
