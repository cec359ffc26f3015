"""Typed configuration from YAML, with errors that name the file, the line and the key.

The model of a scenario is a tree of dataclasses (``testbed.scenario`` and the memory
manager's ``testbed.mm.config``): their fields, type hints and defaults *are* the schema.
This module walks a YAML node tree (``yaml.compose``, which keeps the line of every node)
against that tree of types and builds the instances, collecting *every* mistake instead
of stopping at the first: an unknown key (with a suggestion), a wrong type, a value out
of range, a misspelt choice.

Constraints beyond the type come from field metadata (``min``, ``max``,
``min_exclusive``) and from a dataclass's own ``validate()`` method, which raises
:class:`testbed.errors.ConfigError` whose first word may name the offending field.
A dataclass that stands for one of several kinds (a workload: writer, downloader...)
declares ``__variants__`` (kind -> dataclass) and ``__discriminator__`` ("kind").
"""

from __future__ import annotations

import dataclasses
import difflib
import types

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One mistake: where it is and what is wrong."""

    file: str
    line: int  # 1-based; 0 when the place has no line (e.g. --set)
    key: str   # dotted path, e.g. client.workloads[1].rate_mbps
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.file == f"--set {self.key}":   # the option already names the key
            return f"{where}: {self.message}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SchemaError(ConfigError):
    """One or more problems in a configuration; the message lists them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [str(p) for p in problems]
        head = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(head)


_constructor = yaml.SafeLoader("")


def scalar_value(node: yaml.Node) -> Any:
    """The Python value of a YAML scalar node (int, float, bool, str or None)."""
    return _constructor.construct_object(node, deep=True)


def where(node: yaml.Node) -> tuple[str, int]:
    mark = node.start_mark
    return (mark.name or "<string>", mark.line + 1)


