"""Checkpoints (written atomically, loaded as plain data) and clean stops on SIGINT / SIGTERM.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, saved at a step boundary
to ``OUT/checkpoints/last.ckpt`` by ``write_atomic`` (temporary file in the same folder, fsync,
rename: a crash or a full disk never leaves a torn or empty file, the previous one is kept) and
loaded with ``torch.load(weights_only=True)``, which refuses anything but plain data: a crafted
file cannot run code.
"""

from __future__ import annotations

import io
import signal
import threading
from pathlib import Path

import torch

from mim_lightning.errors import MimError
from mim_lightning.training.run_folder import write_atomic

CHECKPOINT = Path("checkpoints") / "last.ckpt"
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(Exception):
    """The run stopped on a signal; ``step`` is the last step saved in the checkpoint (None when
    the stop came before any step of the stage, so a resume repeats that part)."""

    def __init__(self, signal_name: str, stage: str, step: int | None, path: Path):
        where = f"in {stage} after step {step}; checkpoint saved to {path}" if step is not None else f"during {stage}"
        super().__init__(f"stopped by {signal_name} {where}")
        self.signal_name, self.stage, self.step, self.path = signal_name, stage, step, path

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name, 143)


class StopRequest:
    """While entered, SIGINT and SIGTERM set a flag that the training loop reads at step
    boundaries (and data generation between blocks); a second signal interrupts at once. Leaving
    restores the handlers found on entry. Outside the main thread signals cannot be caught, and
    the object only holds the flag."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def check(self, stage: str) -> None:
        """Raise Interrupted (nothing saved) if a stop was requested."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name, stage, None, CHECKPOINT)


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise ``state`` and write it atomically; a write error keeps the previous checkpoint
    and stops the run with one line."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise MimError(f"could not write the checkpoint {str(path)!r} ({exc.strerror or exc}); "
                       f"the previous checkpoint is kept: free disk space and resume") from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``save_checkpoint``, as plain data (no code runs while loading)."""
    if not path.is_file():
        raise MimError(f"cannot resume: no checkpoint at {str(path)!r} (the run stopped before its first checkpoint: start it again)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn, foreign or malicious file
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise MimError(f"cannot resume: {str(path)!r} is not a plain mim checkpoint and was not loaded ({first})") from None
    if not isinstance(state, dict) or "stage" not in state:
        raise MimError(f"cannot resume: {str(path)!r} is not a mim checkpoint")
    return state
