"""Malformed scenario files for the fuzz tests and ``make fuzz``: what to generate, how to judge.

A case starts from a *valid* scenario (Hypothesis draws its values) and breaks it on
purpose, one to three times. Two kinds of breakage:

- *in the data*, at a key taken from the schema itself (the dataclass tree of
  :class:`testbed.scenario.Scenario`: every field's type, choices and declared bounds):
  a value of the wrong type, a number past a declared bound (huge or negative), a
  choice that is not one, an unknown key, deep nesting where a value belongs, a section
  that is not a mapping, a required key left out, the workloads left out, a fault of no
  known kind. Each is a mistake by the schema's own declarations, so the checker must
  report it, at that key;
- *in the text*, where the reader stops before the checker: a broken alias, a duplicate
  anchor, an alias cycle, a tag no constructor takes, a key that is a list, a key given
  twice, a document that is not a mapping, a second document, a flow left open, bytes
  that are not UTF-8 or are control characters. The error must name a line.

:func:`load_case` writes a case, loads it as ``testbed run`` would (load and validate
only) and judges the outcome: ``typed`` (a TestbedError naming the file, a line for
every problem, and every key broken in the data), ``accepted`` (no error: the checker
missed a mistake), ``misplaced`` (a typed error that does not name the place) or
``crash`` (any other exception: a traceback for the user). :func:`junk` is raw text,
bytes and random YAML trees, judged by :func:`load_junk` (``accepted`` is allowed).
"""

from __future__ import annotations

import dataclasses
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from hypothesis import strategies as st

from testbed import scenario
from testbed.errors import TestbedError
from testbed.mm.config import WORKLOAD_KINDS
from testbed.schema import SchemaError, bounds_of

# -- the schema, as a catalogue of keys -------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One scalar key of the scenario schema: its dotted path and what it accepts."""

    path: tuple[str, ...]          # ("client", "workloads", 0, "rate_mbps")
    tp: Any                        # int, float, bool, str or a tuple of choices
    optional: bool
    bounds: Any                    # testbed.schema.Bounds


def _scalar_keys(cls: type, prefix: tuple) -> list[Key]:
    hints = get_type_hints(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp, optional = args[0], len(args) < len(get_args(tp))
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(tp):
            if tp is not scenario.ChapSection:        # absent from the base scenario
                out += _scalar_keys(tp, path)
        elif get_origin(tp) is list:
            item = get_args(tp)[0]
            if f.name == "workloads":                  # the base has at least one
                out += _scalar_keys(item, path + (0,))
        elif get_origin(tp) is Literal:
            out.append(Key(path, get_args(tp), optional, bounds_of(f)))
        elif tp in (int, float, bool, str):
            out.append(Key(path, tp, optional, bounds_of(f)))
    return out


KEYS = _scalar_keys(scenario.Scenario, ())
BOUNDED = [k for k in KEYS if k.tp in (int, float) and
           (k.bounds.max is not None or k.bounds.min is not None or k.bounds.gt is not None)]
CHOICES = [k for k in KEYS if isinstance(k.tp, tuple)]
SECTIONS = [f.name for f in dataclasses.fields(scenario.Scenario)
            if dataclasses.is_dataclass(get_type_hints(scenario.Scenario)[f.name])]


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


# -- a valid scenario -------------------------------------------------------------------

def _workload() -> st.SearchStrategy:
    return st.fixed_dictionaries({
        "kind": st.sampled_from(WORKLOAD_KINDS),
        "total_mb": st.integers(1, 64),
        "rate_mbps": st.floats(0, 50, allow_nan=False),
    }, optional={"files": st.integers(1, 4), "seed": st.integers(0, 99),
                 "chunk_kb": st.sampled_from([4, 64, 256])})


def valid_scenarios() -> st.SearchStrategy:
    return st.fixed_dictionaries({
        "name": st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
        "duration_s": st.integers(1, 60),
        "deadline_s": st.just(120),
        "client": st.fixed_dictionaries({
            "memory_mb": st.integers(16, 256),
            "policy": st.sampled_from(scenario.POLICY_NAMES),
            "workloads": st.lists(_workload(), min_size=1, max_size=3),
        }),
    }, optional={"topology": st.fixed_dictionaries({"bulk_hosts": st.integers(0, 4)}),
                 "target": st.fixed_dictionaries({"lun_mb": st.integers(64, 1024)}),
                 "bulk": st.fixed_dictionaries({"mode": st.sampled_from(["tcp", "http", "udp"])})})


# -- breaking it in the data --------------------------------------------------------------

def _put(data: dict, path: tuple, value: Any) -> bool:
    """Set ``data`` at ``path`` (creating mappings on the way); False if a value on
    the way is not a mapping or list any more (an earlier break replaced it)."""
    node: Any = data
    for p in path[:-1]:
        if isinstance(p, int):
            if not isinstance(node, list) or p >= len(node):
                return False
            node = node[p]
        else:
            if not isinstance(node, dict):
                return False
            node = node.setdefault(p, {})
    if isinstance(path[-1], int):
        if not isinstance(node, list) or path[-1] >= len(node):
            return False
    elif not isinstance(node, dict):
        return False
    node[path[-1]] = value
    return True


def _wrong_value(key: Key) -> st.SearchStrategy:
    """A value whose type ``key`` never accepts (a str key takes numbers: not those)."""
    nested = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(st.just("a"), st.integers()))
    if key.tp is str or isinstance(key.tp, tuple):
        return nested
    words = st.text(min_size=1, max_size=8).filter(_reads_as_text)
    if key.tp is bool:
        return st.one_of(nested, st.integers(), words)
    if key.tp is float:
        return st.one_of(nested, words, st.booleans())
    return st.one_of(nested, words, st.booleans(), st.floats())     # int: any float is wrong


