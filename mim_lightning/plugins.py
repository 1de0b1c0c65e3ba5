"""The plugin manager: built-in components first, then third-party entry points.

The built-ins are plugins like any other (the simonw/llm pattern): they implement the hooks of
``hookspecs.py`` and are registered by import path. Third-party packages expose a module in the
entry-point group ``mim_lightning``.
"""

from __future__ import annotations

import functools
import importlib

import pluggy

from mim_lightning import hookspecs
from mim_lightning.registry import Registry, RegistrationError

DEFAULT_PLUGINS = (
    "mim_lightning.components.links",
    "mim_lightning.components.losses",
    "mim_lightning.components.activations",
)
HOOKS = {"link": "register_links", "loss": "register_losses", "activation": "register_activations"}

pm = pluggy.PluginManager("mim_lightning")
pm.add_hookspecs(hookspecs)
for _module in DEFAULT_PLUGINS:
    pm.register(importlib.import_module(_module), name=_module)


@functools.cache
def get_registry() -> Registry:
    """Every component registered by every plugin, each attributed to the plugin that registered it."""
    registry = Registry()
    for kind, hook_name in HOOKS.items():
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
            def register(name, fn, _kind=kind, _plugin=impl.plugin_name, **metadata):
                registry.add(_kind, name, fn, _plugin, **metadata)

            impl.function(register=register)
    return registry


def get(kind: str, name: str):
    """The registered function of the given kind and name (errors list the available names)."""
    return get_registry().get(kind, name).fn


__all__ = ["pm", "get_registry", "get", "RegistrationError"]
