"""mim-lightning: two-layer networks learning Gaussian multi-index models, layer by layer."""

from mim_lightning.plugins.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
