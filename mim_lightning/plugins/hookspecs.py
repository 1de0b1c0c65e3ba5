"""pluggy hook specifications: how a plugin adds links, losses and activations.

Each hook receives ``register(name, fn, **metadata)``. ``fn`` is elementwise torch code:
a link maps z of shape (..., r) to (...); a loss maps (t, y) to the per-sample loss (autograd in t);
an activation maps u to sigma(u).
"""

import pluggy

hookspec = pluggy.HookspecMarker("mim_lightning")
hookimpl = pluggy.HookimplMarker("mim_lightning")


@hookspec
def register_links(register):
    """Register link functions g: R^r -> R with ``register(name, fn, **metadata)``."""


@hookspec
def register_losses(register):
    """Register losses loss(t, y), convex in the prediction t, with ``register(name, fn, **metadata)``."""


@hookspec
def register_activations(register):
    """Register activations sigma(u) with ``register(name, fn, **metadata)``."""
