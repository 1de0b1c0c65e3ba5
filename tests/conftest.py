"""Test isolation: plugins installed on the machine are never picked up by accident."""

import pytest

from mim_lightning.plugins import manager as plugins


@pytest.fixture(autouse=True)
def no_installed_plugins(monkeypatch):
    """Load no entry-point plugins (MIM_LIGHTNING_PLUGINS="") unless a test sets the variable itself;
    every test starts and ends with a freshly built registry."""
    monkeypatch.setenv(plugins.ENV_VAR, "")
    plugins.reset()
    yield
    plugins.reset()
