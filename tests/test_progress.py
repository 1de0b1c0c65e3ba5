"""Progress on stderr (training/progress.py): bars only on a terminal and only for phases longer
than SHOW_AFTER, sparse plain lines in a log, rates and ETAs from the loop's own step numbers."""

import io
import time

import pytest

from mim_lightning.training import progress as progress_module
from mim_lightning.training.progress import Progress, clock


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """A fake monotonic clock: each call returns the next of ``times``, then stays at the last."""

    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def steps(meter, first, last, stage="stage1"):
    meter.on_stage_start(None, stage, None)
    for step in range(first, last + 1):
        meter.on_step_end(None, stage, None, step)
    meter.on_stage_end(None, stage, None, last)


def test_a_log_gets_a_plain_line_every_log_every_seconds():
    out = io.StringIO()
    # clock calls: __init__ none; _begin twice (0); then one per step: 10 s per step
    meter = Progress({"stage1": 10}, stream=out, terminal=False, now=Clock([0, 0, *range(10, 101, 10)]))
    steps(meter, 1, 10)
    assert out.getvalue().splitlines() == [
        "stage 1: step 3/10 (0.1 steps/s, ETA 0:01:10)",
        "stage 1: step 6/10 (0.1 steps/s, ETA 0:00:40)",
        "stage 1: step 9/10 (0.1 steps/s, ETA 0:00:10)",
    ]


def test_a_resumed_stage_counts_from_its_first_step():
    out = io.StringIO()
    meter = Progress({"stage1": 10}, stream=out, terminal=False, now=Clock([0, 0, 10, 20, 30, 40, 50]))
    steps(meter, 6, 10)
    assert out.getvalue().splitlines() == ["stage 1: step 8/10 (0.1 steps/s, ETA 0:00:20)"]


def test_a_short_phase_prints_nothing_anywhere():
    for terminal in (True, False):
        out = io.StringIO()
        meter = Progress({"stage1": 50, "stage2": 1}, stream=out, terminal=terminal, now=Clock([0.0]))
        steps(meter, 1, 50)
        steps(meter, 1, 1, "stage2")
        meter.phase("test pass")
        meter.tick()
        meter.done()
        assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_once_the_stage_has_run_show_after_seconds():
    out = Terminal()
    meter = Progress({"stage1": 40}, stream=out, now=Clock([0, 0, *[0.1 * s for s in range(1, 41)]]))
    steps(meter, 1, 40)
    text = out.getvalue()
    assert "stage 1  [####" in text and "40/40" in text and text.endswith("\n")
    assert "19/40" not in text and "20/40" in text   # drawn from the step at 2 s, at its position


def test_a_disabled_progress_is_silent():
    out = io.StringIO()
    meter = Progress({"stage1": 10}, enabled=False, stream=out, terminal=False, now=Clock([0, 0, *range(0, 1000, 100)]))
    steps(meter, 1, 10)
    meter.phase("spectral baseline")
    meter.done()
    assert out.getvalue() == ""


def test_a_pass_shows_its_time_even_between_chunks(monkeypatch):
    """The status line of a pass is redrawn by a thread, so a long computation between chunks (a
    dense eigensolve) still shows its elapsed time; done() clears the line."""
    monkeypatch.setattr(progress_module, "SHOW_AFTER", 0.05)
    monkeypatch.setattr(progress_module, "REDRAW", 0.02)
    out = Terminal()
    meter = Progress({}, stream=out)
    meter.phase("spectral baseline (dense)")
    for _ in range(3):
        meter.tick()
    time.sleep(0.3)
    meter.done()
    text = out.getvalue()
    assert "\rspectral baseline (dense): 3 chunks, 0:00:00\033[K" in text and text.endswith("\r\033[K")
    assert text.count("\r") > 3   # redrawn while nothing ticked


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (65.2, "0:01:05"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert clock(seconds) == text
