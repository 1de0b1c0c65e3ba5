"""``mim sweep --workers N``: the sweep's groups of seeds trained by N worker processes on this
machine, each with its share of the cores (torch threads = cores / N) or one GPU
(``CUDA_VISIBLE_DEVICES``).

Workers take groups from one queue, so that a group of seeds stays batched in one worker, and
train them as the sequential sweep does (``execute.train_todo``): each run writes its own folder,
and the sweep collects the results through ``execute.cached``. Workers run in their own process
groups: Ctrl-C reaches the sweep's process, which passes the stop on to every worker; each stops
at its next step boundary with a checkpoint, and its run resumes on the next invocation.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
from pathlib import Path
from typing import Callable

import torch

from mim_lightning.errors import MimError
from mim_lightning.experiments.execute import Assumptions, Trainer, sequential, train_todo
from mim_lightning.experiments.grid import Run
from mim_lightning.experiments.launch_options import auto_workers, cpu_cores
from mim_lightning.training import plan as planning
from mim_lightning.training.checkpoints import Interrupted, StopRequest
from mim_lightning.training.run_folder import CHECKPOINT_FILE

POLL_SECONDS = 0.2  # how often the sweep's process looks at its workers


def gpu_ids() -> list[str]:
    """The GPUs this process sees ('0', '1', ...; none without CUDA)."""
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_count(value: int | str) -> int:
    """The number of workers ``--workers`` asks for (``launch_options.auto_workers`` for 'auto')."""
    return auto_workers(len(gpu_ids())) if value == "auto" else int(value)


def parallel(workers: int) -> Trainer:
    """The trainer of ``execute.execute`` for ``workers`` processes (one: this process,
    ``execute.sequential``)."""
    return sequential if workers == 1 else functools.partial(run_workers, workers)


def work(index: int, workers: int, gpu: str | None, out: Path, tasks, reports) -> None:
    """Worker ``index``: train the groups ``(i, group)`` taken from ``tasks`` until None comes or a
    stop is asked for, reporting ('done' | 'skipped' | 'interrupted' | 'error', index, i or the
    error's line) to ``reports``, and ('exit', index, None) when it is done."""
    os.setpgrp()  # Ctrl-C at the terminal reaches the sweep's process alone; it passes the stop on
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(max(1, cpu_cores() // workers))
    from mim_lightning.cli import quiet_lightning

    quiet_lightning()
    assumptions = Assumptions(lambda cfg: planning.plan_run(cfg, check=True, warn=False).assumptions)
    with StopRequest() as stop:
        while stop.signal_name is None:
            item = tasks.get()
            if item is None:
                break
            i, group = item
            try:
                trained = train_todo(group, out, assumptions, stop)
                reports.put(("done", index, (i, [run.key for run in trained])))
            except (KeyboardInterrupt, Interrupted):
                reports.put(("interrupted", index, i))
                return
            except BaseException as exc:  # noqa: BLE001 - the sweep's process reports it
                reports.put(("error", index, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
                return
    reports.put(("exit", index, None))


def signal_all(processes, name: str) -> None:
    """Send the signal ``name`` to every worker still alive."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, getattr(signal, name, signal.SIGTERM))


def run_workers(workers: int, todo: list[list[Run]], out: Path, assumptions: Assumptions, stop: StopRequest | None,
                advance: Callable[[int], None]) -> list[list[Run]]:
    """Train the groups in ``todo`` with ``workers`` processes (fewer when there are fewer
    groups); the groups skipped as busy. A stop request (``stop``) is passed on to every worker
    and ends in ``Interrupted`` once all have stopped; a worker's error stops the others and is
    raised as a MimError."""
    context = multiprocessing.get_context("spawn")  # no forked torch or CUDA state
    tasks, reports = context.Queue(), context.Queue()
    workers = min(workers, len(todo))
    for item in [*enumerate(todo), *[None] * workers]:
        tasks.put(item)
    gpus = gpu_ids()
    processes = [context.Process(target=work, args=(i, workers, gpus[i % len(gpus)] if gpus else None, Path(out),
                                                    tasks, reports), name=f"mim-sweep-worker-{i}")
                 for i in range(workers)]
    for process in processes:
        process.start()
    running, skipped, error, interrupted, passed_on = set(range(workers)), [], None, False, None
    try:
        while running:
            if stop is not None and stop.signal_name is not None and passed_on is None:
                passed_on = stop.signal_name
                signal_all(processes, passed_on)
            try:
                kind, index, value = reports.get(timeout=POLL_SECONDS)
            except queue.Empty:
                for index in list(running):
                    code = processes[index].exitcode
                    if code is not None:
                        running.discard(index)
                        error = error or (f"sweep worker {index} (pid {processes[index].pid}) exited with code {code};"
                                          f" finished runs are kept")
                        signal_all(processes, "SIGTERM")
                continue
            if kind == "done":   # value: (group, the keys of the runs the worker trained)
                group, trained = todo[value[0]], set(value[1])
                advance(len(trained))
                if held := [run for run in group if run.key not in trained]:
                    skipped.append(held)
            else:
                running.discard(index)
                interrupted = interrupted or kind == "interrupted"
                if kind == "error" and error is None:
                    error = value
                    signal_all(processes, "SIGTERM")
    except KeyboardInterrupt:  # a second Ctrl-C: the workers stop at once too
        signal_all(processes, "SIGINT")
        raise
    finally:
        for process in processes:
            process.join()
    if error is not None:
        raise MimError(error)
    if interrupted or passed_on is not None:
        raise Interrupted(passed_on or "SIGTERM", "the sweep", None, CHECKPOINT_FILE)
    return skipped
