"""Faults of sweeps trained elsewhere than in the sweep's own process, against a real one-node SLURM
cluster (tests/slurm_cluster.py) where SLURM is installed: a preempted array task is requeued and its
run resumes with the numbers of an uninterrupted run; a run that diverges is recorded as failed while
the others finish (under --slurm and --workers 2); two --slurm submissions of one sweep at once train
no run twice; and `mim train` inside an salloc shell (SLURM_JOB_ID set, no srun step) runs as on a
laptop."""

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mim_lightning.cli import main
from mim_lightning.experiments import slurm


MIM = str(Path(sys.executable).parent / "mim")
NO_LIMIT = {"MIM_SWEEP_LIMIT": "0"}
# one group of two seeds, long enough (200 steps, a checkpoint every 10) to be stopped in stage 1
PREEMPTED = {"data": {"d": 32, "alpha": 8, "alpha2": 8, "n_test": 256}, "model": {"width": 16},
             "stage1": {"steps": 200}, "metrics": {"every_n_steps": 20}, "checkpoint": {"every_n_steps": 10},
             "sweep": {"seed": [0, 1]}}
# 8 runs in 4 groups of seeds; the 4 runs of stage1.lr = 1e6 diverge (stage1 diverged by step 10)
DIVERGING = {"data": {"d": 16, "alpha2": 8, "n_test": 256}, "model": {"width": 16, "init_scale": 1},
             "stage1": {"steps": 100, "weight_decay": 0, "loss": "squared"},
             "sweep": {"stage1.lr": [0.05, 1e6], "data.alpha": [4, 8], "seed": [0, 1]}}
DIVERGED = re.compile(r"sweep run stage1\.lr=1000000\.0, data\.alpha=\d, seed=\d: stage 1 diverged by step \d+: the"
                      r" first-layer weights or the loss are not finite; lower stage1\.lr \(now 1000000\.0\)")
FIELDS = ("principal_cosines", "subspace_mass", "test_rel_mse", "spectral_principal_cosines", "stage2_loss")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
SECONDS = 240   # the longest wait for a SLURM job here (a task imports torch and Lightning in 15-20 s)


def sweep_file(folder: Path, content: dict) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)], catch_exceptions=False)


def trained(output: str) -> int:
    """The number of runs a sweep says it trained itself."""
    return int(re.search(r"cached, (\d+) trained", output).group(1))


def results_of(out: Path) -> dict[str, dict]:
    """{run key: results.json without its timings} of a sweep folder."""
    found = {}
    for path in sorted(out.glob("runs/*/results.json")):
        results = json.loads(path.read_text())
        results.pop("timings")
        found[path.parent.name] = results
    return found


def poll(condition, what: str, seconds: float = SECONDS, every: float = 0.1):
    """Wait until ``condition()`` is true (its value), failing with ``what`` after ``seconds``."""
    deadline = time.time() + seconds
    while not (value := condition()):
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(every)
    return value


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """The diverging sweep's file and its sequential results.csv (text)."""
    root = tmp_path_factory.mktemp("diverging")
    path = sweep_file(root, DIVERGING)
    result = invoke(path, "--out", root / "out")
    assert result.exit_code == 0, result.output
    csv = (root / "out" / "results.csv").read_text()
    assert len(DIVERGED.findall(csv)) == 4 and csv.count(",ok,") == 4, csv
    return path, csv


