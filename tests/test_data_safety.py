"""mim never deletes or mixes up a user's data: it writes only into folders it owns, a sweep trusts a
cached run only when it is that run's, a resume is exact in every phase (the test pass included),
TensorBoard events reach the disk with every checkpoint, and files honour the umask."""

import json
import os
import stat

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import TINY, tiny_config
from mim_lightning.cli import main, next_step
from mim_lightning.experiments.sweep import run_sweep
from mim_lightning.training import callbacks
from mim_lightning.errors import Interrupted
from mim_lightning.training.checkpoints import StopRequest
from mim_lightning.training.run import train_replicas
from mim_lightning.training.run_folder import RunFolder


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args), *sets(TINY)])


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_folder_mim_did_not_make_is_refused_untouched(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet.ckpt").write_text("x")
    (tmp_path / "results.json").write_text("{\"mine\": 1}")
    assert "not a mim run folder" in one_error_line(train("--out", tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "resnet.ckpt", "results.json"]


def test_a_finished_run_is_kept_unless_overwrite_and_then_only_mims_files_go(tmp_path):
    assert train("--out", tmp_path).exit_code == 0
    first = (tmp_path / "results.json").read_text()
    assert "--overwrite" in one_error_line(train("--out", tmp_path))
    assert (tmp_path / "results.json").read_text() == first
    (tmp_path / "checkpoints" / "notes.txt").write_text("mine")
    (tmp_path / "tensorboard" / "mine.txt").write_text("mine")
    result = train("--out", tmp_path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "checkpoints" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "tensorboard" / "mine.txt").read_text() == "mine"
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_sweep_and_run_folders_are_never_taken_for_each_other(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text("sweep: {}\n")
    assert "sweep folder" in one_error_line(train("--out", sweep_dir))
    run_dir = tmp_path / "run"
    assert train("--out", run_dir).exit_code == 0
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("sweep: {seed: [0]}\n")
    result = CliRunner().invoke(main, ["sweep", str(sweep_file), "--out", str(run_dir), "--no-limit"])
    assert "run folder" in one_error_line(result)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "config.yaml", "results.json",
                                                         "status.json", "tensorboard"]


def test_without_out_each_run_gets_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train().exit_code == 0
    assert train().exit_code == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.name != "latest")
    assert len(runs) == 2 and all((p / "results.json").is_file() for p in runs)
    assert (tmp_path / "runs" / "latest").resolve() == runs[-1].resolve()


@pytest.fixture()
def sweep_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("data: {d: 32, alpha: 8, alpha2: 8, n_test: 512}\nmodel: {width: 32}\nstage1: {steps: 3}\n"
                    "sweep:\n  seed: [0, 1]\n")
    return path


def test_a_sweep_retrains_a_run_whose_results_are_not_its_own(tmp_path, sweep_file, capsys):
    out = tmp_path / "out"
    first = run_sweep(sweep_file, out=out, limit=False)
    keys = [run.key for run in first["sweep"].runs]
    other, broken = (out / "runs" / key / "results.json" for key in keys)
    seed0 = json.loads(other.read_text())
    swapped = json.loads(broken.read_text())
    other.write_text(json.dumps(swapped))              # another run's (seed 1's) results in seed 0's folder
    broken.write_text(json.dumps({**swapped, "principal_cosines": [-5.0, 0.1], "test_rel_mse": -1}))
    again = run_sweep(sweep_file, out=out, limit=False)
    assert again["trained"] == 2
    warnings = capsys.readouterr().err
    assert "written for another config" in warnings and "principal_cosines" in warnings
    assert again["results"][keys[0]]["principal_cosines"] == seed0["principal_cosines"]
    (out / "runs" / keys[0] / "results.json").write_text("{}")
    assert run_sweep(sweep_file, out=out, limit=False)["trained"] == 1


def test_a_sweep_with_other_overrides_never_shares_a_folder(tmp_path, sweep_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = run_sweep(sweep_file, limit=False)
    other = run_sweep(sweep_file, ["data.alpha=4"], limit=False)
    assert (tmp_path / "runs" / "grid").is_dir() and len(list((tmp_path / "runs").iterdir())) == 2
    assert plain["rows"] != other["rows"]
    result = CliRunner().invoke(main, ["sweep", str(sweep_file), "--out", "runs/grid", "--set", "data.alpha=4",
                                       "--no-limit"])
    assert "holds another sweep" in one_error_line(result) and "data.alpha" in result.output


class StopAt(StopRequest):
    """A stop request that arrives the first time the run reaches ``phase``."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase

    def check(self, stage: str) -> None:
        if stage == self.phase and self.phase:
            self.phase, self.signal_name = "", "SIGTERM"
        super().check(stage)


def without_timings(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "timings"}


def test_a_stop_in_the_test_pass_resumes_with_every_field(tmp_path):
    cfg = tiny_config("data.n_test=4096", "data.chunk_size=512", "stage2.loss=huber", "stage2.steps=5")
    full = train_replicas(cfg, tmp_path / "full", [cfg.seed])[0]
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted, match="test pass"):
        train_replicas(cfg, out, [cfg.seed], stop=StopAt("the test pass"))
    resumed = train_replicas(cfg, out, [cfg.seed], resume=True)[0]
    assert resumed["stage2_loss"] is not None
    assert without_timings(resumed) == without_timings(full)


def test_tensorboard_events_reach_the_disk_with_every_checkpoint(tmp_path, monkeypatch):
    seen = []
    save = callbacks.save_checkpoint

    def save_and_read(path, state):
        save(path, state)
        if state["stage"] == "stage1":
            board = EventAccumulator(str(tmp_path / "tensorboard"))
            board.Reload()
            seen.append((state["step"], [event.step for event in board.Scalars("stage1/subspace_mass")]))

    monkeypatch.setattr(callbacks, "save_checkpoint", save_and_read)
    cfg = tiny_config("stage1.steps=6", "checkpoint.every_n_steps=2")
    train_replicas(cfg, tmp_path, [cfg.seed])
    assert seen == [(t, list(range(t + 1))) for t in (2, 4, 6)]   # steps 0..t on disk with step t's checkpoint


def test_the_resume_hint_only_when_a_checkpoint_exists(tmp_path):
    folder = RunFolder(tmp_path)
    assert "start the run again" in next_step(folder)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert next_step(folder).startswith("Resume with: mim train --resume")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_honour_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        result = train("--out", tmp_path)
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    for name in ("results.json", "status.json", "config.yaml", "checkpoints/last.ckpt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
    events = next((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert stat.S_IMODE(events.stat().st_mode) == 0o666 & ~mask
