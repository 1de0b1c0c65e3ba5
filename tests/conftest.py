"""Test isolation: plugins installed on the machine are never picked up by accident."""

import os

import pytest

from mim_lightning.plugins import manager as plugins

# Sweeps in the tests draw no Bayes-optimal curve (seconds of state evolution per sweep) unless a
# test asks for it (tests/test_limit_plot.py); set MIM_SWEEP_LIMIT=1 to draw it everywhere.
os.environ.setdefault("MIM_SWEEP_LIMIT", "0")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The Bayes-optimal limit is cached in the test's own folder (MIM_CACHE_DIR), never in the
    user's cache folder."""
    monkeypatch.setenv("MIM_CACHE_DIR", str(tmp_path / "mim-cache"))


@pytest.fixture(autouse=True)
def no_installed_plugins(monkeypatch):
    """Load no entry-point plugins (MIM_LIGHTNING_PLUGINS="") unless a test sets the variable itself;
    every test starts and ends with a freshly built registry."""
    monkeypatch.setenv(plugins.ENV_VAR, "")
    plugins.reset()
    yield
    plugins.reset()
