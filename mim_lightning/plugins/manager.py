"""The plugin manager: built-in components first, then third-party entry points.

The built-ins are plugins like any other (the simonw/llm pattern): they implement the hooks of
``hookspecs.py`` and are registered by import path. Third-party packages expose a module in the
entry-point group ``mim_lightning``; they are loaded once, lazily, by the first ``get_registry()``.

``MIM_LIGHTNING_PLUGINS`` chooses which entry points load: unset, all installed ones; empty, none;
a comma-separated list, only those (entry-point or distribution names; unknown names are reported).

A broken plugin (its import fails, a hook raises, it registers something invalid) never stops the
others: its error is recorded in its ``PluginInfo``, listed by ``mim plugins`` and printed as a
one-line warning once per run (``plugins.validate``) and when a component it might have provided is
looked up.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import importlib
import os
import re
import sys
import threading
from importlib import metadata

import pluggy

from mim_lightning.plugins import hookspecs
from mim_lightning.plugins.names import ENV_VAR, GROUP
from mim_lightning.plugins.registry import KINDS, PLURAL, PluginInfo, Registry, RegistrationError

DEFAULT_PLUGINS = (
    "mim_lightning.plugins.builtins.links",
    "mim_lightning.plugins.builtins.losses",
    "mim_lightning.plugins.builtins.activations",
)
HOOKS = {"link": "register_links", "loss": "register_losses", "activation": "register_activations"}
SLOW_PLUGIN_S = 10.0  # a third-party plugin still importing (or in a hook) after this long is named on stderr


def make_plugin_manager() -> pluggy.PluginManager:
    """A PluginManager with the hook specifications and the built-ins (no entry points)."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    for module in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module), name=module)
    return manager


pm = make_plugin_manager()
_entry_point_infos: list[PluginInfo] = []  # one per entry point considered, loaded or failed
_loaded = False


def one_line(exc: BaseException) -> str:
    """'TypeName: message' on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _normalize(name: str | None) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


class PluginExit(Exception):
    """A plugin called os._exit, sys.exit or exit() while being imported or called."""


def _refuse_exit(*args, **kwargs):
    code = args[0] if args else kwargs.get("status", kwargs.get("code"))
    raise PluginExit(f"tried to exit the process (exit code {code!r})")


def slow_warning(info: PluginInfo, doing: str, others) -> str:
    """The warning for a plugin still ``doing`` something after SLOW_PLUGIN_S seconds, with how to
    skip it: MIM_LIGHTNING_PLUGINS set to the ``others`` (the other plugins to load)."""
    return (f"{info.describe()} is still {doing} after {SLOW_PLUGIN_S:g} s; if it hangs, stop with Ctrl-C"
            f" and skip it with {ENV_VAR}='{','.join(others)}'")


@contextlib.contextmanager
def plugin_code(slow: str | None = None):
    """Run third-party plugin code (its import, its hooks) so that it cannot end the process or
    garble our output: what it prints goes to stderr (stdout may be JSON), and os._exit,
    sys.exit, exit() and quit() raise PluginExit, recorded as that plugin's error. Restored after.
    A plugin that blocks cannot be stopped from inside the process, but it is named: ``slow`` is
    printed as a warning on stderr if the code still runs after ``SLOW_PLUGIN_S`` seconds."""
    watchdog = threading.Timer(SLOW_PLUGIN_S, lambda: print(f"Warning: {slow}", file=sys.stderr, flush=True))
    watchdog.daemon = True
    if slow:
        watchdog.start()
    saved = os._exit, sys.exit, builtins.exit, builtins.quit
    os._exit = sys.exit = builtins.exit = builtins.quit = _refuse_exit
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        watchdog.cancel()
        os._exit, sys.exit, builtins.exit, builtins.quit = saved


def _unknown_hooks(manager: pluggy.PluginManager, plugin) -> list[str]:
    """Names of hooks the plugin implements that no hookspec defines (usually a typo)."""
    return sorted(caller.name for caller in manager.get_hookcallers(plugin) or [] if not caller.has_spec())


def load_entrypoints(manager: pluggy.PluginManager, selection: str | None, entry_points=None) -> list[PluginInfo]:
    """Register the plugins of the entry-point group on ``manager``; one PluginInfo per entry point.

    ``selection`` is the value of MIM_LIGHTNING_PLUGINS (None: all; '': none; 'a,b': only those
    entry-point or distribution names). Failures are recorded in the infos, never raised.
    """
    if selection is not None and not selection.strip():
        return []
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)
    wanted = None if selection is None else [n.strip() for n in selection.split(",") if n.strip()]
    matched: set[str] = set()
    infos = []
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if wanted is not None:
            hits = [w for w in wanted if w == ep.name or _normalize(w) == _normalize(dist_name)]
            if not hits:
                continue
            matched.update(hits)
        info = PluginInfo(ep.name, dist_name, dist.version if dist is not None else None,
                          entry_point=f"{ep.name} = {ep.value}")
        infos.append(info)
        others = [e.name for e in entry_points if e.name != ep.name] if wanted is None else [
            w for w in wanted if w not in hits]
        try:
            with plugin_code(slow_warning(info, "importing", others)):
                plugin = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure of a third-party plugin
            info.errors.append(f"import failed: {one_line(exc)}")
            continue
        try:
            manager.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - pluggy's ValueError / PluginValidationError
            info.errors.append(f"could not be registered: {one_line(exc)}")
            continue
        info.loaded = True
        unknown = _unknown_hooks(manager, plugin)
        if unknown:
            info.errors.append(f"implements unknown hook(s) {', '.join(unknown)}"
                               f" (known: {', '.join(HOOKS.values())})")
        elif not manager.get_hookcallers(plugin):
            info.errors.append(f"implements none of the hooks {', '.join(HOOKS.values())} (missing @hookimpl?)")
    for name in wanted or []:
        if name not in matched:
            available = sorted({ep.name for ep in entry_points})
            infos.append(PluginInfo(name, errors=[
                f"not installed: {ENV_VAR} names {name!r}, but no entry point or distribution of group"
                f" {GROUP!r} has that name (installed: {', '.join(available) or 'none'})"]))
    return infos


def load_plugins() -> None:
    """Load the third-party entry points into ``pm``, once (MIM_LIGHTNING_PLUGINS decides which)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    _entry_point_infos.extend(load_entrypoints(pm, os.environ.get(ENV_VAR)))


