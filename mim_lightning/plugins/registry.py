"""Typed registries of links, losses and activations, filled through the plugin hooks."""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from dataclasses import dataclass, field
from typing import Callable

from mim_lightning.config_yaml import short
from mim_lightning.errors import MimError

KINDS = ("link", "loss", "activation")
PLURAL = {"link": "links", "loss": "losses", "activation": "activations"}
ARITY = {"link": 1, "loss": 2, "activation": 1}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # a component name: no blanks, at most 64 characters
NAME_RULE = "a letter or _, then letters, digits, _ . or -, at most 64 characters, no blanks"


def is_name(name) -> bool:
    """Whether ``name`` can name a component (``NAME``: what the built-ins and plugins use)."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None


@dataclass
class PluginInfo:
    """Where a plugin comes from, what it registered and what went wrong (``errors``)."""

    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    entry_point: str | None = None  # "name = module[:attr]"
    components: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    errors: list[str] = field(default_factory=list)
    loaded: bool = False  # an entry point's plugin made it into the PluginManager

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None

    def describe(self) -> str:
        """"plugin 'x' (entry point x = x_mod, dist 1.0)" or "plugin 'x' (built-in)"."""
        details = ["built-in"] if self.builtin else []
        if self.entry_point:
            details.append(f"entry point {self.entry_point}")
        if self.distribution and not self.builtin:
            details.append(f"{self.distribution} {self.version}" if self.version else self.distribution)
        return f"plugin {self.name!r}" + (f" ({', '.join(details)})" if details else "")

    def to_dict(self) -> dict:
        return {
            "name": self.name, "distribution": self.distribution, "version": self.version,
            "builtin": self.builtin, "entry_point": self.entry_point,
            **{PLURAL[kind]: list(self.components[kind]) for kind in KINDS},
            "error": self.error,
        }


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
    if len(name) > 100:  # no suggestion for a huge name (and no quadratic matching on it)
        return ""
    match = difflib.get_close_matches(name, [c for c in choices if c != name], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_component(kind: str, name, names, hint: str = "") -> MimError:
    """The one-line error for a name that is not among ``names``: why it cannot be a name (blanks,
    length, characters) when so, a close match and the list."""
    rule = "" if is_name(name) else f" (a {kind} name is {NAME_RULE})"
    return MimError(f"unknown {kind} {short(name)}{rule}{closest(str(name), names)};"
                    f" available: {', '.join(sorted(names))}{hint}")


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


def _check_metadata(kind: str, metadata: dict) -> str | None:
    """Why the known metadata keys are invalid, or None."""
    min_r = metadata.get("min_r", 1)
    if isinstance(min_r, bool) or not isinstance(min_r, int) or min_r < 1:
        return f"metadata min_r must be an integer >= 1, got {min_r!r}"
    degree = metadata.get("degree")
    if degree is not None and (isinstance(degree, bool) or not isinstance(degree, int) or degree < 0):
        return f"metadata degree must be an integer >= 0 or None, got {degree!r}"
    return None


class Registry:
    """Components by kind and name; lookups of unknown names list the available ones.

    ``plugins`` describes every plugin that contributed (or failed to); lookups print a one-line
    warning on stderr for the broken plugins that may explain a missing or shadowed component.
    """

    def __init__(self):
        self._items: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.plugins: dict[str, PluginInfo] = {}
        self.rejected: dict[tuple[str, str], list[str]] = {}  # (kind, name) -> registration errors
        self._warned: set[str] = set()

    def describe(self, plugin: str) -> str:
        info = self.plugins.get(plugin)
        return info.describe() if info else f"plugin {plugin!r}"

    def add(self, kind: str, name: str, fn: Callable, plugin: str, **metadata) -> Component:
        who = self.describe(plugin)
        if not is_name(name):
            raise RegistrationError(f"{who}: {kind} name {short(name)} is not a name: use {NAME_RULE}")
        if not callable(fn):
            raise RegistrationError(f"{who}: {kind} {name!r} is not callable (got {type(fn).__name__})")
        if not _accepts(fn, ARITY[kind]):
            raise RegistrationError(
                f"{who}: {kind} {name!r} must take {ARITY[kind]} argument(s)"
                f" ({'z' if kind == 'link' else 't, y' if kind == 'loss' else 'u'})"
            )
        problem = _check_metadata(kind, metadata)
        if problem:
            raise RegistrationError(f"{who}: {kind} {name!r}: {problem}")
        existing = self._items[kind].get(name)
        if existing is not None:
            raise RegistrationError(
                f"{who}: {kind} {name!r} is already registered by {self.describe(existing.plugin)}"
            )
        component = Component(kind, name, fn, plugin, dict(metadata))
        self._items[kind][name] = component
        if plugin in self.plugins:
            self.plugins[plugin].components[kind].append(name)
        return component

    def broken(self) -> list[PluginInfo]:
        return [info for info in self.plugins.values() if info.errors]

    def warn(self, message: str) -> None:
        """A one-line warning on stderr, once per registry."""
        if message not in self._warned:
            self._warned.add(message)
            sys.stderr.write(f"Warning: {message}\n")

    def get(self, kind: str, name: str) -> Component:
        items = self._items[kind]
        if name not in items:
            broken = self.broken()
            for info in broken:
                self.warn(f"{info.describe()} is broken: {info.error}")
            hint = f"; {len(broken)} plugin(s) failed to load, see `mim plugins`" if broken else ""
            raise unknown_component(kind, name, items, hint)
        for message in self.rejected.get((kind, name), []):
            self.warn(f"{message}; using the one from {self.describe(items[name].plugin)}")
        return items[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in self._items[kind].values()]
