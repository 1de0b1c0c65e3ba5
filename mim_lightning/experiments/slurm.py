"""``mim sweep --slurm``: the sweep's groups of seeds trained by one SLURM job array, submitted
with submitit (``pip install 'mim-lightning[slurm]'``).

Array task i trains the groups i, i + T, i + 2T, ... of the runs left to train (T tasks), as the
sequential sweep does (``execute.train_todo``: each run writes its own folder; a run whose folder another
process holds is skipped alone, and tried again once it is free and not done). submitit's files (the pickled tasks, each task's log) go to
``OUT/slurm/``. The sweep collects the results through ``execute.cached``: at once with
``--wait``, else by running ``mim sweep FILE`` again once the array has ended.

Preemption and time limits: SIGTERM (``scancel --signal=TERM``, a preemption) or SIGUSR2 (which
submitit asks SLURM to send ``signal_delay`` before the time limit) stops the task's run at its
next step boundary with a checkpoint; the task then hands over to submitit's own handler, which
requeues it (``checkpoint``: the same share again). The requeued task resumes the interrupted run
from its checkpoint, and skips the runs that are done.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import click

from mim_lightning.errors import MimError
from mim_lightning.experiments.execute import (Assumptions, Trainer, cached, describe_group, folder_of, missing_groups,
                                               train_todo)
from mim_lightning.experiments.grid import Run
from mim_lightning.experiments.launch_options import Submitted
from mim_lightning.training import plan as planning
from mim_lightning.training.checkpoints import Interrupted, StopRequest

POLL_SECONDS = 2.0     # how often ``--wait`` looks at the array
DEFAULT_MINUTES = 60   # an array task's time limit unless ``time`` is given
SIGNAL_DELAY_S = 120   # SIGUSR2 this long before the time limit: time to finish a step and checkpoint


def signal_delay(minutes: int) -> int:
    """Seconds before a task's time limit of ``minutes`` at which SLURM sends SIGUSR2: 120, or a
    quarter of the limit when that is shorter. SLURM sends the signal at the task's start when the
    delay is not shorter than the limit, before Python can catch it, and the task dies of it."""
    return min(SIGNAL_DELAY_S, minutes * 15)


class TaskStop(StopRequest):
    """A StopRequest that also takes SIGUSR2, the signal submitit asks SLURM to send before a
    task's time limit."""

    def __enter__(self) -> "TaskStop":
        super().__enter__()
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._handler)
        return self