def _reads_as_text(text: str) -> bool:
    """Whether YAML reads ``text`` as a string (not a number, bool, null or a collection)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(value, str)


def _out_of_bounds(key: Key) -> st.SearchStrategy:
    b, options = key.bounds, []
    whole = key.tp is int
    if b.max is not None:
        low = int(b.max) + 1 if whole else b.max * 1.5 + 1
        options.append(st.integers(low, 10 ** 30) if whole else
                       st.floats(low, 1e300, allow_nan=False, allow_infinity=False))
    floor = b.min if b.min is not None else b.gt
    if floor is not None:
        below = floor - 1 if b.min is not None else floor
        options.append(st.integers(-10 ** 30, int(below) if whole else int(below) - 1)
                       if whole else st.floats(-1e300, below - 1e-3 if b.min is not None else below,
                                               allow_nan=False, allow_infinity=False))
    return st.one_of(options)


def _deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"x": value}
    return value


@st.composite
def data_break(draw: Any, data: dict) -> Optional[str]:
    """Break ``data`` in place once; the dotted key the checker must name (or None)."""
    what = draw(st.sampled_from(["type", "bound", "choice", "unknown", "deep", "section",
                                 "required", "workloads", "fault"]))
    if what == "type":
        key = draw(st.sampled_from(KEYS))
        ok = _put(data, key.path, draw(_wrong_value(key)))
    elif what == "bound":
        key = draw(st.sampled_from(BOUNDED))
        ok = _put(data, key.path, draw(_out_of_bounds(key)))
    elif what == "choice":
        key = draw(st.sampled_from(CHOICES))
        ok = _put(data, key.path, draw(st.text(min_size=1, max_size=12)
                                       .filter(lambda s: s not in map(str, key.tp) and _reads_as_text(s))))
    elif what == "deep":
        key = draw(st.sampled_from(KEYS))
        ok = _put(data, key.path, _deep(draw(st.integers(3, 120))))
    elif what == "unknown":
        section = draw(st.sampled_from([(), ("client",), ("client", "workloads", 0), ("topology",)]))
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=15))
        taken = {f.name for f in dataclasses.fields(_section_class(section))} | {"extends"}
        if name in taken:
            return None
        key = Key(section + (name,), int, False, None)
        ok = _put(data, key.path, draw(st.integers()))
    elif what == "section":
        key = Key((draw(st.sampled_from(SECTIONS)),), dict, False, None)
        ok = _put(data, key.path, draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=2),
                                                 st.text(min_size=1, max_size=5).filter(_reads_as_text))))
    elif what == "required":
        data.pop("name", None)
        return "name"
    elif what == "workloads":
        client = data.get("client")
        if not isinstance(client, dict):
            return None
        if draw(st.booleans()):
            client.pop("workloads", None)
        else:
            client["workloads"] = []
        return "client.workloads"
    else:
        kind = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=15)
                    .filter(lambda s: s not in scenario.Fault.__variants__))
        data["faults"] = [{"kind": kind, "at_s": 1}]
        return "faults[0].kind"
    return dotted(key.path) if ok else None


def _section_class(section: tuple) -> type:
    cls: type = scenario.Scenario
    for p in section:
        if isinstance(p, int):
            continue
        tp = get_type_hints(cls)[p]
        cls = get_args(tp)[0] if get_origin(tp) is list else tp
    return cls


# -- breaking it in the text ----------------------------------------------------------------

_INVALID_BYTES = [bytes([b]) for b in (*range(0, 9), 11, 12, *range(14, 32), 127)] + \
                 [b"\xff", b"\xfe\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]


@st.composite
def text_break(draw: Any, text: bytes) -> bytes:
    """Break the file's bytes so that the reader stops (each with a line to name)."""
    what = draw(st.sampled_from(["alias", "anchor", "cycle", "tag", "key", "twice", "list",
                                 "documents", "open", "bytes"]))
    if what == "alias":
        return text + b"broken: *" + draw(st.sampled_from([b"nowhere", b"x1", b"a"])) + b"\n"
    if what == "anchor":
        return text + b"one: &dup 1\ntwo: &dup 2\n"
    if what == "cycle":
        return text + b"loop: &me {inner: [*me]}\n"
    if what == "tag":
        tag = draw(st.sampled_from([b"!!bool maybe", b"!!int abc", b"!!float x", b"!!timestamp soon",
                                    b"!!binary ***", b"!!python/name:os.system x", b"!local thing"]))
        return text + b"tagged: " + tag + b"\n"
    if what == "key":
        return text + draw(st.sampled_from([b"? [a, b]\n: 1\n", b"? {a: 1}\n: 2\n"]))
    if what == "twice":
        return text + b"again: 1\nagain: 2\n"
    if what == "list":
        return b"- " + text.replace(b"\n", b"\n  ").rstrip() + b"\n"
    if what == "documents":
        return text + b"---\n" + text
    if what == "open":
        return text + b"unfinished: [1, 2\n"
    junk = draw(st.binary(max_size=20))
    bad = draw(st.sampled_from(_INVALID_BYTES))
    at = draw(st.integers(0, len(text)))
    return text[:at] + junk + bad + junk + text[at:]


