"""Component names known without importing torch, so that a misspelt name is refused in a
fraction of a second (the built-ins are torch functions: loading them takes 1-3 s).

``BUILTIN_NAMES`` lists what the built-in plugins register (a test keeps it equal to the
registry). When the registry is not loaded yet and no entry-point plugin can load (none
installed, or ``MIM_LIGHTNING_PLUGINS`` set empty) these are all the names there are; otherwise a
name may come from a plugin and only the registry can tell.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from mim_lightning.errors import MimError
from mim_lightning.plugins.registry import is_name, unknown_component

GROUP = "mim_lightning"                 # the entry-point group of third-party plugins
ENV_VAR = "MIM_LIGHTNING_PLUGINS"       # which of them load (unset: all; empty: none)

BUILTIN_NAMES = {
    "link": ("he2", "linear_he2", "staircase", "sum_he2", "tanh_sum", "weighted_he2", "z1z2"),
    "loss": ("even_tanh_sq", "huber", "logcosh", "optimal_he2", "optimal_sum_he2_r1", "optimal_sum_he2_r2",
             "optimal_sum_he2_r2_s2", "optimal_sum_he2_r3", "optimal_sum_he2_r4", "pseudo_huber", "squared"),
    "activation": ("logcosh", "one_minus_cos", "quadratic", "relu", "tanh"),
}


def registry_needed() -> bool:
    """Whether only the registry can tell: it is loaded already (then it costs nothing more and
    knows the plugins registered in this process), or an entry-point plugin could add names (one
    is installed and not switched off)."""
    if "mim_lightning.plugins.manager" in sys.modules:
        return True
    return os.environ.get(ENV_VAR) != "" and bool(metadata.entry_points(group=GROUP))


def refuse_unknown(kind: str, name) -> None:
    """Raise the registry's unknown-name error now when ``name`` is no built-in and no plugin can
    provide it (none can when it is not a valid name, e.g. has blanks); otherwise leave the
    verdict to the registry."""
    if name in BUILTIN_NAMES[kind] or is_name(name) and registry_needed():
        return
    raise unknown_component(kind, name, BUILTIN_NAMES[kind])


def refuse_unknown_keys(pairs) -> None:
    """``refuse_unknown`` for (key, kind, name) triples, the error prefixed with the key."""
    for key, kind, name in pairs:
        try:
            refuse_unknown(kind, name)
        except MimError as exc:
            raise MimError(f"{key}: {exc}") from None
