"""Reading config text safely: YAML files and ``--set KEY=VALUE`` overrides into a nested mapping,
with bounds on what is accepted (size, nesting, no aliases, no duplicate or merge keys, no YAML 1.1
surprises such as 1:30 read as 90) and on what is echoed back in error messages."""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from mim_lightning.errors import MimError

MAX_YAML_BYTES = 1 << 20  # a config file is at most 1 MiB
MAX_OVERRIDE_CHARS = 10_000  # a --set KEY=VALUE is at most this long
MAX_YAML_DEPTH = 20  # mappings and lists nested at most this deep
MAX_ECHO = 80  # values echoed in error messages are cut to this many characters
BOOL, INT, FLOAT = (f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float"))
OCTAL = re.compile(r"[-+]?0[0-7_]+")  # YAML 1.1 reads 010 as 8


def short(value: Any) -> str:
    """repr(value) at most ``MAX_ECHO`` characters long, in bounded work (nested containers are
    abbreviated, never expanded: an aliased YAML structure may hold 10^9 elements)."""
    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 6
    shortener.maxstring = shortener.maxother = shortener.maxlong = MAX_ECHO
    try:
        text = shortener.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails still gets a name
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."


def cut(text: str) -> str:
    """A string cut to ``MAX_ECHO`` characters."""
    text = str(text)
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader for config text: no aliases (an alias bomb expands to 10^9 nodes), at most
    ``MAX_YAML_DEPTH`` levels of nesting (deeper text would exhaust Python's recursion), no
    duplicate keys and no merge keys (YAML would silently keep one value), no base-60 (1:30 = 90)
    or leading-zero octal (010 = 8) numbers. Violations raise MimError. Only true and false are
    booleans, as in YAML 1.2: yes, no, on and off are words (``baseline.spectral: off`` is the
    word off; a boolean key refuses them)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise MimError(f"YAML alias *{cut(event.anchor)} at line {event.start_mark.line + 1}:"
                           " aliases are not supported in configs; write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise MimError(f"nested more than {MAX_YAML_DEPTH} levels deep at line {mark.line + 1};"
                               " a config nests sections one level (data: {d: 128})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        base60 = node.tag in (INT, FLOAT) and ":" in node.value
        if base60 or node.tag == INT and OCTAL.fullmatch(node.value):
            value = self.yaml_constructors[node.tag](self, node)
            kind, other = ("base-60", "quote it if it is text") if base60 else ("octal", "drop the leading zeros")
            raise MimError(f"{cut(node.value)} at line {node.start_mark.line + 1} is a YAML 1.1 {kind} number"
                           f" ({short(value)}); write {short(value)}, or {other}")
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise MimError(f"YAML merge key << at line {key_node.start_mark.line + 1}: merges are not"
                                   " supported in configs; write the keys out")
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise MimError(f"duplicate key {short(key)} at line {line} (first at line {seen[key]});"
                                   " give each key once")
                seen[key] = line
        return super().construct_mapping(node, deep)


_BoundedLoader.yaml_implicit_resolvers = {  # no YAML 1.1 booleans: true and false are added back below
    first: [(tag, regexp) for tag, regexp in resolvers if tag != BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_BoundedLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str):
    """The value of YAML text, read by ``_BoundedLoader`` (MimError for aliases, deep nesting,
    duplicate or merge keys, base-60 and octal numbers; yaml.YAMLError for malformed text)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise MimError(f"unreadable value ({cut(' '.join(str(exc).split()))})") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[str, Any]:
    """'data.d=256' -> ('data.d', 256); the value is parsed as YAML."""
    if len(text) > MAX_OVERRIDE_CHARS:
        raise MimError(f"--set {short(text)}: {len(text)} characters; an override is at most {MAX_OVERRIDE_CHARS}")
    if "=" not in text:
        raise MimError(f"--set {short(text)}: expected KEY=VALUE, e.g. --set data.d=256")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    except MimError as exc:
        raise MimError(f"--set {short(text)}: {exc}") from None
    return key.strip(), value


def _merge(node: dict, key: str, value: Any) -> None:
    """node[key] = value, except that a mapping given to a mapping merges into it, key by key."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _merge(node[key], k, v)
    else:
        node[key] = value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set tree[a][b][c] = value for key 'a.b.c', creating mappings on the way. A mapping given to a
    section merges into it (--set 'data={d: 16}' keeps earlier data.* overrides)."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MimError(f"config key {short(key)}: {short(part)} is a value, not a section")
        node = child
    _merge(node, parts[-1], value)


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file ({} for an empty file)."""
    path = Path(path)
    name = short(str(path))
    if not path.is_file():
        raise MimError(f"config file {name} does not exist")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise MimError(f"config file {name} is {size / 2**20:.1f} MiB; a config file is at most {MAX_YAML_BYTES // 2**20} MiB")
    try:
        text = path.read_bytes()[: MAX_YAML_BYTES + 1].decode("utf-8")
    except UnicodeDecodeError:
        raise MimError(f"config file {name} is not UTF-8 text") from None
    try:
        tree = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MimError(f"config file {name} is not valid YAML{where}") from None
    except MimError as exc:
        raise MimError(f"config file {name}: {exc}") from None
    if tree is None:
        raise MimError(f"config file {name} is empty; give at least one key, e.g. 'data: {{d: 128}}'")
    if not isinstance(tree, dict):
        raise MimError(f"config file {name} must hold a mapping of keys, got a {type(tree).__name__}")
    return tree
