"""`mim sweep --workers N` and `mim sweep --slurm`: the same results.csv as the sequential sweep,
busy run folders skipped and collected, two sweeps on one folder, the launcher section, and a real
one-node SLURM cluster (tests/slurm_cluster.py)."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mim_lightning.cli import main
from mim_lightning.experiments import execute, sweep_folder
from mim_lightning.experiments.grid import load_sweep
from mim_lightning.training import run as runner


MIM = str(Path(sys.executable).parent / "mim")
SWEEP = {"data": {"d": 16, "alpha2": 8, "n_test": 256}, "model": {"width": 16}, "stage1": {"steps": 3},
         "sweep": {"data.alpha": [2, 4, 8, 16], "seed": [0, 1]}}   # 8 runs, 4 groups of seeds


def sweep_file(folder: Path, **extra) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **extra}, sort_keys=False))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)], catch_exceptions=False)


def trained(output: str) -> int:
    """The number of runs a sweep says it trained itself."""
    return int(re.search(r"cached, (\d+) trained", output).group(1))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sequential sweep's results.csv (text) and the sweep file."""
    root = tmp_path_factory.mktemp("reference")
    path = sweep_file(root)
    result = invoke(path, "--out", root / "out")
    assert result.exit_code == 0, result.output
    return (root / "out" / "results.csv").read_text(), path


@pytest.mark.slow
def test_two_workers_give_the_sequential_results_csv(reference, tmp_path):
    csv, path = reference
    result = invoke(path, "--out", tmp_path / "out", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "results.csv").read_text() == csv
    assert trained(result.output) == 8
    again = invoke(path, "--out", tmp_path / "out", "--workers", "2")
    assert "8 cached, 0 trained" in again.output


def test_a_busy_run_folder_is_skipped_and_trained_once_it_is_free(tmp_path, monkeypatch):
    """Another process holds one group's folder: the sweep trains the other groups first, waits,
    then trains that group (it was not finished), instead of failing."""
    path = sweep_file(tmp_path)
    sweep = load_sweep(path)
    busy = execute.folder_of(tmp_path / "out", sweep.runs[0])
    calls, held, release = [], threading.Event(), threading.Event()
    replicas = runner.train_replicas

    def spy(cfg, out, seeds, *args, **kwargs):
        calls.append((cfg.data.alpha, list(seeds)))
        if len(calls) == 3:   # the other three groups are trained: the folder is freed
            release.set()
        return replicas(cfg, out, seeds, *args, **kwargs)

    def hold():
        with busy.locked():
            held.set()
            release.wait(120)

    monkeypatch.setattr(runner, "train_replicas", spy)
    sweep_folder.claim(tmp_path / "out", sweep)
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        result = invoke(path, "--out", tmp_path / "out")
    finally:
        release.set()
        holder.join()
    assert result.exit_code == 0, result.output
    assert calls == [(4.0, [0, 1]), (8.0, [0, 1]), (16.0, [0, 1]), (2.0, [0, 1])]
    assert (tmp_path / "out" / "results.csv").read_text().count(",ok,") == 8


@pytest.mark.slow
def test_a_second_sweep_on_the_same_folder_trains_no_run_twice(reference, tmp_path):
    csv, path = reference
    out = tmp_path / "out"
    env = {**os.environ, "MIM_SWEEP_LIMIT": "0"}
    first = subprocess.Popen([MIM, "sweep", str(path), "--out", str(out)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(out.glob("runs/*/status.json")):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run([MIM, "sweep", str(path), "--out", str(out)], env=env, capture_output=True, text=True,
                            timeout=240)
    output = first.communicate(timeout=240)[0]
    assert first.returncode == 0 and second.returncode == 0, output + second.stderr
    assert trained(output) + trained(second.stderr) == 8, output + second.stderr
    assert (out / "results.csv").read_text() == csv


def test_the_launcher_section_is_checked(tmp_path):
    path = sweep_file(tmp_path, launcher={"partition": "gpu", "gpus": 1})
    result = invoke(path, "--slurm")
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1] == ("Error: launcher key 'gpus' is unknown; allowed: partition, time,"
                                                      " gpus_per_task, cpus_per_task, array_parallelism, tasks")
    bad = invoke(sweep_file(tmp_path, launcher={"time": "1h"}), "--slurm")
    assert bad.output.strip().splitlines()[-1] == "Error: launcher time = '1h': give a whole number >= 1"
    alone = invoke(sweep_file(tmp_path), "--partition", "gpu")
    assert alone.exit_code != 0 and "go with --slurm" in alone.output
    both = invoke(sweep_file(tmp_path), "--slurm", "--workers", "2")
    assert both.exit_code != 0 and "--workers and --slurm" in both.output
    count = invoke(sweep_file(tmp_path), "--workers", "0")
    assert count.exit_code == 2 and "give a count >= 1 or 'auto'" in count.output


@pytest.mark.slow
def test_a_slurm_array_gives_the_sequential_results_csv(reference, cluster, tmp_path):
    csv, path = reference
    out = tmp_path / "out"
    submitted = subprocess.run([MIM, "sweep", str(path), "--out", str(out), "--slurm", "--tasks", "3",
                                "--cpus-per-task", "1", "--time", "10"],
                               env={**cluster.env, "MIM_SWEEP_LIMIT": "0"}, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted SLURM job array" in submitted.stderr and "3 tasks for 8 runs" in submitted.stderr
    assert f"collect the results with: mim sweep {path} --out {out}" in submitted.stdout
    deadline = time.time() + 240
    while cluster.client(["squeue", "-h"]).stdout.strip():
        assert time.time() < deadline, cluster.client(["squeue"]).stdout
        time.sleep(1)
    collected = subprocess.run([MIM, "sweep", str(path), "--out", str(out)], env={**cluster.env, "MIM_SWEEP_LIMIT": "0"},
                               capture_output=True, text=True, timeout=120)
    assert collected.returncode == 0, collected.stderr
    assert "8 cached, 0 trained" in collected.stderr
    assert (out / "results.csv").read_text() == csv
