"""Checkpoints of both stages in OUT/checkpoints/last.ckpt, and clean stops on SIGINT / SIGTERM.

One Lightning epoch is one full-batch step, so a checkpoint written at the end of an epoch is
always at a step boundary: resuming from it repeats no work and skips none. Lightning writes
checkpoints atomically (temporary file, then rename), so a SIGKILL never leaves a torn file.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

CHECKPOINT = Path("checkpoints") / "last.ckpt"


class StopRequest:
    """SIGINT / SIGTERM set a flag instead of raising; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self.previous: dict = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handler(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint at a step boundary."""

    def __init__(self, signal_name: str, stage: int, step: int, path: Path):
        super().__init__(f"stopped by {signal_name} in stage {stage} after step {step}; checkpoint saved to {path}")
        self.signal_name, self.stage, self.step, self.path = signal_name, stage, step, path


class StepCheckpoint(Callback):
    """Save ``last.ckpt`` every ``every_n_steps`` steps, at the end of the stage, and at the first
    step boundary after a stop request (then stop the fit)."""

    def __init__(self, path: Path, every_n_steps: int, stage: int, stop: StopRequest | None = None):
        self.path, self.every_n_steps, self.stage, self.stop = Path(path), every_n_steps, stage, stop
        self.stopped_at: int | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Take SIGINT / SIGTERM over from Lightning's handlers (restored by Lightning at teardown),
        so a stop always happens at a step boundary, even between the chunks of a step."""
        if self.stop is not None:
            self.stop.install()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = trainer.current_epoch + 1
        requested = self.stop is not None and self.stop.signal_name is not None
        if trainer.world_size > 1:  # every rank stops at the same step
            flag = torch.tensor(float(requested), device=module.device)
            requested = bool(trainer.strategy.reduce(flag, reduce_op="sum") > 0)
            if requested and self.stop is not None and self.stop.signal_name is None:
                self.stop.signal_name = "a signal on another rank"
        if requested or step % self.every_n_steps == 0 or step == trainer.max_epochs:
            trainer.save_checkpoint(self.path)
        if requested:
            self.stopped_at = step
            trainer.should_stop = True

    def raise_if_stopped(self) -> None:
        if self.stopped_at is not None:
            name = self.stop.signal_name if self.stop is not None else "a signal on another rank"
            raise Interrupted(name, self.stage, self.stopped_at, self.path)
