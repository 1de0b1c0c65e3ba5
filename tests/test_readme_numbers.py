"""The printed numbers of the README and the documentation site are what the commands print: the
alpha sweep's table of means (`mim sweep configs/sweep_alpha.yaml`, docs/sweeps.md) and the
quickstart's result lines (`mim train`, README.md and docs/index.md), compared exactly. When training
changes the numbers, re-run the commands and paste their output into every page that shows it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULT_LINES = ("principal cosines", "spectral baseline", "subspace mass", "test relative MSE")
# where each command's output must be shown (it may be shown on other pages too: all are checked)
SHOWN_ON = {"mim sweep configs/sweep_alpha.yaml": ROOT / "docs" / "sweeps.md",
            "mim train --out runs/quickstart": ROOT / "README.md"}


def console_blocks(command: str) -> dict[Path, list[str]]:
    """Per page (README.md, docs/*.md), the lines of its first ```console block that starts with
    `$ <command>`; the page named in SHOWN_ON must have one."""
    found = {}
    for page in PAGES:
        for block in re.findall(r"```console\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            lines = block.splitlines()
            if lines and lines[0].strip() == f"$ {command}":
                found[page] = lines[1:]
                break
    where = SHOWN_ON[command]
    assert where in found, f"{where.relative_to(ROOT)} has no console block for `$ {command}`"
    return found


def sweep_table(lines: list[str]) -> list[str]:
    """The table of means: from its header (it starts with the first swept key) to the note that starts "(means over seeds"."""
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["data.alpha"])
    end = next(i for i, line in enumerate(lines) if line.strip().startswith("(means over seeds"))
    return [line.rstrip() for line in lines[start:end + 1]]


def mim(*args, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "mim_lightning.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "MIM_LIGHTNING_PLUGINS": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_the_readme_blocks_parse():
    for table in map(sweep_table, console_blocks("mim sweep configs/sweep_alpha.yaml").values()):
        assert len(table) == 9 and table[0].split()[:2] == ["data.alpha", "seeds"]
    for lines in console_blocks("mim train --out runs/quickstart").values():
        assert [line.split("  ")[0] for line in lines if line.startswith(RESULT_LINES)] == list(RESULT_LINES)
    assert ROOT / "docs" / "index.md" in console_blocks("mim train --out runs/quickstart")  # the Example shows it too


@pytest.mark.slow
def test_readme_sweep_alpha_table_is_what_the_sweep_prints(tmp_path):
    printed = mim("sweep", str(ROOT / "configs" / "sweep_alpha.yaml"), "--out", str(tmp_path / "sweep"), cwd=tmp_path)
    ours = sweep_table(printed.splitlines())
    for page, lines in console_blocks("mim sweep configs/sweep_alpha.yaml").items():
        assert sweep_table(lines) == ours, page.relative_to(ROOT)


@pytest.mark.slow
def test_readme_quickstart_lines_are_what_mim_train_prints(tmp_path):
    printed = mim("train", "--out", str(tmp_path / "quickstart"), cwd=tmp_path)
    ours = [line.rstrip() for line in printed.splitlines() if line.startswith(RESULT_LINES)]
    for page, lines in console_blocks("mim train --out runs/quickstart").items():
        theirs = [line.rstrip() for line in lines if line.startswith(RESULT_LINES)]
        assert ours == theirs, page.relative_to(ROOT)
