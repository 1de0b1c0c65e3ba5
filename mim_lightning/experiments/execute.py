"""Training a sweep's runs: what is cached, groups of seeds trained as one batched run, run
folders (``training.run_folder``: lock, config.yaml, status.json, results.json), failures and the
progress bar.

A run is done when its folder has ``results.json`` (finished) or a status.json saying it failed on
its own (``final``: its weights diverged or vanished, which training it again would repeat); any
other state (no folder, running, interrupted, failed for another reason) is trained again; an
interrupted group whose checkpoint is of the same seeds resumes from it (``checkpoints/last.ckpt``).

Whoever trains the runs (this process, local workers: ``workers``, SLURM array tasks: ``slurm``),
each run writes its own files, and the sweep collects every result through ``cached``. A run
folder locked by another process is skipped (``Busy``), waited for, and then collected or trained.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

import click
import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
from lightning.fabric.utilities.rank_zero import rank_zero_only

from mim_lightning.config import Config
from mim_lightning.errors import Interrupted, MimError, RunFailed
from mim_lightning.experiments import board
from mim_lightning.experiments.grid import Run, Sweep, describe, without_seed
from mim_lightning.training import plan as planning
from mim_lightning.training import run as runner
from mim_lightning.training.checkpoints import StopRequest
from mim_lightning.training.results_schema import results_problem
from mim_lightning.training.run_folder import CHECKPOINT_FILE, RunFolder, folder_kind

WAIT_SECONDS = 0.5  # how often a sweep looks whether a busy run folder is free


class Busy(MimError):
    """A run folder of the group is locked by another process, or its run was finished by another
    process since the sweep looked: the group is skipped here."""

def run_failure(exc: BaseException) -> bool:
    """Whether an error is a run's own failure (``RunFailed``: its weights diverged or vanished);
    every other error is the sweep's and stops it."""
    return isinstance(exc, RunFailed)