def job_state(cluster, job: str) -> dict[str, str]:
    """``scontrol show job``'s KEY=VALUE fields of one job ({} once SLURM has forgotten it)."""
    shown = cluster.client(["scontrol", "show", "job", job]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


@pytest.mark.slow
def test_a_preempted_task_is_requeued_and_resumes_with_the_numbers_of_an_uninterrupted_run(cluster, tmp_path,
                                                                                             monkeypatch):
    path = sweep_file(tmp_path, PREEMPTED)
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    submitted = invoke(path, "--out", out, "--slurm", "--tasks", "1", "--cpus-per-task", "1", "--time", "10")
    assert submitted.exit_code == 0, submitted.output
    task = re.search(r"submitted SLURM job (\d+): 1 task for 2 runs", submitted.output).group(1)   # one task: no array
    # the run is in stage 1 once its first checkpoint (step 10) is written: SLURM's preemption signal
    poll(lambda: list(out.glob("runs/*/checkpoints/last.ckpt")), "the first checkpoint", every=0.05)
    signalled = cluster.client(["scancel", "--signal=TERM", task])
    assert signalled.returncode == 0, signalled.stderr
    # the task checkpoints, asks SLURM to requeue it and exits; SLURM holds a requeued job for about
    # 2 minutes (its BeginTime), which a cluster spends anyway: the test lets it start at once
    state = poll(lambda: (s := job_state(cluster, task)).get("Restarts") == "1" and s.get("JobState") == "PENDING"
                 and s, "the requeue")
    assert state["Reason"] == "BeginTime", state
    # released only once the node has finished cleaning up the first attempt (state 'idle', not
    # 'completing'): a job started at once under the same id can be killed by that clean-up
    poll(lambda: cluster.client(["sinfo", "-h", "-o", "%t"]).stdout.strip() == "idle", "the node to be idle")
    assert cluster.client(["scontrol", "update", f"JobId={task}", "StartTime=now"]).returncode == 0
    # the job's own state, not squeue's listing (an squeue that fails under load lists nothing)
    ended = poll(lambda: (s := job_state(cluster, task)).get("JobState") in ENDED and s, "the requeued task to end",
                 every=0.5)
    log = (out / "slurm" / f"{task}_0_log.err").read_text()
    daemons = "".join((cluster.root / name).read_text()[-3000:] for name in ("slurmctld.log", "slurmd.log")
                      if (cluster.root / name).is_file())
    assert ended["JobState"] == "COMPLETED" and ended["Restarts"] == "1", (ended, log, daemons)
    stop = re.search(r"mim sweep task: stopped by SIGTERM in stage1 after step (\d+); checkpoint saved to .*;"
                     r" asking SLURM to requeue it", log)
    assert stop is not None, log
    assert 10 <= int(stop.group(1)) < 200, log
    assert log.count("mim sweep task: trained the base config (seeds 0, 1 batched)") == 1, log
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("runs/*/status.json")]
    assert statuses == ["finished", "finished"]

    collected = invoke(path, "--out", out, "--no-limit")
    assert collected.exit_code == 0, collected.output
    assert "2 cached, 0 trained" in collected.output
    reference = invoke(path, "--out", tmp_path / "reference", "--no-limit")
    assert reference.exit_code == 0, reference.output
    resumed, uninterrupted = results_of(out), results_of(tmp_path / "reference")
    assert len(resumed) == 2 and resumed.keys() == uninterrupted.keys()
    for key, results in uninterrupted.items():
        assert [row["step"] for row in resumed[key]["history"]] == [row["step"] for row in results["history"]]
        for field in FIELDS:
            assert resumed[key][field] == results[field], field
        assert resumed[key] == results   # and every other field but the timings
    assert (out / "results.csv").read_text() == (tmp_path / "reference" / "results.csv").read_text()


@pytest.mark.slow
def test_a_diverging_run_is_recorded_as_failed_while_two_workers_finish_the_others(diverging, tmp_path):
    path, csv = diverging
    result = invoke(path, "--out", tmp_path / "out", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "results.csv").read_text() == csv
    assert f"Warning: 4 of 8 runs failed (status column of results.csv, runs/<run>/status.json; delete their" \
           f" folders in {tmp_path / 'out' / 'runs'} to retry them)" in result.output
    failed = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("runs/*/status.json")]
    assert sorted(s["status"] for s in failed) == ["failed"] * 4 + ["finished"] * 4
    assert all(s.get("final") and DIVERGED.match(s["message"]) for s in failed if s["status"] == "failed")


