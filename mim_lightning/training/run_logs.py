"""What a run writes to TensorBoard besides the per-step metrics: its header (HParams session,
layout, assumption report), its reference levels and its final metrics."""

from __future__ import annotations

from mim_lightning.analysis.report import markdown_table
from mim_lightning.config import Config
from mim_lightning.core.chance import chance_subspace_mass, mass_per_dimension, median_min_cosine
from mim_lightning.training.results import strongest
from mim_lightning.training.tensorboard import Board, hparam_infos, hparam_values


def log_start(board: Board, cfg: Config, trial: str, assumptions, experiment: bool) -> None:
    """A replica's TensorBoard header: its HParams session (typed config values, trial id), the
    CUSTOM SCALARS layout, the assumption report (TEXT) and, with ``experiment``, the HParams
    experiment (the columns: defining keys first, then the final metrics)."""
    if experiment:
        board.experiment(hparam_infos())
    board.session_start(hparam_values(cfg), trial)
    board.layout()
    if assumptions:
        board.text("assumptions", markdown_table(assumptions), "The assumption checks of the run's link, "
                   "stage-1 loss and activation (`mim check`; docs/theory.md#assumptions).")


def log_references(board: Board, cfg: Config, family: dict, k: int) -> None:
    """Replica k's reference lines (``stage1_reference/*``), constant from step 0 to T1: the strongest
    spectral estimator's smallest principal cosine (``family``: results.spectral_family) and the
    chance levels of that cosine and of the masses."""
    d, r = cfg.data.d, cfg.data.r
    values = {"stage1_reference/principal_cosine_min_chance": median_min_cosine(d, r),
              "stage1_reference/subspace_mass_chance": chance_subspace_mass(d, r),
              "stage1_reference/direction_mass_chance": mass_per_dimension(d)}
    _, best = strongest(family)
    if best is not None:
        values["stage1_reference/principal_cosine_min_spectral"] = min(best)
    board.constant(values, (0, cfg.stage1.steps))


def log_final(board: Board, cfg: Config, results: dict) -> None:
    """A replica's final metrics (``summary/*``, the HParams metrics), each one point at step T1 (not
    a line: they are not curves), and the end of its HParams session."""
    final_metrics = {
        "summary/min_principal_cosine": min(results["principal_cosines"]),
        "summary/subspace_mass": results["subspace_mass"],
        "summary/test_rel_mse": results["test_rel_mse"],
    }
    if results["spectral_principal_cosines"] is not None:
        final_metrics["summary/spectral_min_principal_cosine"] = min(results["spectral_principal_cosines"])
    board.scalars(final_metrics, cfg.stage1.steps)
    board.session_end()