@dataclass
class Case:
    """One generated file: its bytes, and what the checker must name."""

    data: bytes
    keys: list[str] = field(default_factory=list)   # broken in the data: must be named
    text_broken: bool = False                        # the reader must stop, at a line

    def __repr__(self) -> str:    # Hypothesis prints the failing case
        return f"Case(keys={self.keys}, text_broken={self.text_broken},\n{self.data.decode('utf-8', 'replace')})"


@st.composite
def broken_scenarios(draw: Any) -> Case:
    data = draw(valid_scenarios())
    keys = [k for k in (draw(data_break(data)) for _ in range(draw(st.integers(1, 3)))) if k]
    text = yaml.safe_dump(data, sort_keys=False).encode()
    broken = not keys or draw(st.integers(0, 2)) == 0      # a third: the reader stops first
    if broken:
        text = draw(text_break(text))
    return Case(text, keys, broken)


def junk() -> st.SearchStrategy:
    """Raw text, raw bytes, and random YAML trees (mostly unknown keys)."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
    trees = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=20)
    return st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     trees.map(lambda t: yaml.safe_dump(t).encode()))


# -- judging --------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str        # typed | accepted | misplaced | crash
    detail: str = ""


def _judge(path: Path, exc: BaseException, case: Optional[Case]) -> Outcome:
    if not isinstance(exc, TestbedError):
        return Outcome("crash", "".join(traceback.format_exception(exc)))
    if not isinstance(exc, SchemaError):
        ok = str(path) in str(exc)
        return Outcome("typed" if ok else "misplaced", f"{type(exc).__name__}: {exc}")
    text = f"{exc}"
    if any(p.file != str(path) for p in exc.problems):
        return Outcome("misplaced", f"a problem names another file: {text}")
    if any(p.line < 1 and "the file is empty" not in p.message for p in exc.problems):
        return Outcome("misplaced", f"a problem has no line: {text}")
    if case is not None and not case.text_broken:
        named = [p.key for p in exc.problems]
        for key in case.keys:
            if not any(key == n or key.startswith(n + ".") or key.startswith(n + "[") for n in named):
                return Outcome("misplaced", f"{key} broken but not named: {text}")
    return Outcome("typed", text)


def _load(path: Path, data: bytes, case: Optional[Case]) -> Outcome:
    path.write_bytes(data)
    try:
        scenario.load(path)
    except Exception as exc:   # judged: a TestbedError is the contract, anything else a crash
        return _judge(path, exc, case)
    return Outcome("accepted", data.decode("utf-8", "replace"))


def load_case(path: Path, case: Case) -> Outcome:
    """Write ``case`` to ``path``, load it, judge the outcome (see the module doc)."""
    return _load(path, case.data, case)


def load_junk(path: Path, data: bytes) -> Outcome:
    return _load(path, data, None)
