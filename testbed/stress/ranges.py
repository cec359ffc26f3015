"""The stress search's ranges: which scenario keys it varies, and over what.

A ranges file is YAML, one entry per scenario key (the dotted keys of ``--set``, plus
list elements)::

    ranges:
      client.memory_mb: {min: 16, max: 64}              # integers: both bounds are ints
      topology.delay_ms: {min: 0, max: 20, step: 0.5}   # numbers on a grid
      bulk.mode: {choices: [tcp, http, udp]}
      client.workloads[0].kind: {choices: [writer, mmap_writer]}
      client.workloads[1:].rcvbuf_kb: {min: 0, max: 4096, step: 64}   # every downloader

``[i]`` is one element of a list, ``[i:j]`` a slice of them and ``[*]`` all: a slice
sets the same value on each. Whether a bound is an integer or a number is what the
file says (``16`` or ``16.0``); whether that fits the key is the scenario's business.

Checking is done twice, by the one checker (:mod:`testbed.schema`) both times, and
every problem names the ranges file, its line and the key:

1. the file's own shape (:class:`RangesFile`, :class:`Range`): types, a range is
   either ``min``/``max`` or ``choices``, ``min <= max``;
2. against the scenario: each key must exist in it, and the scenario built with each
   bound (and each choice) must pass the scenario schema, so a range can never ask for a
   value no scenario file could hold (``client.memory_mb: {min: 2}`` is refused with the
   scenario's own message, ``2 is below the minimum 4``).

A sampled combination can still break a rule that spans keys (``min_free_kbytes`` and
``memory_mb``); the campaign builds each load through the same checker and counts one
that fails as invalid, without running it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import schema
from ..errors import ConfigError
from ..scenario import SCENARIO_DIR, Scenario
from ..schema import Problem, SchemaError

DEFAULT_RANGES = SCENARIO_DIR / "stress" / "ranges.yaml"

# Keys a search must not vary: what the scenario is and expects, and the policy, which
# is the campaign's --policy.
FIXED_KEYS = ("name", "description", "expect", "expect_by_policy", "client.policy",
              "backend", "storage", "faults")

Load = dict[str, Any]       # scenario key (as in the ranges file) -> value


@dataclass
class Range:
    """The values one key may take: ``min``..``max`` (on a ``step`` grid if given),
    or one of ``choices``."""

    min: Any = None
    max: Any = None
    step: Any = None            # Any, not float: an integer step keeps an integer range
    choices: Optional[list[Any]] = None

    @property
    def numeric(self) -> bool:
        return self.choices is None

    @property
    def integer(self) -> bool:
        """Both bounds are integers (and the step too, if any): sample integers."""
        given = [self.min, self.max] + ([self.step] if self.step is not None else [])
        return all(isinstance(v, int) and not isinstance(v, bool) for v in given)

    def bounds(self) -> list[tuple[str, Any]]:
        """The values that must each be valid in the scenario, with their sub-key."""
        if self.choices is not None:
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        return [("min", self.min), ("max", self.max)]

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.choices is not None:
            if self.min is not None or self.max is not None or self.step is not None:
                yield ("choices", "give either choices or min/max (and step), not both")
            elif not self.choices:
                yield ("choices", "give at least one choice")
            return
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is None:
                yield (name, "is required (or give choices instead)")
            elif not _is_number(value):
                yield (name, f"expected a number, got {type(value).__name__} {value!r}")
        if self.step is not None and not (_is_number(self.step) and self.step > 0):
            yield ("step", f"must be a number greater than 0, got {self.step!r}")
        if _is_number(self.min) and _is_number(self.max) and self.min > self.max:
            yield ("max", f"{self.max} is below min ({self.min})")


@dataclass
class RangesFile:
    """A ranges file: what it is for, and the ranges by scenario key."""

    ranges: dict[str, Range]
    description: str = ""

    def rules(self) -> Iterator[tuple[str, str]]:
        if not self.ranges:
            yield ("ranges", "give at least one key to vary")


@dataclass(frozen=True)
class Ranges:
    """Checked ranges, in the file's order, with where they came from."""

    path: Path
    items: tuple[tuple[str, Range], ...]

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.items]

    def __getitem__(self, key: str) -> Range:
        return dict(self.items)[key]


# -- keys into a scenario's plain data ---------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_INDEX = r"\[(?:\*|\d*:\d*|\d+)\]"
_KEY = re.compile(rf"{_NAME}(?:\.{_NAME}|{_INDEX})*")
_TOKEN = re.compile(rf"{_NAME}|{_INDEX}")


class KeyProblem(ConfigError):
    """A ranges key that does not lead to a value of the scenario."""


def _tokens(key: str) -> list[str]:
    """``client.workloads[1:].rcvbuf_kb`` -> ``["client", "workloads", "[1:]", "rcvbuf_kb"]``."""
    if not _KEY.fullmatch(key):
        raise KeyProblem("cannot read this key (write a.b, a[0].b, a[1:].b or a[*].b)")
    return _TOKEN.findall(key)


