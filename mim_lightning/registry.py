"""Typed registries of links, losses and activations, filled through the plugin hooks."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable

from mim_lightning.errors import MimError

KINDS = ("link", "loss", "activation")
ARITY = {"link": 1, "loss": 2, "activation": 1}


@dataclass(frozen=True)
class Component:
    """One registered function with where it came from and its metadata (e.g. ``min_r``)."""

    kind: str
    name: str
    fn: Callable
    plugin: str
    metadata: dict = field(default_factory=dict)


class RegistrationError(MimError):
    """A plugin tried to register something invalid."""


def closest(name: str, choices) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _accepts(fn: Callable, n_args: int) -> bool:
    """Whether fn can be called with n_args positional arguments (True when unknowable)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*range(n_args))
    except TypeError:
        return False
    return True


class Registry:
    """Components by kind and name; lookups of unknown names list the available ones."""

    def __init__(self):
        self._items: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, fn: Callable, plugin: str, **metadata) -> Component:
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"plugin {plugin!r}: {kind} name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise RegistrationError(f"plugin {plugin!r}: {kind} {name!r} is not callable (got {type(fn).__name__})")
        if not _accepts(fn, ARITY[kind]):
            raise RegistrationError(
                f"plugin {plugin!r}: {kind} {name!r} must take {ARITY[kind]} argument(s)"
                f" ({'z' if kind == 'link' else 't, y' if kind == 'loss' else 'u'})"
            )
        existing = self._items[kind].get(name)
        if existing is not None:
            raise RegistrationError(
                f"plugin {plugin!r}: {kind} {name!r} is already registered by plugin {existing.plugin!r}"
            )
        component = Component(kind, name, fn, plugin, dict(metadata))
        self._items[kind][name] = component
        return component

    def get(self, kind: str, name: str) -> Component:
        items = self._items[kind]
        if name not in items:
            raise MimError(
                f"unknown {kind} {name!r}{closest(str(name), items)}; available: {', '.join(sorted(items))}"
            )
        return items[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in self._items[kind].values()]