def rank_zero() -> bool:
    """Whether this process writes files and output (under DDP every rank runs the sweep's loop;
    rank zero alone writes)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that differ only in ``seed``, in the order of their first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(without_seed(run.cfg), []).append(run)
    return list(groups.values())


def batchable(cfg: Config) -> bool:
    """Whether several seeds of this config may be trained as one batched run with the same numbers
    as separate runs: not when the stage-2 solver is lbfgs (``solver=auto`` with a non-squared
    loss included)."""
    return planning.solver_for(cfg, replicas=1) != "lbfgs"


def describe_group(group: list[Run]) -> str:
    """'data.alpha=2 (seeds 0, 1, 2 batched)': a group of seeds in messages."""
    values = {k: v for k, v in group[0].values.items() if k != "seed"}
    seeds = ", ".join(str(run.cfg.seed) for run in group)
    return f"{describe(values) or 'the base config'} (seeds {seeds} batched)"


def folder_of(out: Path, run: Run) -> RunFolder:
    return RunFolder(Path(out) / "runs" / run.key)


def cached(folder: RunFolder, cfg: Config, quiet: bool = False) -> dict | None:
    """A done run's results dict ({'failed': message} for a failed one), else None. Only what was
    written for this very config counts: a results.json that fails ``results_problem`` (another
    run's, edited, out of range) or a failure recorded under another config.yaml is ignored with a
    warning naming the folder (none when ``quiet``), and the run is trained again."""
    warn_ = (lambda text: None) if quiet else warn
    if folder.path.exists() and folder_kind(folder.path) != "run":
        warn_(f"{str(folder.path)!r} is not a mim run folder; training the run again")
        return None
    results = folder.results()
    if results is not None:
        problem = results_problem(results, cfg)
        if problem is None:
            return results
        warn_(f"{str(folder.path)!r}: {problem}; training the run again")
        return None
    status = folder.status()
    if status.get("status") == "failed" and status.get("final"):
        if folder.config_dump() == cfg.model_dump(mode="json"):
            return {"failed": status.get("message", "failed")}
        warn_(f"{str(folder.path)!r}: its recorded failure is of another config; training the run again")
    return None


def warn(text: str) -> None:
    if rank_zero():
        click.echo(("\n" if sys.stderr.isatty() else "") + f"Warning: {text}", err=True)


def resumable(folders: list[RunFolder], configs: list[Config]) -> bool:
    """Whether the group in ``folders`` (held by this process) can resume from the first folder's
    checkpoint: it exists, it was written by a training of these very seeds (``seeds`` in the first
    folder's status.json) and every folder's config.yaml is its run's config."""
    seeds = [cfg.seed for cfg in configs]
    return ((folders[0].path / CHECKPOINT_FILE).is_file() and folders[0].status().get("seeds") == seeds
            and all(f.config_dump() == cfg.model_dump(mode="json") for f, cfg in zip(folders, configs, strict=True)))


@contextmanager
def claimed(folders: list[RunFolder], configs: list[Config]):
    """Rank zero holds the folders' locks and marks them running (each with its config.yaml) for
    the time of one training call; yields whether the group resumes (``resumable``; otherwise
    nothing is left of an earlier attempt). ``Busy`` when another process holds a lock or has
    finished a run since the sweep looked. Each folder records how the attempt ends
    (``RunFolder.attempt``): an error marks it failed, not final, so that it is trained again; a
    stop marks it interrupted, the first folder with the group's seeds (a resume needs them)."""
    if not rank_zero():
        yield False
        return
    seeds = [cfg.seed for cfg in configs]
    with ExitStack() as stack:
        for folder in folders:
            try:
                stack.enter_context(folder.locked())
            except MimError as exc:
                raise Busy(str(exc)) from None
        if any(cached(folder, cfg, quiet=True) is not None for folder, cfg in zip(folders, configs, strict=True)):
            raise Busy("a run of the group was finished by another process")
        resume = resumable(folders, configs)
        for folder, cfg in zip(folders, configs, strict=True):   # the first holds the group's checkpoint
            stack.enter_context(folder.attempt(cfg.model_dump(), fresh=not resume,
                                               **({"seeds": seeds} if folder is folders[0] else {})))
        yield resume


class Assumptions:
    """The assumption report of each combination of components (``planning.plan_run``, computed once
    per combination, so that each violation warns once; with ``checks.strict`` a refusal)."""

    def __init__(self, checks: Callable[[Config], list] | None = None):
        self.checks = checks or (lambda cfg: planning.plan_run(cfg, check=True, warn=rank_zero()).assumptions)
        self.reports: dict[tuple, list] = {}

    def __call__(self, cfg: Config) -> list:
        which = (cfg.data.link, cfg.stage1.loss, cfg.model.activation, cfg.data.r, cfg.checks.strict)
        if which not in self.reports:
            self.reports[which] = self.checks(cfg)
        return self.reports[which]


def fresh_boards(out: Path, runs: list[Run], resume: bool = False) -> list[Path]:
    """The runs' TensorBoard folders (``board.run_board``), emptied by rank zero unless the runs
    resume: a run trained again starts its TensorBoard run afresh."""
    paths = [board.run_board(out, run) for run in runs]
    if rank_zero() and not resume:
        for path in paths:
            board.clear(path)
    return paths


def train_group(group: list[Run], out: Path, assumptions: Assumptions, stop: StopRequest | None = None) -> list[dict] | None:
    """Train a group of seeds as one batched run; None when one of its replicas failed on its own
    (a warning says so; the caller then trains the seeds one by one). Other errors stop the sweep."""
    folders = [folder_of(out, run) for run in group]
    first = group[0]
    try:
        with claimed(folders, [run.cfg for run in group]) as resume:
            # one call for the group; each seed logs to its own TensorBoard run, DIR/tensorboard/<name>
            boards = fresh_boards(out, group, resume)
            batch = runner.train_replicas(first.cfg, folders[0].path, [run.cfg.seed for run in group],
                                          assumptions=assumptions(first.cfg), resume=resume, stop=stop,
                                          tensorboard_dirs=boards)
            if rank_zero():
                for folder, results in zip(folders, batch, strict=True):
                    folder.finish(results)
    except Busy:
        raise
    except MimError as exc:
        if not run_failure(exc):
            raise MimError(f"sweep runs {describe_group(group)}: {exc}; finished runs are kept") from None
        warn(f"sweep runs {describe_group(group)}: {exc}; training these seeds one by one to find which fail")
        return None
    return batch


def train_one(run: Run, out: Path, assumptions: Assumptions, stop: StopRequest | None = None) -> dict:
    """Train one run; a run failure (diverged, vanished) is recorded as final (status.json) and
    returned as {'failed': message} with a warning; other errors stop the sweep."""
    folder = folder_of(out, run)
    message = None
    try:
        with claimed([folder], [run.cfg]) as resume:
            boards = fresh_boards(out, [run], resume)
            try:
                results = runner.train_replicas(run.cfg, folder.path, [run.cfg.seed],
                                                assumptions=assumptions(run.cfg), resume=resume, stop=stop,
                                                tensorboard_dirs=boards)[0]
            except MimError as exc:
                if not run_failure(exc):
                    raise
                message = f"sweep run {run.describe()}: {exc}"
            if rank_zero():
                if message is None:
                    folder.finish(results)
                else:
                    folder.set_status("failed", message, final=True)
    except Busy:
        raise
    except MimError as exc:
        raise MimError(f"sweep run {run.describe()}: {exc}; finished runs are kept") from None
    if message is not None:
        warn(message)
        return {"failed": message}
    return results


def train_todo(group: list[Run], out: Path, assumptions: Assumptions, stop: StopRequest | None = None) -> list[Run]:
    """Train a group of seeds: as one batched run when its solver allows (``train_group``), else,
    or when a replica failed on its own, one by one (``train_one``). A folder held by another
    process (``Busy``) leaves a batched group untrained (it is tried again later, still batched),
    and in the one-by-one path that run alone. Returns the runs trained here (a run that failed on
    its own terms counts: its folder records the failure)."""
    try:
        if len(group) > 1 and batchable(group[0].cfg) and train_group(group, out, assumptions, stop) is not None:
            return list(group)
    except Busy:
        return []
    trained = []
    for run in group:
        try:
            train_one(run, out, assumptions, stop)
        except Busy:
            continue
        trained.append(run)
    return trained


def sequential(todo: list[list[Run]], out: Path, assumptions: Assumptions, stop: StopRequest | None,
               advance: Callable[[int], None]) -> list[list[Run]]:
    """Train the groups one after another in this process; the runs skipped as busy, by group."""
    skipped = []
    for group in todo:
        trained = train_todo(group, out, assumptions, stop)
        advance(len(trained))
        if held := [run for run in group if run not in trained]:
            skipped.append(held)
    return skipped


Trainer = Callable[[list[list[Run]], Path, Assumptions, "StopRequest | None", Callable[[int], None]], list[list[Run]]]


def missing_groups(groups: list[list[Run]], out: Path, results: dict[str, dict]) -> list[list[Run]]:
    """The groups' runs that are not done (``cached``), each group cut to those; the done ones are
    put in ``results``."""
    todo = []
    for group in groups:
        missing = []
        for run in group:
            done = cached(folder_of(out, run), run.cfg)
            if done is None:
                missing.append(run)
            else:
                results[run.key] = done
        if missing:
            todo.append(missing)
    return todo


def wait_free(groups: list[list[Run]], out: Path, stop: StopRequest | None) -> None:
    """Wait until no other process holds the groups' run folders (a stop request ends the wait
    with ``Interrupted``)."""
    folders = [folder_of(out, run) for group in groups for run in group]
    while any(folder.in_use() for folder in folders):
        if stop is not None and stop.signal_name is not None:
            raise Interrupted(stop.signal_name, "the sweep", None, CHECKPOINT_FILE)
        time.sleep(WAIT_SECONDS)


def collect(groups: list[list[Run]], out: Path, results: dict[str, dict]) -> None:
    """Put the trained groups' results (``cached``) in ``results``; a run left without any is an
    error on rank zero (other ranks do not write: they record it as not collected)."""
    for group in groups:
        for run in group:
            done = cached(folder_of(out, run), run.cfg)
            if done is None and rank_zero():
                raise MimError(f"sweep run {run.describe()}: training ended without results in "
                               f"{str(folder_of(out, run).path)!r} (see its status.json); run the sweep again")
            results[run.key] = done or {"failed": "not collected on this rank"}


def execute(sweep: Sweep, out: Path, checks: Callable[[Config], list] | None = None,
            stop: StopRequest | None = None, trainer: Trainer | None = None) -> tuple[dict[str, dict], int]:
    """Train every run of the sweep that is not done; ({run key: results dict} for all runs, the
    number of runs this sweep trained: not those another process trained meanwhile). A progress bar on stderr counts the runs to train, with an estimate
    of the time left; a line before it and one after count all runs, cached ones included.

    ``trainer(todo, out, assumptions, stop, advance)`` trains the groups of seeds (default:
    ``sequential``; ``workers.parallel``, ``slurm.array``), calls ``advance(n)`` as n runs end and
    returns the groups it skipped because another process held them; those are waited for, then
    collected or handed to the trainer again. Every result is read back through ``cached``.

    ``checks(cfg)`` gives a run's assumption report (default: ``planning.plan_run``'s, which warns
    about each violation and refuses under ``checks.strict``; asked once per combination)."""
    results: dict[str, dict] = {}
    todo = missing_groups(seed_groups(sweep.runs), out, results)
    total, to_train = len(sweep.runs), sum(len(g) for g in todo)
    assumptions = Assumptions(checks)
    for group in todo:  # refusals (checks.strict) before anything is trained
        for run in group:
            try:
                assumptions(run.cfg)
            except MimError as exc:
                raise MimError(f"sweep run {run.describe()}: {exc}") from None

    zero, start, others = rank_zero(), time.perf_counter(), 0
    label = f"sweep: {total - to_train} of {total} runs cached, training {to_train}"
    if to_train:
        with click.progressbar(length=to_train, label=label, file=sys.stderr, show_pos=True, show_eta=True,
                               hidden=not zero) as bar:
            pending = todo
            while pending:
                skipped = (trainer or sequential)(pending, out, assumptions, stop, bar.update)
                wait_free(skipped, out, stop)
                before = sum(len(g) for g in skipped)
                pending = missing_groups(skipped, out, results)
                others += before - sum(len(g) for g in pending)
                bar.update(before - sum(len(g) for g in pending))
        collect(todo, out, results)
    if zero:
        by_others = f", {others} by another process" if others else ""
        click.echo(f"sweep: {total}/{total} runs ({total - to_train} cached, {to_train - others} trained{by_others}"
                   f" in {_clock(time.perf_counter() - start)})", err=True)
    return results, to_train - others


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
