"""Multi-process runs: when one rank stops or dies, the others end within seconds, one line names
the rank and the cause, and rank zero records the outcome (status.json ``interrupted`` for a
signal, ``failed`` for a crash).

Under Lightning's subprocess launcher (``--devices N --strategy ddp`` on one machine) ranks 1..N-1
are children of rank 0, watched by Lightning's thread "child-process-observer"
(``lightning.fabric.strategies.launchers.subprocess_script._ChildProcessObserver``). Every 5 s it
looks at them and, when one has exited with a non-zero code, SIGKILLs every child and rank 0
itself, logging only at INFO. Measured: SIGTERM to rank 1 during data generation left rank 0 with
exit 137, no output and status ``running``. Lightning offers no public hook, so ``watch`` replaces
that observer's reaction (its ``_terminate_all``) and its period (``_sleep_period``, 5 s: a stop
would take up to 5 s to be seen): rank 0 is asked to stop at its next poll or step boundary, as
on a signal, and the error it then meets (the stop, or gloo's "Connection closed by peer" in a
collective) is replaced by one that names the lost rank. Other ranks turn a lost connection into
one line; they say nothing on a stop (rank 0 reports it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import mim_lightning.training.lean_imports  # noqa: F401  (before Lightning: no unused metric back-ends)
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

from mim_lightning.errors import EXIT_CODES, Interrupted, MimError
from mim_lightning.training.checkpoints import CHECKPOINT

POLL_SECONDS = 0.5    # how often rank 0 looks at its children
WAIT_SECONDS = 3.0    # how long rank 0, having lost a connection, waits for a child's exit code
GRACE_SECONDS = 5.0   # how long rank 0's main thread has to stop before the observer ends the process
LOST_CONNECTION = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Broken pipe")


class RankStopped(Interrupted):
    """Rank ``rank`` was killed by the signal ``name``, or stopped on it: the run is interrupted
    (``signal_name`` 'SIGKILL on rank 1', as a sweep reports it; the exit code that of ``name``)."""

    def __init__(self, message: str, name: str, rank: int):
        Exception.__init__(self, message)
        self.signal_name, self.stage, self.step, self.path = f"{name} on rank {rank}", "a multi-process run", None, CHECKPOINT
        self.code = EXIT_CODES.get(name, 143)

    @property
    def exit_code(self) -> int:
        return self.code


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank's process went away."""
    return isinstance(exc, torch.distributed.DistError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in LOST_CONNECTION))


def signal_name(number: int) -> str:
    """'SIGTERM' for 15; 'signal N' for a number without a name (real-time signals)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def child_error(rank: int, pid: int, code: int) -> Exception:
    """What rank 0 raises for rank ``rank`` (process ``pid``) that exited with the non-zero
    ``code``: RankStopped when a signal killed it (negative code) or it stopped on one (130,
    143), else a MimError."""
    stops = {exit_code: name for name, exit_code in EXIT_CODES.items()}
    if code < 0:
        return RankStopped(f"rank {rank} (pid {pid}) was killed by {signal_name(-code)}", signal_name(-code), rank)
    if code in stops:
        return RankStopped(f"rank {rank} (pid {pid}) stopped on {stops[code]}", stops[code], rank)
    return MimError(f"rank {rank} (pid {pid}) exited with code {code}; its message above says why")


class RankWatch:
    """One process's view of the other ranks during one ``train_replicas`` call; ``explain`` turns
    the error that ends the call into one that names a lost rank."""

    def __init__(self, rank: int, world: int, stop, children: list):
        self.rank, self.world, self.stop, self.children = rank, world, stop, children
        self.lost: Exception | None = None   # set by the observer thread
        self.explained = False               # the main thread has taken the run's end in hand

    def failed_child(self, wait: float) -> Exception | None:
        """``child_error`` for the first child found to have exited with a non-zero code, looking
        again for up to ``wait`` seconds; None when there is none."""
        deadline = time.monotonic() + wait
        while True:
            for offset, proc in enumerate(self.children, start=1):
                if proc.poll():
                    return child_error(self.rank + offset, proc.pid, proc.returncode)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def end_children(self) -> None:
        """SIGKILL the children still running (as Lightning does: SIGTERM would not end one waiting
        in a collective) and wait for them."""
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
        for proc in self.children:
            proc.wait()

    def on_child_exit(self) -> None:
        """The observer's reaction to a child that exited with a non-zero code (in its thread).
        Unless rank 0 is stopping already (a signal of its own, or one all ranks agreed on): note
        the lost rank, end the other children and ask rank 0 to stop; if its main thread has not
        taken over after GRACE_SECONDS (it is stuck), print the line and exit."""
        if self.stop.signal_name is not None:
            return
        self.lost = self.failed_child(0)
        self.end_children()
        self.stop.signal_name = "the loss of another rank"
        time.sleep(GRACE_SECONDS)
        if not self.explained:
            print(f"{self.lost} (rank 0 did not stop within {GRACE_SECONDS:g} s and was ended)", file=sys.stderr, flush=True)
            os._exit(self.lost.exit_code if isinstance(self.lost, Interrupted) else 1)

    def explain(self, exc: BaseException) -> None:
        """Raise, in place of ``exc``, the error that names a lost rank, if there is one: on rank 0
        a child that exited with a non-zero code (waited for up to WAIT_SECONDS after a lost
        connection), else, on any rank, the lost connection. Rank 0 ends its children when it
        stops on its own or has lost one; otherwise returns and ``exc`` stands."""
        self.explained = True
        if self.world == 1:
            return
        lost = self.lost or (self.failed_child(WAIT_SECONDS) if self.children and lost_connection(exc) else None)
        if self.children and (lost is not None or isinstance(exc, (Interrupted, KeyboardInterrupt))):
            self.end_children()
        if lost is not None:
            raise lost from exc
        if lost_connection(exc):
            see = "; see rank 0's message" if self.rank else ""
            raise MimError(f"rank {self.rank}: another rank stopped or died (the connection to it was lost){see}") from exc


def watch(fabric, stop) -> RankWatch:
    """Call right after ``fabric.launch()``. On rank 0 under Lightning's subprocess launcher, take
    over the child-process observer (see the module's docstring); on every process, a RankWatch
    whose ``explain`` the caller applies to the error that ends training."""
    observer = next((t for t in threading.enumerate() if isinstance(t, _ChildProcessObserver)), None)
    ranks = RankWatch(fabric.global_rank, fabric.world_size, stop, [] if observer is None else observer._child_processes)
    if observer is not None:
        observer._sleep_period = POLL_SECONDS
        observer._terminate_all = ranks.on_child_exit
    return ranks
