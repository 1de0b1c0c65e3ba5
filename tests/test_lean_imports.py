"""A run imports no metric back-end it does not use: with a (fake) transformers installed, as in most
ML environments, importing the training stack leaves it unimported (torchmetrics would import it
for its BERTScore)."""

import os
import subprocess
import sys


def test_the_training_stack_does_not_import_transformers(tmp_path):
    package = tmp_path / "transformers"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '4.40.0'\nAutoModel = AutoTokenizer = object\n")
    info = tmp_path / "transformers-4.40.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.40.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    probe = ("import importlib.metadata as m, sys; assert m.version('transformers') == '4.40.0'; "
             "import mim_lightning.training.run; print('transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    plain = subprocess.run([sys.executable, "-c", "import sys, torchmetrics; print('transformers' in sys.modules)"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert plain.stdout.strip() == "True", plain.stderr   # the fake is real enough to be imported otherwise
