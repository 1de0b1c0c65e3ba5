"""Chance levels of the plotted quantities: what a subspace or weights drawn at random would score.

* smallest principal cosine: the median, over uniformly random r-dimensional subspaces of R^d, of
  the smallest principal cosine with a fixed one (a seeded simulation, cached);
* subspace mass of W, and the mean squared cosine of a random subspace: exactly r / d;
* mass per unit dimension of one eigenspace of M: exactly 1 / d.
"""

from __future__ import annotations

# the simulation lives in core (training's TensorBoard series use it too; training is below experiments)
from mim_lightning.core.chance import DRAWS, _wishart, mass_per_dimension, median_min_cosine, subspace_mass

__all__ = ["DRAWS", "_wishart", "mass_per_dimension", "median_min_cosine", "subspace_mass"]