class Builder:
    """Builds dataclass instances from YAML nodes, collecting problems."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, node: Optional[yaml.Node], key: str, message: str) -> None:
        file, line = where(node) if node is not None else ("<unknown>", 0)
        self.problems.append(Problem(file, line, key, message))

    # -- entry point ------------------------------------------------------------------

    def build(self, tp: Any, node: yaml.Node, key: str = "") -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            return self._union(tp, node, key)
        if origin is Literal:
            return self._literal(tp, node, key)
        if origin is list:
            return self._list(get_args(tp)[0], node, key)
        if origin is dict:
            return self._dict(get_args(tp), node, key)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, node, key)
        if tp is Any:
            return self._plain(node)
        return self._scalar(tp, node, key)

    # -- kinds of types -----------------------------------------------------------------

    def _union(self, tp: Any, node: yaml.Node, key: str) -> Any:
        args = [a for a in get_args(tp) if a is not type(None)]
        if isinstance(node, yaml.ScalarNode) and scalar_value(node) is None:
            if len(args) < len(get_args(tp)):
                return None
        if len(args) != 1:
            raise TypeError(f"schema: only Optional[X] unions are supported, not {tp}")
        return self.build(args[0], node, key)

    def _literal(self, tp: Any, node: yaml.Node, key: str) -> Any:
        choices = get_args(tp)
        value = scalar_value(node) if isinstance(node, yaml.ScalarNode) else None
        if value in choices and isinstance(value, str) == isinstance(choices[0], str):
            return value
        hint = _suggest(str(value), [str(c) for c in choices])
        self.problem(node, key, f"{value!r} is not one of {', '.join(map(str, choices))}{hint}")
        return choices[0]

    def _list(self, item: Any, node: yaml.Node, key: str) -> list:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, key, f"expected a list, got {_describe(node)}")
            return []
        return [self.build(item, n, f"{key}[{i}]") for i, n in enumerate(node.value)]

    def _dict(self, kv: tuple, node: yaml.Node, key: str) -> dict:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, key, f"expected a mapping, got {_describe(node)}")
            return {}
        out = {}
        for knode, vnode in node.value:
            k = self.build(kv[0], knode, key)
            out[k] = self.build(kv[1], vnode, f"{key}.{k}")
        return out

    def _scalar(self, tp: type, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, key, f"expected {tp.__name__}, got {_describe(node)}")
            return None
        value = scalar_value(node)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if type(value) is not tp:
            self.problem(node, key, f"expected {tp.__name__}, got {_describe(node)}")
            return None
        return value

    def _plain(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return scalar_value(node)
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(n) for n in node.value]
        return {scalar_value(k): self._plain(v) for k, v in node.value}

    def _dataclass(self, tp: type, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, key, f"expected a mapping of {tp.__name__} keys, got {_describe(node)}")
            return None
        variants = getattr(tp, "__variants__", None)
        if variants:
            tp = self._variant(tp, variants, node, key)
            if tp is None:
                return None
        hints = get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = scalar_value(knode)
            sub = f"{key}.{name}" if key else str(name)
            if name not in fields:
                hint = _suggest(str(name), list(fields))
                self.problem(knode, sub, f"unknown key{hint}")
                continue
            given[name] = (knode, vnode)
        kwargs = {}
        before = len(self.problems)
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in given:
                value = self.build(hints[name], given[name][1], sub)
                if value is not None:
                    self._check_range(f, value, given[name][1], sub)
                kwargs[name] = value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.problem(node, sub, "is required")
        if len(self.problems) > before:
            return None
        try:
            obj = tp(**{k: v for k, v in kwargs.items() if v is not None or _optional(hints[k])})
        except TypeError as exc:
            self.problem(node, key, str(exc))
            return None
        self._validate(obj, node, key)
        return obj

    def _variant(self, tp: type, variants: dict, node: yaml.MappingNode, key: str) -> Optional[type]:
        disc = getattr(tp, "__discriminator__", "kind")
        for knode, vnode in node.value:
            if scalar_value(knode) == disc:
                kind = scalar_value(vnode) if isinstance(vnode, yaml.ScalarNode) else None
                if kind in variants:
                    return variants[kind]
                hint = _suggest(str(kind), list(variants))
                self.problem(vnode, f"{key}.{disc}", f"{kind!r} is not one of {', '.join(variants)}{hint}")
                return None
        self.problem(node, f"{key}.{disc}", f"is required (one of {', '.join(variants)})")
        return None

    def _check_range(self, f: dataclasses.Field, value: Any, node: yaml.Node, key: str) -> None:
        meta = f.metadata
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        if "min" in meta and value < meta["min"]:
            self.problem(node, key, f"{value} is below the minimum {meta['min']}")
        if "min_exclusive" in meta and value <= meta["min_exclusive"]:
            self.problem(node, key, f"must be greater than {meta['min_exclusive']}, got {value}")
        if "max" in meta and value > meta["max"]:
            self.problem(node, key, f"{value} is above the maximum {meta['max']}")

    def _validate(self, obj: Any, node: yaml.MappingNode, key: str) -> None:
        """Run the object's own ``validate()`` and place its complaint on the right line.

        The convention: the message starts with a dotted path and a colon, whose first
        component is whatever the object calls itself (``client.workloads[1].rate_mbps:
        must be >= 0``); the rest of the path is looked up under ``node``.
        """
        check = getattr(obj, "validate", None)
        if not callable(check):
            return
        try:
            check()
        except ConfigError as exc:
            path, sep, message = str(exc).partition(": ")
            if not sep or " " in path:
                self.problem(node, key, str(exc))
                return
            parts = _split_path(path)[1:]
            target = _find(node, parts) or node
            self.problem(target, _join(key, parts), message)


def build(tp: type, node: yaml.Node, key: str = "") -> Any:
    """Build ``tp`` from ``node`` or raise :class:`SchemaError` listing every problem."""
    b = Builder()
    obj = b.build(tp, node, key)
    if b.problems:
        raise SchemaError(b.problems)
    return obj


def _split_path(path: str) -> list[str]:
    """``a.b[1].c`` -> ``["a", "b", "[1]", "c"]``."""
    out: list[str] = []
    for part in path.split("."):
        name, bracket, rest = part.partition("[")
        if name:
            out.append(name)
        if bracket:
            out.extend(f"[{x}" for x in rest.split("[") if x)
    return out


def _join(key: str, parts: list[str]) -> str:
    out = key
    for p in parts:
        out += p if p.startswith("[") else (f".{p}" if out else p)
    return out


def _find(node: yaml.Node, parts: list[str]) -> Optional[yaml.Node]:
    """The node at a relative path of mapping keys and [index]es, or None."""
    for p in parts:
        if p.startswith("[") and isinstance(node, yaml.SequenceNode):
            i = int(p[1:-1])
            if i >= len(node.value):
                return None
            node = node.value[i]
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if scalar_value(k) == p:
                    node = v
                    break
            else:
                return None
        else:
            return None
    return node


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = scalar_value(node)
    return "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"


__all__ = ["Builder", "Problem", "SchemaError", "build", "scalar_value", "where"]
