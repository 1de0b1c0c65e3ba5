"""Small shared helpers for the tests."""

import contextlib

from mim_lightning.config import load_config
from mim_lightning.plugins import manager as plugins

TINY = ["data.d=32", "data.alpha=8", "data.alpha2=8", "data.n_test=512", "model.width=32", "stage1.steps=3"]


def tiny_config(*overrides):
    """A config small enough for a sub-second run."""
    return load_config(None, [*TINY, *overrides])


@contextlib.contextmanager
def plugin_registered(plugin, name: str):
    """``plugin`` registered in this process's plugin manager (registry rebuilt) while inside."""
    plugins.pm.register(plugin, name=name)
    plugins.get_registry.cache_clear()
    try:
        yield
    finally:
        plugins.pm.unregister(name=name)
        plugins.get_registry.cache_clear()