def _children(place: Any, token: str, done: str) -> list[Any]:
    """What one token leads to from one place; KeyProblem if it leads nowhere."""
    if not token.startswith("["):
        if not isinstance(place, dict) or token not in place:
            raise KeyProblem(f"{done + '.' if done else ''}{token}: no such key in the scenario")
        return [place[token]]
    if not isinstance(place, list):
        raise KeyProblem(f"{done} is not a list")
    inner = token[1:-1]
    if inner == "*":
        got = list(place)
    elif ":" in inner:
        a, _, b = inner.partition(":")
        got = place[slice(int(a) if a else None, int(b) if b else None)]
    else:
        got = [place[int(inner)]] if int(inner) < len(place) else []
    if not got:
        raise KeyProblem(f"{done}{token}: the scenario's list has {len(place)} element(s)")
    return got


def _owners(data: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], str]:
    """The mappings that hold ``key``'s last part, and that part."""
    tokens = _tokens(key)
    if tokens[-1].startswith("["):
        raise KeyProblem("a key ends with a name, not a list index")
    places: list[Any] = [data]
    done = ""
    for token in tokens[:-1]:
        places = [c for p in places for c in _children(p, token, done)]
        done += token if token.startswith("[") or not done else f".{token}"
    for p in places:
        _children(p, tokens[-1], done)      # raises if the last name is not there
    return places, tokens[-1]


def get_value(data: dict[str, Any], key: str) -> Any:
    """The value at ``key`` in a scenario's plain data (a slice: its first element's)."""
    owners, last = _owners(data, key)
    return owners[0][last]


def set_values(data: dict[str, Any], load: Load) -> dict[str, Any]:
    """A deep copy of ``data`` with each key of ``load`` set (KeyProblem if one is not there)."""
    out = copy.deepcopy(data)
    for key, value in load.items():
        owners, last = _owners(out, key)
        for o in owners:
            o[last] = value
    return out


def build(base: dict[str, Any], load: Load) -> Scenario:
    """The scenario ``base`` (plain data) with ``load`` set, through the scenario checker
    (SchemaError lists every problem)."""
    return schema.build(Scenario, set_values(base, load))


def defaults(base: dict[str, Any], keys: list[str]) -> Load:
    """The scenario's own values of ``keys``: where shrinking goes."""
    return {k: get_value(base, k) for k in keys}


# -- loading ------------------------------------------------------------------------------

def load(path: Path, base: Scenario) -> Ranges:
    """Read and check a ranges file against the scenario ``base``; SchemaError names the
    file, line and key of every problem."""
    path = Path(path)
    node = schema.compose_mapping(path, "a ranges file is a mapping with ranges: "
                                        "{KEY: {min: .., max: ..} or {choices: [..]}}")
    checker = schema.Builder(schema.Nodes())
    spec: Optional[RangesFile] = checker.build(RangesFile, node)
    problems = list(checker.problems)
    # Every mistake at once: the ranges the first check passed are checked against the
    # scenario even when others were not (those are already reported).
    wrong = {p.key for p in problems}
    ranges_node = schema.Nodes().find(node, ["ranges"])
    for key, rng in (spec.ranges.items() if spec is not None else []):
        if isinstance(rng, Range) and not any(w == f"ranges.{key}" or
                                              w.startswith(f"ranges.{key}.") for w in wrong):
            problems += _against(base, key, rng, path, ranges_node)
    if problems or spec is None:
        raise SchemaError(problems)
    return Ranges(path, tuple(spec.ranges.items()))


def _against(base: Scenario, key: str, rng: Range, path: Path,
             ranges_node: yaml.Node) -> list[Problem]:
    """The problems of one range in the scenario ``base``, each at its line."""
    entry = schema.Nodes().find(ranges_node, [key])
    line = schema.where(entry)[1] if entry is not None else 0

    def at(sub: str) -> int:
        found = schema.Nodes().find(entry, schema._split_path(sub)) if entry is not None else None
        return schema.where(found)[1] if found is not None else line

    where = f"ranges.{key}"
    if key in FIXED_KEYS or any(key.startswith(f"{k}.") or key.startswith(f"{k}[")
                                for k in FIXED_KEYS):
        return [Problem(str(path), line, where, "a stress search does not vary this key "
                        "(the policy is --policy; the others say what the scenario is)")]
    data = base.to_dict()
    try:
        _owners(data, key)
    except KeyProblem as exc:
        return [Problem(str(path), line, where, f"{exc} (scenario {base.name})")]
    out = []
    for sub, value in rng.bounds():
        try:
            build(data, {key: value})
        except SchemaError as exc:
            out += [Problem(str(path), at(sub), f"{where}.{sub}",
                            ": ".join([repr(value)] + ([p.key] if p.key else []) + [p.message]))
                    for p in exc.problems]
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