class SweepShare:
    """One array task: trains its share of the groups of seeds in ``out``; returns the keys of
    the runs it did not train (held by another process, or done by one: the sweep counts them as
    another process's). Its log says what it did with each group. A run skipped as held is tried
    again (``RETRIES`` more passes) once nobody holds it and it is not done: a sweep that looks
    whether a folder is in use holds its lock for an instant. Stopped by a signal, it asks
    submitit to requeue it (``checkpoint``); ``trained`` (the keys it trained) travels with the
    requeued task, so that its own runs stay its own."""

    RETRIES = 2

    def __init__(self):
        self.trained: list[str] = []

    def __call__(self, out: Path, groups: list[list[Run]]) -> list[str]:
        from mim_lightning.cli import quiet_lightning

        quiet_lightning()
        requeue = signal.getsignal(signal.SIGUSR2)   # submitit's: checkpoint, requeue, exit
        assumptions = Assumptions(lambda cfg: planning.plan_run(cfg, check=True, warn=False).assumptions)
        todo = missing_groups(groups, out, {})
        left = {run.key for group in todo for run in group}
        done = [run.key for group in groups for run in group if run.key not in left and run.key not in self.trained]
        if done:
            click.echo(f"mim sweep task: {len(done)} of its runs were done by another process", err=True)
        stopped = None
        with TaskStop() as stop:
            try:
                for attempt in range(self.RETRIES + 1):
                    if attempt:   # the runs skipped as held that nobody holds now and nobody has done
                        todo = [free for group in missing_groups(todo, out, {})
                                if (free := [run for run in group if not folder_of(out, run).in_use()])]
                    busy = []
                    for group in todo:
                        trained = train_todo(group, out, assumptions, stop)
                        self.trained += [run.key for run in trained]
                        if trained:
                            click.echo(f"mim sweep task: trained {describe_group(trained)}", err=True)
                        if held := [run for run in group if run not in trained]:
                            busy.append(held)
                            click.echo(f"mim sweep task: skipped {describe_group(held)}: held by another process",
                                       err=True)
                    todo = busy
                    if not todo:
                        break
            except (KeyboardInterrupt, Interrupted) as exc:
                if not callable(requeue):
                    raise
                stopped = exc
        if stopped is not None:
            click.echo(f"mim sweep task: {stopped}; asking SLURM to requeue it", err=True)
            requeue(signal.SIGUSR2, None)
        return [run.key for group in groups for run in group if run.key not in self.trained]

    def checkpoint(self, *args, **kwargs):
        """What submitit submits again on requeue: this task with the same share."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def executor(out: Path, options: dict):
    """A submitit SlurmExecutor writing to ``out/slurm`` with the launcher ``options``."""
    try:
        import submitit
    except ImportError:
        raise MimError("--slurm needs submitit: pip install 'mim-lightning[slurm]'") from None
    try:
        slurm = submitit.SlurmExecutor(folder=Path(out) / "slurm")
    except RuntimeError:
        raise MimError("--slurm needs SLURM's sbatch and srun on PATH (not found here); run it on a login node"
                       " of the cluster, or use --workers N on this machine") from None
    minutes = options.get("time", DEFAULT_MINUTES)
    parameters = {"job_name": f"mim-sweep-{Path(out).name}", "time": minutes,
                  "signal_delay_s": signal_delay(minutes), "ntasks_per_node": 1,
                  **{key: options[key] for key in ("partition", "gpus_per_task", "cpus_per_task", "array_parallelism")
                     if key in options}}
    slurm.update_parameters(**parameters)
    return slurm


def submit(todo: list[list[Run]], out: Path, options: dict) -> list:
    """Submit one array of min(``tasks``, groups) tasks for the groups in ``todo``; its jobs."""
    count = min(options.get("tasks", len(todo)), len(todo))
    shares = [todo[i::count] for i in range(count)]
    try:
        return executor(out, options).map_array(SweepShare(), [Path(out).resolve()] * count, shares)
    except Exception as exc:  # noqa: BLE001 - sbatch's refusal (a bad partition, time, ...) in one line
        if isinstance(exc, MimError):
            raise
        lines = [line for line in str(exc).splitlines() if "error" in line.lower()] or str(exc).splitlines() or [repr(exc)]
        raise MimError(f"sbatch refused the array: {lines[-1].strip()}") from None


def task_error(job) -> str | None:
    """Why an ended array task failed (the last line of its error), None when it succeeded."""
    error = job.exception()
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"array task {job.job_id} failed ({lines[-1] if lines else type(error).__name__}); its log: {job.paths.stderr}"


def run_array(options: dict, wait: bool, collect: str, todo: list[list[Run]], out: Path, assumptions: Assumptions,
              stop: StopRequest | None, advance: Callable[[int], None]) -> list[list[Run]]:
    """The trainer of ``execute.execute`` for a SLURM array: submit it, then either raise
    ``Submitted`` (``wait`` False; ``collect`` is the command that collects the results) or wait
    for it, advancing the bar as runs end; the groups whose runs were skipped as busy. A failed
    task is a MimError naming its log; a stop request ends the wait (the array runs on)."""
    jobs = submit(todo, out, options)
    runs = [run for group in todo for run in group]
    array_id = str(jobs[0].job_id).split("_")[0]
    what = "job array" if "_" in str(jobs[0].job_id) else "job"   # submitit submits one task as a plain job
    click.echo(f"\nsubmitted SLURM {what} {array_id}: {len(jobs)} task{'s' if len(jobs) > 1 else ''} for {len(runs)}"
               f" runs; logs in {Path(out) / 'slurm'}", err=True)
    if not wait:
        raise Submitted(f"SLURM {what} {array_id} is training {len(runs)} runs; once it has ended"
                        f" (squeue -j {array_id}), collect the results with: {collect}")
    counted = 0
    while not all(job.done() for job in jobs):
        if stop is not None and stop.signal_name is not None:
            click.echo(f"\nstopped waiting: SLURM {what} {array_id} runs on; collect with: {collect}", err=True)
            raise Interrupted(stop.signal_name, f"the wait for the SLURM {what}", None, Path(out) / "slurm")
        done = sum(cached(folder_of(out, run), run.cfg, quiet=True) is not None for run in runs)
        advance(done - counted)
        counted = done
        time.sleep(POLL_SECONDS)
    advance(sum(cached(folder_of(out, run), run.cfg, quiet=True) is not None for run in runs) - counted)
    failures = [error for error in map(task_error, jobs) if error is not None]
    if failures:
        raise MimError(f"{failures[0]}{f' (and {len(failures) - 1} more)' if len(failures) > 1 else ''};"
                       f" finished runs are kept: run the same command again to train the others")
    skipped = {key for job in jobs for key in job.result()}
    return [kept for group in todo if (kept := [run for run in group if run.key in skipped])]


def array(options: dict, wait: bool, collect: str) -> Trainer:
    """The trainer of ``execute.execute`` that trains on SLURM (``run_array``)."""
    return functools.partial(run_array, options, wait, collect)
