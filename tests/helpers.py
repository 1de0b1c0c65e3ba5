"""Small shared helpers for the tests."""

from mim_lightning.config import load_config

TINY = ["data.d=32", "data.alpha=8", "data.alpha2=8", "data.n_test=512", "model.width=32", "stage1.steps=3"]


def tiny_config(*overrides):
    """A config small enough for a sub-second run."""
    return load_config(None, [*TINY, *overrides])