@pytest.mark.slow
def test_two_slurm_sweeps_of_one_diverging_sweep_at_once_train_no_run_twice(diverging, cluster, tmp_path, monkeypatch):
    """Two `mim sweep FILE --slurm --wait` on one folder at once: each array task trains what is left
    and skips the groups the other holds (its log says which; whether the two tasks meet on a group
    depends on their start-up), the diverged runs are failed rows of the sequential results.csv and
    both sweeps say so, and every run is trained by exactly one task."""
    path, csv = diverging
    out = tmp_path / "out"
    options = ["--slurm", "--wait", "--tasks", "1", "--cpus-per-task", "1", "--time", "10"]
    other = subprocess.Popen([MIM, "sweep", str(path), "--out", str(out), *options], env={**cluster.env, **NO_LIMIT},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:   # the second submission once the first is made, so that the two tasks train at the same time
        poll(lambda: other.poll() is not None or list(out.glob("slurm/*_submitted.pkl")), "the first submission")
        monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        here = invoke(path, "--out", out, "--no-limit", *options)   # this one in the test's process
        output = other.communicate(timeout=SECONDS)[0]
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    outputs = [here.output, output]
    for code, text in ((here.exit_code, here.output), (other.returncode, output)):
        assert code == 0, text
        assert "submitted SLURM job " in text and "Warning: 4 of 8 runs failed" in text, text
    assert (out / "results.csv").read_text() == csv
    assert sum(map(trained, outputs)) == 8, outputs
    logs = "".join(p.read_text() for p in (out / "slurm").glob("*_log.err"))
    lines = re.findall(r"mim sweep task: trained (.*) \(seeds ([\d, ]+) batched\)", logs)
    runs = [(values, seed) for values, seeds in lines for seed in seeds.split(", ")]
    assert sorted(runs) == sorted((f"stage1.lr={lr}, data.alpha={alpha}", seed)
                                  for lr in ("0.05", "1000000.0") for alpha in (4, 8) for seed in "01"), logs
    assert len(DIVERGED.findall(logs)) >= 4, logs   # each diverged seed warned in the log of the task that trained it


def test_the_time_limit_signal_comes_after_the_start_of_a_short_task():
    """SLURM sends --signal=USR2@DELAY at the start of a task whose limit is not longer than DELAY
    (seen with --time=1 and a delay of 120 s: the task died of it at second 0), and up to 60 s
    early otherwise: a quarter of the limit leaves a task of 2 minutes or more its first 30 s."""
    assert [slurm.signal_delay(minutes) for minutes in (1, 2, 7, 8, 60)] == [15, 30, 105, 120, 120]
    assert all(slurm.signal_delay(minutes) <= minutes * 60 / 4 for minutes in range(1, 1000))


SALLOC = {"SLURM_JOB_ID": "7", "SLURM_JOBID": "7", "SLURM_JOB_NAME": "interactive", "SLURM_JOB_NUM_NODES": "1",
          "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_NODELIST": "node1", "SLURM_TASKS_PER_NODE": "1",
          "SLURM_JOB_CPUS_PER_NODE": "1", "SLURM_SUBMIT_HOST": "login1", "SLURM_CLUSTER_NAME": "cluster"}


def train_in(tmp_path, monkeypatch, variables: dict) -> tuple:
    """``mim train`` of a tiny config with ``variables`` set, as in an salloc shell; (result, results.json).
    Lightning's warning that srun is not used (where srun is installed) must not reach the user."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"data": {"d": 16, "alpha2": 8, "n_test": 256}, "model": {"width": 16},
                                    "stage1": {"steps": 3}}))
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    with warnings.catch_warnings(record=True) as caught:   # what reaches the user, not pytest's record
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["train", str(path), "--out", str(out)], catch_exceptions=False)
    assert not [w for w in caught if "srun" in str(w.message)], [str(w.message) for w in caught]
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    return result, results


def test_mim_train_in_an_salloc_shell_runs_as_on_a_laptop(tmp_path, monkeypatch):
    """`salloc` (and `salloc -n 2`) sets SLURM_JOB_ID and the job name 'interactive' but no SLURM_PROCID:
    Lightning does not take the shell for a SLURM task, says nothing about srun, and the numbers
    are the laptop's."""
    laptop, expected = train_in(tmp_path, monkeypatch, {})
    assert laptop.exit_code == 0, laptop.output
    expected.pop("timings")
    for variables in (SALLOC, {**SALLOC, "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_TASKS_PER_NODE": "2"}):
        result, results = train_in(tmp_path, monkeypatch, variables)
        assert result.exit_code == 0, result.output
        results.pop("timings")
        assert results == expected


def test_mim_train_in_a_named_salloc_shell_with_tasks_runs_as_on_a_laptop(tmp_path, monkeypatch):
    """`salloc -n 2 -J name`: SLURM_NTASKS=2 and a job name other than 'interactive' or 'bash'."""
    result, results = train_in(tmp_path, monkeypatch, {**SALLOC, "SLURM_JOB_NAME": "sweep", "SLURM_NTASKS": "2",
                                                       "SLURM_NPROCS": "2", "SLURM_TASKS_PER_NODE": "2"})
    assert result.exit_code == 0, result.output
