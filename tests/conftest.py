"""Test isolation (plugins installed on the machine are never picked up by accident, the limit
cache is the test's own) and the one SLURM cluster the SLURM tests share."""

import os

import pytest

import slurm_cluster
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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A one-node SLURM cluster (tests/slurm_cluster.py) for every SLURM test of the session, started
    once and stopped by process id at its end; skipped where SLURM is not installed."""
    why = slurm_cluster.missing()
    if why is not None:
        pytest.skip(why)
    cluster = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
