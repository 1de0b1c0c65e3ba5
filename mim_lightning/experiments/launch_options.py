"""Where a sweep's runs are trained, as given on the command line and in the sweep file's
``launcher:`` section. Read without torch, so that a bad value is refused at once.

``launcher:`` (all keys optional; a command-line option wins over the file):

- ``partition``: the SLURM partition; ``time``: minutes per array task; ``gpus_per_task`` and
  ``cpus_per_task``: what each array task asks for; ``array_parallelism``: how many array tasks run
  at once; ``tasks``: the array's size (default: one task per group of seeds).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mim_lightning.config_yaml import read_yaml
from mim_lightning.errors import MimError

LAUNCHER_KEYS = {"partition": str, "time": int, "gpus_per_task": int, "cpus_per_task": int,
                 "array_parallelism": int, "tasks": int}


class Submitted(Exception):
    """A sweep's runs were handed to a scheduler that the sweep does not wait for; the message says
    how to collect them."""


class WorkerCount(click.ParamType):
    """``--workers``: a positive count, or 'auto' (``auto_workers``)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).strip().lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            count = int(str(value))
        except ValueError:
            count = 0
        if count < 1 or str(count) != str(value).strip():
            self.fail(f"{value!r} is not a number of workers: give a count >= 1 or 'auto'", param, ctx)
        return count


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def auto_workers(gpus: int) -> int:
    """``--workers auto``: one worker per GPU when there are GPUs, else one per two cores (at
    least one), so that each worker has two threads."""
    return gpus if gpus > 0 else max(1, cpu_cores() // 2)


def launcher_of(path: str | Path, given: dict) -> dict:
    """The sweep file's ``launcher:`` section updated with the command-line values in ``given``
    (None: not given); an unknown key or a value of the wrong kind is refused in one line."""
    section = read_yaml(path).get("launcher") or {}
    if not isinstance(section, dict):
        raise MimError(f"sweep file {str(path)!r}: 'launcher' must be a mapping of {', '.join(LAUNCHER_KEYS)}"
                       f" (got {section!r})")
    options = {}
    for key, value in {**section, **{k: v for k, v in given.items() if v is not None}}.items():
        kind = LAUNCHER_KEYS.get(key)
        if kind is None:
            raise MimError(f"launcher key {key!r} is unknown; allowed: {', '.join(LAUNCHER_KEYS)}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MimError(f"launcher {key} = {value!r}: give a whole number >= 1")
        if kind is str and (not isinstance(value, str) or not value.strip()):
            raise MimError(f"launcher {key} = {value!r}: give a name")
        options[key] = value
    return options
