"""Fast failures (issue 20): a bad sweep file is refused before torch is imported, and a forgotten
'=' after --set KEY is named as such."""

import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from mim_lightning.cli import main

SCRIPT = ("import sys\nfrom mim_lightning.cli import main\ntry:\n    main(sys.argv[1:])\n"
          "except SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n")


def refused(tmp_path, *args):
    """(stderr, stdout words) of ``mim ARGS`` in a fresh interpreter, which says whether torch was imported."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MIM_LIGHTNING_PLUGINS": ""}, timeout=60)
    return done.stderr, done.stdout.split()


@pytest.mark.parametrize("sweep, message", [
    ({"data.alpah": [1, 2]}, "Error: sweep key 'data.alpah' is not a config key (did you mean 'data.alpha'?)"),
    ({"data.link": ["sum_he2", "nope"]}, "Error: sweep run data.link='nope': data.link: unknown link 'nope'"),
    ({"data.alpha": [1, -2]}, "Error: sweep data.alpha = -2: config key 'data.alpha'"),
])
def test_a_bad_sweep_file_is_refused_before_torch_loads(tmp_path, sweep, message):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"d": 32, "r": 2}, "sweep": sweep}))
    stderr, stdout = refused(tmp_path, "sweep", "bad.yaml")
    assert stderr.startswith(message), stderr
    assert stdout == ["1", "False"]


def test_a_missing_sweep_file_is_refused_before_torch_loads(tmp_path):
    stderr, stdout = refused(tmp_path, "sweep", "missing.yaml")
    assert stderr.startswith("Error: config file 'missing.yaml' does not exist"), stderr
    assert stdout == ["1", "False"]


@pytest.mark.parametrize("args", [["train", "--set", "data.d", "64"], ["train", "c.yaml", "--set", "data.d", "64"],
                                  ["sweep", "c.yaml", "--set", "data.d", "64"]])
def test_a_forgotten_equals_sign_is_named(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output == ("Error: --set data.d 64: the '=' is missing, so '64' would be read as another argument;"
                             " write --set data.d=64\n")
