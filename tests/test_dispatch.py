"""What a stage-1 step dispatches, counted on the CPU: the metric code is the same on every device,
so these counts are what a GPU would run. Per step, over whole runs of T and 2 T steps (flushes
included): at most 60 aten ops, 0.2 host reads (``aten._local_scalar_dense``: every .item(),
float() or bool() of a tensor) and 0.5 eigensolver calls. And the cheap tracked subspace agrees with
the exact eigensolver along a run."""

import collections

import pytest
import torch

from helpers import tiny_config
from mim_lightning.training.dispatch import CountOps, per_step
from mim_lightning.training.run import train

def counted_run(tmp_path, steps: int, *overrides) -> collections.Counter:
    cfg = tiny_config(f"stage1.steps={steps}", *overrides)
    with CountOps() as mode:
        train(cfg, tmp_path / f"T{steps}")
    return mode.ops


SIZES = {"tracked": ["data.d=160", "model.width=160", "data.alpha=2"],   # min(m, d) > 32: the tracked block
         "gram": ["data.d=24", "model.width=48", "data.alpha=8"],        # exact from W's Gram
         "rowspace": ["data.d=128", "model.width=32", "data.alpha=2"]}   # exact from W W^T (m < d)


@pytest.mark.parametrize("size", list(SIZES))
def test_a_stage1_step_dispatches_a_handful_of_ops_and_never_waits(tmp_path, size):
    overrides = [*SIZES[size], "data.alpha2=1", "data.n_test=64", "baseline.spectral=off", "checkpoint.every_n_steps=1000"]
    counted_run(tmp_path, 10, *overrides)                      # warm-up: caches filled once per process
    short, long = counted_run(tmp_path, 10, *overrides), counted_run(tmp_path, 20, *overrides)
    counts = per_step(short, long, 10)
    assert counts["ops"] <= 60, counts
    assert counts["host_reads"] <= 0.2, counts
    assert counts["eigensolver_calls"] <= 0.5, counts


def test_the_tracked_subspace_follows_the_exact_one_along_a_run(tmp_path):
    overrides = ["data.d=192", "model.width=192", "data.alpha=2", "data.alpha2=1", "data.n_test=64",
                 "baseline.spectral=off", "stage1.steps=30"]
    runs = {mode: train(tiny_config(*overrides, f"metrics.subspace={mode}"), tmp_path / mode)["history"]
            for mode in ("exact", "tracked")}
    errors = {row["step"]: max(abs(a - b) for a, b in zip(row["principal_cosines"], other["principal_cosines"]))
              for row, other in zip(runs["exact"], runs["tracked"], strict=True)}
    assert len(errors) == 31
    assert errors[1] <= 2e-3, errors                              # the first step away from the random start
    assert max(e for step, e in errors.items() if step != 1) <= 1e-4, errors
    more = train(tiny_config(*overrides, "metrics.tracking_iters=32"), tmp_path / "more")["history"]
    assert max(abs(a - b) for row, other in zip(runs["exact"], more) for a, b in
               zip(row["principal_cosines"], other["principal_cosines"])) <= 1e-4


def test_history_agrees_for_any_flush_interval(tmp_path):
    """The flush interval decides where the tracked block restarts from (and so the last digits),
    never more than the tracking's own accuracy."""
    overrides = ["data.d=160", "model.width=160", "data.alpha=2", "stage1.steps=12"]
    histories = [train(tiny_config(*overrides, f"metrics.flush_every_n_steps={k}"), tmp_path / str(k))["history"]
                 for k in (1, 5, 12)]
    cosines = torch.tensor([[row["principal_cosines"] for row in history] for history in histories])
    masses = torch.tensor([[row["subspace_mass"] for row in history] for history in histories])
    assert cosines.shape == (3, 13, 2) and cosines.isfinite().all()
    assert (cosines - cosines[0]).abs().max() <= 1e-5 and (masses == masses[0]).all()


def test_history_does_not_depend_on_where_checkpoints_cut_the_measurements(tmp_path):
    """Checkpoints (and so signals) flush the metrics mid-interval; each step still starts from its
    interval's anchor block, so the history is the same to the last digit."""
    overrides = ["data.d=160", "model.width=160", "data.alpha=2", "stage1.steps=12"]
    histories = [train(tiny_config(*overrides, f"checkpoint.every_n_steps={k}"), tmp_path / str(k))["history"]
                 for k in (1000, 3, 7)]
    assert histories[0] == histories[1] == histories[2]