def _builtin_info(name: str) -> PluginInfo:
    try:
        version = metadata.version("mim-lightning")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        version = None
    return PluginInfo(name, "mim-lightning", version, builtin=True)


def build_registry(manager: pluggy.PluginManager | None = None, infos=()) -> Registry:
    """Call every plugin's hooks with a ``register(name, fn, **metadata)`` callback.

    Plugins are called in registration order (built-ins first), so a duplicate name is blamed on
    the later plugin. Every error is recorded on the plugin's PluginInfo, never raised.
    """
    manager = pm if manager is None else manager
    registry = Registry()
    known = {info.name: info for info in infos if info.loaded}
    for name, plugin in manager.list_name_plugin():
        if plugin is None:  # blocked
            continue
        if name in known:
            info = dataclasses.replace(known[name], components={k: [] for k in HOOKS}, errors=list(known[name].errors))
        elif name in DEFAULT_PLUGINS:
            info = _builtin_info(name)
        else:
            info = PluginInfo(name)
        registry.plugins[name] = info
        for kind, hook_name in HOOKS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(component, fn, _kind=kind, _plugin=name, **metadata):
                    try:
                        registry.add(_kind, component, fn, _plugin, **metadata)
                    except RegistrationError as exc:
                        registry.plugins[_plugin].errors.append(str(exc).removeprefix(f"{registry.describe(_plugin)}: "))
                        registry.rejected.setdefault((_kind, str(component)), []).append(str(exc))

                others = [i.name for i in infos if i.name != name]
                slow = slow_warning(info, f"in {hook_name}", others) if name in known else None  # entry points
                try:
                    with plugin_code(slow):
                        impl.function(**({"register": register} if "register" in impl.argnames else {}))
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin's hook must not break the others
                    info.errors.append(f"{hook_name} raised {one_line(exc)}")
    for number, info in enumerate(infos):  # entry points that never made it into the manager
        if not info.loaded:
            key = info.name if info.name not in registry.plugins else f"{info.name}#{number}"
            registry.plugins[key] = dataclasses.replace(info, errors=list(info.errors))
    return registry


@functools.cache
def get_registry() -> Registry:
    """Every component registered by every plugin, each attributed to the plugin that registered it."""
    load_plugins()
    return build_registry(pm, _entry_point_infos)


def get(kind: str, name: str):
    """The registered function of the given kind and name (errors list the available names)."""
    return get_registry().get(kind, name).fn


def plugin_infos() -> list[PluginInfo]:
    """Every plugin, built-ins first, broken ones included (their ``error`` says why)."""
    return list(get_registry().plugins.values())


def reset() -> None:
    """Forget the loaded entry points (for tests, or after changing MIM_LIGHTNING_PLUGINS)."""
    global _loaded
    for info in _entry_point_infos:
        plugin = pm.get_plugin(info.name)
        if plugin is not None and info.name not in DEFAULT_PLUGINS:
            pm.unregister(plugin, name=info.name)
    _entry_point_infos.clear()
    _loaded = False
    get_registry.cache_clear()


__all__ = ["pm", "get_registry", "get", "plugin_infos", "load_plugins", "reset", "build_registry",
           "make_plugin_manager", "PluginInfo", "RegistrationError", "GROUP", "ENV_VAR", "DEFAULT_PLUGINS"]


def format_plugins(infos: list[PluginInfo]) -> str:
    """A readable listing: one header line per plugin, then its components or its error."""

    lines = []
    for info in infos:
        dist = f"{info.distribution} {info.version or ''}".strip() if info.distribution else "not from a distribution"
        origin = f"built-in, {dist}" if info.builtin else dist
        entry = f", entry point {info.entry_point}" if info.entry_point else ""
        lines.append(f"{info.name}  ({origin}{entry})")
        for kind in KINDS:
            if info.components[kind]:
                lines.append(f"  {PLURAL[kind]:<12} {', '.join(info.components[kind])}")
        for error in info.errors:
            lines.append(f"  ERROR        {error}")
    return "\n".join(lines)
