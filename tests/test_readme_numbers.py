"""The README's printed numbers are what the commands print: the alpha sweep's table of means
(`mim sweep configs/sweep_alpha.yaml`) and the quickstart's result lines (`mim train`), compared
exactly. When training changes the numbers, re-run the commands and paste their output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULT_LINES = ("principal cosines", "spectral baseline", "subspace mass", "test relative MSE")


def console_block(command: str) -> list[str]:
    """The lines of the README's first ```console block that starts with `$ <command>`."""
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    for block in blocks:
        lines = block.splitlines()
        if lines and lines[0].strip() == f"$ {command}":
            return lines[1:]
    raise AssertionError(f"README.md has no console block for `$ {command}`")


def sweep_table(lines: list[str]) -> list[str]:
    """The table of means: from its header (it starts with the first swept key) to '(means over seeds)'."""
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["data.alpha"])
    end = next(i for i, line in enumerate(lines) if line.strip() == "(means over seeds)")
    return [line.rstrip() for line in lines[start:end + 1]]


def mim(*args, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "mim_lightning.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "MIM_LIGHTNING_PLUGINS": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_the_readme_blocks_parse():
    table = sweep_table(console_block("mim sweep configs/sweep_alpha.yaml"))
    assert len(table) == 9 and table[0].split()[:2] == ["data.alpha", "seeds"]
    lines = console_block("mim train --out runs/quickstart")
    assert [line.split("  ")[0] for line in lines if line.startswith(RESULT_LINES)] == list(RESULT_LINES)


@pytest.mark.slow
def test_readme_sweep_alpha_table_is_what_the_sweep_prints(tmp_path):
    printed = mim("sweep", str(ROOT / "configs" / "sweep_alpha.yaml"), "--out", str(tmp_path / "sweep"), cwd=tmp_path)
    assert sweep_table(printed.splitlines()) == sweep_table(console_block("mim sweep configs/sweep_alpha.yaml"))


@pytest.mark.slow
def test_readme_quickstart_lines_are_what_mim_train_prints(tmp_path):
    printed = mim("train", "--out", str(tmp_path / "quickstart"), cwd=tmp_path)
    ours = [line.rstrip() for line in printed.splitlines() if line.startswith(RESULT_LINES)]
    theirs = [line.rstrip() for line in console_block("mim train --out runs/quickstart") if line.startswith(RESULT_LINES)]
    assert ours == theirs
