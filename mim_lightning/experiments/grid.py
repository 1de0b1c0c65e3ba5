"""The grid of a sweep: reading and validating the sweep file, variants, the runs and their keys.

Reading and checking a sweep (``check_sweep``) imports neither torch nor Lightning, so a bad file
is refused in a fraction of a second; ``load_sweep`` then probes the runs' components with the
training stack.

A sweep file is a normal config plus a ``sweep:`` mapping of dotted keys to lists of values; the
runs are the cartesian product of the lists (in the order the keys are written). Each run's key is
a content hash of its resolved config (its folder name, so that a finished run is never trained
again).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mim_lightning.config import Config, all_keys, apply_overrides, build_config, flatten
from mim_lightning.config_yaml import read_yaml, set_dotted
from mim_lightning.errors import MimError
from mim_lightning.plugins.names import refuse_unknown_keys
from mim_lightning.plugins.registry import closest
from mim_lightning.training.run_folder import canonical_json, config_hash


@dataclass
class Run:
    """One point of the grid: its swept values (dotted key -> value), resolved config and key."""

    values: dict[str, Any]
    cfg: Config
    key: str

    def describe(self) -> str:
        return describe(self.values)


def describe(values: dict[str, Any]) -> str:
    """'data.alpha=2, variant='joint'': swept values as written in messages."""
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


@dataclass
class Sweep:
    base: Config
    axes: dict[str, list]  # swept key -> its values, in the order of the sweep file
    runs: list[Run] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)  # variant name -> its dotted overrides

    @property
    def keys(self) -> list[str]:
        return list(self.axes)

    @property
    def x_key(self) -> str | None:
        """The key plots use as x axis: the first swept key other than ``seed`` and ``variant``
        (variants become curves), else ``variant``."""
        return next((k for k in self.keys if k not in ("seed", "variant")), "variant" if self.variants else None)


def sweep_section(sweep: Sweep) -> dict:
    """The ``sweep:`` mapping as written back to DIR/sweep.yaml (variants as their bundles)."""
    section = {k: v for k, v in sweep.axes.items() if k != "variant"}
    if sweep.variants:
        section = {"variant": [{"name": n, **o} for n, o in sweep.variants.items()], **section}
    return section


def canonical(cfg: Config) -> str:
    """The canonical JSON of a resolved config (``run_folder.canonical_json``)."""
    return canonical_json(cfg.model_dump(mode="json"))


def run_key(cfg: Config) -> str:
    """A run's directory name: the first 16 hex digits of its config's identity (``config_hash``)."""
    return config_hash(cfg.model_dump(mode="json"))[:16]


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


def read_sweep_tree(path: str | Path, overrides=()) -> tuple[dict, dict[str, list], dict[str, dict]]:
    """(base config tree, {dotted key: values}, {variant name: overrides}) of a sweep file with
    ``--set`` overrides applied. The ``sweep:`` mapping may be written flat (``data.alpha: [1, 2]``)
    or nested; its optional ``variant`` entry is a list of named bundles of overrides
    (``- {name: joint, stage1.joint: true}``), swept like one key called ``variant``.
    ``--set sweep.KEY=[...]`` replaces (or adds) one key's list however the file spells it; any
    other ``--set`` changes the base config. A key given twice is refused: written flat and nested,
    swept and also set by a variant, or swept and also given with ``--set`` (the runs would not use
    that value)."""
    tree = read_yaml(path)
    tree.pop("launcher", None)  # where the runs are trained (``launch_options``), not what they are
    grid = tree.pop("sweep", None)
    given = apply_overrides(tree, overrides)
    tree.pop("sweep", None)  # what --set gave the sweep is in ``given``, applied below key by key
    changed = {k.removeprefix("sweep."): v for k, v in given.items() if k.startswith("sweep.")}
    if grid is None and not changed:
        raise MimError(f"sweep file {str(path)!r} has no 'sweep:' mapping of keys to lists of values"
                       " (for a single run use mim train)")
    if not isinstance(grid, dict | None) or "sweep" in given or not grid and not changed:
        raise MimError(f"sweep file {str(path)!r}: 'sweep' must be a non-empty mapping of config keys to lists"
                       f" of values, e.g. sweep: {{data.alpha: [1, 2, 4]}} (got {given.get('sweep', grid)!r})")
    grid = dict(grid or {})
    valid = all_keys()
    sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    written_variants = grid.pop("variant", None)
    variants = read_variants(changed.pop("variant", written_variants), valid)
    axes = {"variant": list(variants)} if variants else {}
    try:
        flat = flatten(grid)
    except MimError as exc:
        raise MimError(f"sweep file {str(path)!r}: sweep: {exc}") from None
    for key, values in {**flat, **changed}.items():
        key = str(key)
        if key not in valid:
            if key in sections:
                raise MimError(f"sweep key {key!r} is a section, not a config key; sweep one of its keys, e.g. {key}.{_first_in(key, valid)}")
            raise MimError(f"sweep key {key!r} is not a config key{closest(key, valid)}")
        if not isinstance(values, list):
            raise MimError(f"sweep key {key!r} must map to a list of values, e.g. {key}: [{_show(values)}] (got {_show(values)})")
        if not values:
            raise MimError(f"sweep key {key!r} has an empty list of values")
        seen = set()
        for value in values:
            if _identity(value) in seen:
                raise MimError(f"sweep key {key!r} lists the value {_show(value)} twice")
            seen.add(_identity(value))
        axes[key] = values
    for name, bundle in variants.items():
        for key in bundle:
            if key in axes:
                raise MimError(f"sweep key {key!r} is swept and also set by variant {name!r}; set it in one place")
    for key in given:
        if key in axes:
            raise MimError(f"--set {key}: the sweep gives {key} a list of values, so every run would ignore this"
                           f" one; change the list with --set 'sweep.{key}=[...]'")
    return tree, axes, variants


def read_variants(entries, valid) -> dict[str, dict]:
    """{name: {dotted key: value}} from the ``variant`` list of a sweep (validated, one line per error)."""
    if entries is None:
        return {}
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise MimError("sweep 'variant' must be a non-empty list of mappings, e.g. - {name: joint, stage1.joint: true}")
    variants = {}
    for entry in entries:
        overrides = flatten(dict(entry))
        name = overrides.pop("name", None)
        if not isinstance(name, str) or not name:
            raise MimError(f"sweep variant {entry!r} needs a 'name' (a non-empty string)")
        if name in variants:
            raise MimError(f"sweep variant name {name!r} is used twice")
        for key in overrides:
            if key not in valid:
                raise MimError(f"sweep variant {name!r}: {key!r} is not a config key{closest(key, valid)}")
        variants[name] = overrides
    return variants


def _first_in(section: str, keys) -> str:
    return next(k for k in keys if k.startswith(section + ".")).removeprefix(section + ".")


def _identity(value) -> tuple:
    """What makes two swept values the same (numbers by value, 1 and 1.0 alike; anything else by
    type and content), hashable, so that a long list is checked in linear time."""
    if _number(value):
        return ("number", float(value))
    return (type(value).__name__, json.dumps(value, sort_keys=True, default=str))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def without_seed(cfg: Config) -> str:
    """The canonical config with the seed set to 0: runs that differ only in ``seed`` share it."""
    return canonical(cfg.model_copy(update={"seed": 0}))


MAX_RUNS = 10_000  # a sweep of more runs is refused unless --max-runs allows it


def check_sweep(path: str | Path, overrides=(), max_runs: int = MAX_RUNS) -> Sweep:
    """Read and check a sweep file without importing torch: its number of runs (the product of its
    lists' lengths, at most ``max_runs``), the base config, every swept value on its own, then
    every run of the grid (its config, its component names against the built-ins when no plugin
    could add names, ``plugins.names``) and that no two runs are the same; one-line MimErrors
    naming the key and value. The runs' components are not probed (``load_sweep`` does that)."""
    tree, axes, variants = read_sweep_tree(path, overrides)
    count = math.prod(len(values) for values in axes.values())
    if count > max_runs:
        sizes = " x ".join(f"{len(values)} ({key})" for key, values in axes.items())
        raise MimError(f"sweep file {str(path)!r} has {count:,} runs ({sizes}), more than the maximum of {max_runs:,};"
                       " shorten its lists, or pass --max-runs N to allow more")
    base = build_config(tree)

    def apply(one: dict, key: str, value) -> None:
        for k, v in (variants[value].items() if key == "variant" else [(key, value)]):
            set_dotted(one, k, v)

    for key, values in axes.items():  # each value on its own, so the error names the culprit
        for value in values:
            one = copy.deepcopy(tree)
            apply(one, key, value)
            try:
                build_config(one)
            except MimError as exc:
                if key == "variant" or f"{key!r}" in str(exc):
                    raise MimError(f"sweep {key} = {_show(value)}: {exc}") from None
    sweep = Sweep(base, axes, variants=variants)
    seen, named = {}, set()
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        one = copy.deepcopy(tree)
        for key, value in values.items():
            apply(one, key, value)
        run = Run(values, None, "")
        try:
            run.cfg = build_config(one)
            names = (run.cfg.data.link, run.cfg.stage1.loss, run.cfg.stage2.loss, run.cfg.model.activation)
            if names not in named:
                refuse_unknown_keys(zip(("data.link", "stage1.loss", "stage2.loss", "model.activation"),
                                        ("link", "loss", "loss", "activation"), names))
                named.add(names)
        except MimError as exc:
            raise MimError(f"sweep run {run.describe()}: {exc}") from None
        run.key = run_key(run.cfg)
        if run.key in seen:
            raise MimError(f"sweep runs {seen[run.key].describe()} and {run.describe()} are the same run")
        seen[run.key] = run
        sweep.runs.append(run)
    return sweep


def load_sweep(path: str | Path, overrides=(), max_runs: int = MAX_RUNS) -> Sweep:
    """``check_sweep``, then each group of runs that differ only in ``seed`` validated by the
    training stack (component lookups and probes, solver, trainer settings), before anything is
    trained."""
    sweep = check_sweep(path, overrides, max_runs)
    from mim_lightning.training.plan import validate  # torch and Lightning: only for a file that passed the checks

    validated = set()
    for run in sweep.runs:
        group = without_seed(run.cfg)
        if group not in validated:
            try:
                validate(run.cfg)
            except MimError as exc:
                raise MimError(f"sweep run {run.describe()}: {exc}") from None
            validated.add(group)
    return sweep
