"""A run's plan: what is decided once, before anything is computed (``plan_run``), and the
cheap check of a sweep's runs (``validate``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
import lightning as L

from mim_lightning.analysis.assumptions import check_components
from mim_lightning.analysis.report import jsonable, violations, warning_line
from mim_lightning.config import Config
from mim_lightning.errors import MimError
from mim_lightning.plugins.validate import RunComponents, resolve_run_components
from mim_lightning.training.loop import make_fabric


@dataclass
class RunPlan:
    """What is decided once before a run computes anything: its components (looked up and probed),
    its stage-2 solver for its number of replicas, its Fabric (built, which checks the trainer
    settings; launched by the run) and its assumption report."""

    components: RunComponents
    solver: str
    fabric: L.Fabric
    assumptions: list[dict] = field(default_factory=list)



def solver_for(cfg: Config, replicas: int = 1) -> str:
    """The stage-2 solver: 'auto' is ridge for squared loss, else lbfgs, whatever the number of
    replicas (so a config means the same numbers batched or alone); ridge needs squared loss, and
    lbfgs, whose curvature pairs and step come from the objective summed over replicas (it would
    couple batched replicas), needs K = 1."""
    solver = cfg.stage2.solver
    if solver == "auto":
        solver = "ridge" if cfg.stage2.loss == "squared" else "lbfgs"
    if solver == "ridge" and cfg.stage2.loss != "squared":
        raise MimError(f"stage2.solver = ridge needs stage2.loss = squared (got {cfg.stage2.loss!r}); use lbfgs or gd")
    if solver == "lbfgs" and replicas > 1:
        raise MimError("stage2.solver = lbfgs couples batched replicas; train the seeds separately, or use gd")
    return solver


def plan_run(cfg: Config, check: bool = True, warn: bool = False, components: RunComponents | None = None,
             replicas: int = 1) -> RunPlan:
    """Everything checkable before compute: component names, the components on probe inputs, the
    solver for ``replicas`` batched seeds, the trainer settings (the run's Fabric is built here),
    and (``check``) the assumption checks of the link, stage-1 loss and activation: each violation
    a one-line warning on stderr (``warn``), and with ``checks.strict`` a MimError.
    ``components``: already looked up and probed."""
    components = components or resolve_run_components(cfg)
    plan = RunPlan(components, solver_for(cfg, replicas), make_fabric(cfg))
    if check:
        plan.assumptions = jsonable(check_components(cfg.data.link, cfg.stage1.loss, cfg.model.activation, cfg.data.r))
        bad = violations(plan.assumptions)
        if warn:
            for check_ in bad:
                sys.stderr.write(f"Warning: {warning_line(check_)}\n")
        if bad and cfg.checks.strict:
            which = ", ".join(f"{c['assumption']} ({c['component']})" for c in bad)
            raise MimError(f"checks.strict: refusing to train, assumption(s) {which} violated;"
                           " set checks.strict=false to train anyway")
    return plan


def validate(cfg: Config) -> None:
    """``plan_run`` without the assumption checks (milliseconds): for sweeps, before any run. The
    trainer settings are checked by building a Fabric once per distinct setting."""
    resolve_run_components(cfg)
    solver_for(cfg)
    trainer = cfg.trainer.model_dump_json()
    if trainer not in _checked_trainers:
        make_fabric(cfg)
        _checked_trainers.add(trainer)


_checked_trainers: set[str] = set()   # trainer settings that built a Fabric in this process
