"""What a long run is doing, on stderr: the steps of each stage with their rate and ETA, and the
passes over the data outside the steps (data generation, centring, the spectral baseline, the
test pass).

On a terminal a phase is drawn once it has run ``SHOW_AFTER`` seconds, so a short run prints
nothing: the steps as click's progress bar (click is already the CLI's library, and its bar is the
one the sweep draws), a pass over the data as a status line with its elapsed time, redrawn in
place by a background thread (its length is not known in advance: the matrix-free baseline stops
when it converges, and the dense eigensolver runs between chunks). Elsewhere (a log file, a batch
job) a phase prints a plain line every ``LOG_EVERY`` seconds and none when it is shorter.

Nothing here reads the device: positions are the loop's own step numbers and chunk counts, and
rates are wall-clock (the divergence guard's periodic read keeps the device's queue short).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

import click

SHOW_AFTER = 2.0   # seconds before a phase is shown on a terminal
REDRAW = 0.5       # seconds between redraws of a status line
LOG_EVERY = 30.0   # seconds between plain lines off a terminal
STAGES = {"stage1": "stage 1", "stage2": "stage 2"}


def clock(seconds: float) -> str:
    """'0:01:05' for 65.2 s."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A Fabric callback (``on_stage_start``, ``on_step_end``, ``on_stage_end``) for the steps, and
    ``phase(label)`` / ``tick()`` / ``done()`` for the passes. ``last``: the last step of each
    stage; ``stream``: stderr by default; ``terminal``: whether to draw (default: the stream is a
    terminal). A disabled Progress (other ranks, sweeps) does nothing."""

    def __init__(self, last: dict[str, int], enabled: bool = True, stream: TextIO | None = None,
                 terminal: bool | None = None, now: Callable[[], float] = time.monotonic):
        self.last, self.enabled, self.now = last, enabled, now
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.label, self.started, self.shown, self.bar = None, 0.0, 0.0, None
        self.first = self.position = 0
        self.unit = "chunks"
        self.drawer, self.ending, self.writing = None, None, threading.Lock()
        self.drawn = False   # a status line is on screen (to clear)

    # --- the steps of a stage (Fabric callback hooks) ---

    def on_stage_start(self, fabric, stage: str, module) -> None:
        self.done()
        self._begin(STAGES.get(stage, stage))
        self.first = None

    def on_step_end(self, fabric, stage: str, module, step: int) -> None:
        if not self.enabled or self.label is None:
            return
        if self.first is None:
            self.first = step
        done, total = step - self.first + 1, self.last.get(stage, step) - self.first + 1
        now = self.now()
        if self.terminal:
            if self.bar is None and now - self.started >= SHOW_AFTER and done < total:
                label = self.label if self.first == 1 else f"{self.label} from step {self.first}"
                self.bar = click.progressbar(length=total, label=label, file=self.stream, show_eta=True,
                                             show_pos=True, update_min_steps=max(1, total // 200))
                self.bar.__enter__()
                self.bar.start -= now - self.started   # its rate counts the steps already done
                self.bar.update(done)
            elif self.bar is not None:
                self.bar.update(done - self.position)
        elif now - self.shown >= LOG_EVERY and done < total:
            rate = done / max(now - self.started, 1e-9)
            self._line(f"{self.label}: step {step}/{self.first + total - 1} ({rate:.3g} steps/s,"
                       f" ETA {clock((total - done) / rate)})", now)
        self.position = done

    def on_stage_end(self, fabric, stage: str, module, step: int) -> None:
        self.done()

    # --- passes over the data ---

    def phase(self, label: str, unit: str = "chunks") -> None:
        """A pass (or passes) over the data begins; ``tick()`` marks each of its ``unit``. A
        background thread draws the status (a terminal: every ``REDRAW`` s once ``SHOW_AFTER`` s
        have passed; a log: every ``LOG_EVERY`` s), so that a long computation between chunks (the
        dense eigensolver) still shows its time."""
        self.done()
        self._begin(label)
        self.unit = unit
        if self.enabled:
            self.ending = threading.Event()
            self.drawer = threading.Thread(target=self._draw_until_done, args=(self.ending,), daemon=True)
            self.drawer.start()

    def tick(self) -> None:
        """One more ``unit`` of the current pass."""
        self.position += 1

    def _draw_until_done(self, ending: threading.Event) -> None:
        first, every = (SHOW_AFTER, REDRAW) if self.terminal else (LOG_EVERY, LOG_EVERY)
        if ending.wait(first):
            return
        while True:
            with self.writing:
                if ending.is_set():
                    return
                elapsed = clock(self.now() - self.started)
                if self.terminal:
                    self.stream.write(f"\r{self.label}: {self.position} {self.unit}, {elapsed}\033[K")
                    self.drawn = True
                else:
                    self.stream.write(f"{self.label}: {self.position} {self.unit} in {elapsed}\n")
                self.stream.flush()
            if ending.wait(every):
                return

    def done(self) -> None:
        """The current phase ended: its drawing thread stops, a bar is completed, a status line
        cleared."""
        if self.drawer is not None:
            with self.writing:
                self.ending.set()
            self.drawer.join()
            self.drawer = None
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False
        self.label = None

    def _begin(self, label: str) -> None:
        self.label, self.started, self.shown, self.position = label, self.now(), self.now(), 0

    def _line(self, text: str, now: float) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = now
