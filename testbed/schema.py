"""Typed configuration: constraints declared once, on dataclass fields; one checker.

The model of a scenario is a tree of dataclasses (``testbed.scenario``, the memory
manager's ``testbed.mm.config``, the topology's ``testbed.backends.base.ContentionParams``):
their fields, type hints and defaults *are* the schema. What a type cannot say is declared
on the field as well, in one place:

- :func:`bounded` (``min``, ``gt``, ``max``, ``multiple_of``) for numbers; ``int`` hints
  make integers; ``Literal[...]`` makes choices; ``Optional[X]`` allows null;
- ``__variants__`` (kind -> dataclass) and ``__discriminator__`` for a dataclass that
  stands for one of several kinds;
- :func:`mirror` for a field that *is* another class's field under another key (a
  scenario's ``topology.delay_ms`` is ContentionParams' ``delay``);
- :func:`alternative` for a field whose value may also be a string of another kind,
  read next to the file that gave it (``client.policy``: a built-in name or a policy
  file, :mod:`testbed.mm.policy.loader`);
- a ``rules()`` method for what spans fields, yielding ``(relative key, message)`` pairs.

One checker, :class:`Builder`, applies all of it, collecting *every* problem rather than
stopping at the first, to one of two sources: a YAML node tree (``yaml.compose`` keeps
every node's line, so problems name the file, the line and the dotted key) or plain
Python data (a mapping read from JSON, or a dataclass instance checked in place by
:func:`validate`). Problems are structured (:class:`Problem`): no layer parses another's
message text.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Literal, Optional, Protocol, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One mistake: where it is and what is wrong."""

    file: str  # "" when the data came from no file (a mapping, an object)
    line: int  # 1-based; 0 when the place has no line (e.g. --set)
    key: str   # dotted path, e.g. client.workloads[1].rate_mbps
    message: str
    # What the value must be, as a phrase ("an integer", "at least 0 and at most 64"),
    # for callers that word their own sentence (topology parameters); "" if none.
    requirement: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.file == f"--set {self.key}":   # the option already names the key
            return f"{where}: {self.message}"
        return ": ".join([part for part in (where, self.key) if part] + [self.message])


class SchemaError(ConfigError):
    """One or more problems in a configuration; the message lists them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [str(p) for p in problems]
        head = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(head)


# -- declaring constraints ------------------------------------------------------------

@dataclass(frozen=True)
class Bounds:
    """What a number must be beyond its type: ``min <= v``, ``gt < v``, ``v <= max``,
    ``v % multiple_of == 0``. The messages are the ones scenario files have always shown."""

    min: Optional[float] = None
    gt: Optional[float] = None
    max: Optional[float] = None
    multiple_of: Optional[int] = None

    def problems(self, value: Any) -> Iterator[str]:
        if not _is_number(value):
            return
        if self.min is not None and value < self.min:
            yield f"{value} is below the minimum {self.min}"
        if self.gt is not None and value <= self.gt:
            yield f"must be greater than {self.gt}, got {value}"
        if self.max is not None and value > self.max:
            yield f"{value} is above the maximum {self.max}"
        if self.multiple_of and value % self.multiple_of:
            yield f"must be a multiple of {self.multiple_of}, got {value}"

    def describe(self) -> str:
        """The whole requirement as a phrase: ``at least 0 and at most 64``."""
        parts = []
        if self.gt is not None:
            parts.append(f"greater than {self.gt:g}")
        if self.min is not None:
            parts.append(f"at least {self.min:g}")
        if self.max is not None:
            parts.append(f"at most {self.max:g}")
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        return " and ".join(parts)


_UNBOUNDED = Bounds()
_BOUNDS = "bounds"
_MIRROR = "mirror"
_ALTERNATIVE = "alternative"


@dataclass(frozen=True)
class Alternative:
    """What a field may hold besides what its type allows: a string that ``accepts``
    says is one, which ``resolve(value, file, line)`` checks (raising SchemaError) and
    turns into the field's value; ``noun`` ends the type's message ("nor ...")."""

    accepts: Any        # Callable[[str], bool]
    resolve: Any        # Callable[[str, str, int], Any]
    noun: str


def alternative(default: Any, alt: Alternative) -> Any:
    """A field whose value is of its type, or a string :class:`Alternative` accepts."""
    return dataclasses.field(default=default, metadata={_ALTERNATIVE: alt})


def bounded(default: Any = MISSING, *, default_factory: Any = MISSING,
            min: Optional[float] = None, gt: Optional[float] = None,
            max: Optional[float] = None, multiple_of: Optional[int] = None) -> Any:
    """A dataclass field whose number must lie within the given bounds."""
    bounds = Bounds(min=min, gt=gt, max=max, multiple_of=multiple_of)
    if bounds == _UNBOUNDED:
        raise TypeError("bounded(): give at least one of min, gt, max, multiple_of")
    if multiple_of is not None and (not isinstance(multiple_of, int) or multiple_of < 1):
        raise TypeError(f"bounded(): multiple_of must be a positive int, not {multiple_of!r}")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_BOUNDS: bounds})


def bounds_of(f: dataclasses.Field) -> Bounds:
    """The bounds declared on a field (none: every value of its type)."""
    if {"min", "max", "min_exclusive"} & set(f.metadata):
        # The old spelling would be ignored silently: say so instead.
        raise TypeError(f"field {f.name}: declare ranges with schema.bounded(), not metadata")
    return f.metadata.get(_BOUNDS, _UNBOUNDED)


def mirror(owner: type, name: str, default: Any = MISSING) -> Any:
    """A field that is ``owner``'s field ``name`` under another key.

    Its bounds are the owner field's (declared there only) and so is its default unless
    one is given; :func:`mirrored` maps an instance back to the owner's field names. The
    type hint must be written again on the new field (a dataclass needs it):
    :func:`check_mirrors` makes sure it is the same.
    """
    source = _init_fields(owner)[name]
    if default is MISSING:
        default = source.default
    if default is MISSING:
        raise TypeError(f"mirror({owner.__name__}, {name!r}): give a default, {name} has none")
    return dataclasses.field(default=default,
                             metadata={**source.metadata, _MIRROR: (owner, name)})


def check_mirrors(cls: type) -> type:
    """Class decorator: every :func:`mirror` field of ``cls`` has its owner field's type."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _MIRROR in f.metadata:
            owner, name = f.metadata[_MIRROR]
            if hints[f.name] != _hints(owner)[name]:
                raise TypeError(f"{cls.__name__}.{f.name} is {hints[f.name]}, but mirrors "
                                f"{owner.__name__}.{name}, which is {_hints(owner)[name]}")
    return cls


def mirrored(obj: Any) -> dict[str, Any]:
    """The values of ``obj``'s :func:`mirror` fields, by their owner's field names."""
    return {f.metadata[_MIRROR][1]: getattr(obj, f.name)
            for f in dataclasses.fields(obj) if _MIRROR in f.metadata}


# -- where the data comes from --------------------------------------------------------

MAPPING, LIST, SCALAR = "mapping", "list", "scalar"


class Source(Protocol):
    """What the Builder needs of its input; a *handle* is one place in it."""

    def shape(self, h: Any) -> str: ...
    def entries(self, h: Any) -> list[tuple[Any, Any, Any]]: ...   # (key, key handle, value handle)
    def elements(self, h: Any) -> list[Any]: ...
    def scalar(self, h: Any) -> Any: ...
    def plain(self, h: Any) -> Any: ...
    def place(self, h: Any) -> tuple[str, int]: ...                  # (file, line)
    def find(self, h: Any, parts: list[str]) -> Any: ...             # a handle below h, or None


_constructor = yaml.SafeLoader("")


def scalar_value(node: yaml.Node) -> Any:
    """The Python value of a YAML scalar node (int, float, bool, str or None).

    The constructor's caches are emptied after each call: they would keep every node
    ever read alive, and a failed call would leave the node marked as being built.
    """
    try:
        return _constructor.construct_object(node, deep=True)
    finally:
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def where(node: yaml.Node) -> tuple[str, int]:
    """(file, 1-based line) of a node; line 0 for a node made in code without a mark."""
    mark = node.start_mark
    if mark is None:
        return ("<string>", 0)
    return (mark.name or "<string>", mark.line + 1)


def compose_file(path: Union[str, "os.PathLike[str]"]) -> Optional[yaml.Node]:
    """The node tree of one YAML file (None if it holds no document), every node marked
    with the file and its line; whatever cannot be read raises :class:`SchemaError`
    naming the file and the line: a syntax error, a broken alias, several documents,
    bytes that are not UTF-8 or a control character, nesting deeper than the reader's
    stack, and what :func:`unreadable` finds. A file that cannot be opened raises
    :class:`ConfigError`."""
    name = str(path)
    try:
        with open(path, "rb") as f:     # bytes: PyYAML decodes, and names a bad byte
            node = yaml.compose(f, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        # The context says what the reader was doing ("expected a single document in
        # the stream"), the problem what it found ("but found another document").
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise SchemaError([Problem(name, line, "", f"not valid YAML: {what}")]) from None
    except yaml.reader.ReaderError as exc:
        raise SchemaError([Problem(name, _reader_line(path, exc), "",
                                   f"not valid YAML: {_first_line(exc)}")]) from None
    except RecursionError:
        raise SchemaError([Problem(name, _too_deep_line(path), "",
                                   "not valid YAML: nested too deeply")]) from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    found = unreadable(node) if node is not None else []
    if found:
        raise SchemaError(found)
    return node


def compose_mapping(path: Union[str, "os.PathLike[str]"], shape: str,
                    empty: Optional[str] = None) -> yaml.MappingNode:
    """:func:`compose_file` of a file that must hold a mapping (a scenario, a ranges or a
    series file); an empty file or anything else is a SchemaError naming the file and
    the line, with ``shape``, what such a file is, as the message (``empty``, if given,
    for an empty file)."""
    node = compose_file(path)
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value == ""):  # "" or "---"
        raise SchemaError([Problem(str(path), 0, "", f"the file is empty: {empty or shape}")])
    if not isinstance(node, yaml.MappingNode):
        raise SchemaError([Problem(str(path), node.start_mark.line + 1, "", shape)])
    return node


_READER_DEPTH = 64      # far deeper than any section of a configuration


def _reader_line(path: Any, exc: yaml.reader.ReaderError) -> int:
    """The line of a ReaderError: its position counts characters of the decoded text
    (a control character) or bytes (an undecodable byte)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return 0
    if exc.encoding == "unicode":
        return data.decode("utf-8", errors="replace")[:exc.position].count("\n") + 1
    return data[:exc.position].count(b"\n") + 1


def _too_deep_line(path: Any) -> int:
    """The line where a file's nesting first goes deeper than :data:`_READER_DEPTH`
    (the parser's events come without recursion, unlike the composer's nodes)."""
    depth = 0
    try:
        with open(path, "rb") as f:
            for event in yaml.parse(f, Loader=yaml.SafeLoader):
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > _READER_DEPTH:
                        return event.start_mark.line + 1
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
    except (yaml.YAMLError, OSError, RecursionError):
        pass
    return 0


def unreadable(root: yaml.Node) -> list[Problem]:
    """What in a composed node tree the checker cannot even read, each with its place:
    a scalar no constructor accepts (``!!bool maybe``, ``!!python/name:...``), a key that
    is a mapping or a list, a key given twice in one mapping, an alias inside the node it
    names (a cycle). The tree is walked once, without recursion, so aliases that share
    nodes cost nothing extra and no depth of nesting can exhaust the stack."""
    found: list[Problem] = []

    def problem(node: yaml.Node, key: str, message: str) -> None:
        found.append(Problem(*where(node), key, message))

    state: dict[int, bool] = {}        # id -> True while its subtree is walked, then False
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, key, leaving = stack.pop()
        if leaving:
            state[id(node)] = False
            continue
        if id(node) in state:
            if state[id(node)]:
                problem(node, key, "an alias refers to a node that contains it (a cycle)")
            continue
        state[id(node)] = True
        stack.append((node, key, True))
        if isinstance(node, yaml.ScalarNode):
            try:
                scalar_value(node)
            except Exception as exc:   # any constructor failure is the input's fault
                problem(node, key, f"cannot read the value {node.value[:40]!r} as {node.tag}: "
                                   f"{_first_line(exc)}")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{key}[{i}]", False) for i, item in reversed(list(enumerate(node.value))))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(reversed(list(_key_problems(node, key, problem))))
    return found


def _key_problems(node: yaml.MappingNode, key: str, problem: Any) -> Iterator[tuple[yaml.Node, str, bool]]:
    """Check one mapping's keys; yield its values to walk, each with its dotted key."""
    seen: dict[Any, int] = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            problem(knode, key, "a key must be a plain name, not a mapping or a list")
            continue
        try:
            name = scalar_value(knode)
            hash(name)
        except Exception as exc:
            problem(knode, key, f"cannot read the key {knode.value[:40]!r}: {_first_line(exc)}")
            continue
        sub = f"{key}.{name}" if key else str(name)
        if name in seen:
            problem(knode, sub, f"given twice (first on line {seen[name]})")
        else:
            seen[name] = where(knode)[1]
        yield (vnode, sub, False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Nodes:
    """A YAML node tree: handles are nodes, which know their file and line."""

    def shape(self, h: yaml.Node) -> str:
        if isinstance(h, yaml.MappingNode):
            return MAPPING
        return LIST if isinstance(h, yaml.SequenceNode) else SCALAR

    def entries(self, h: yaml.MappingNode) -> list[tuple[Any, Any, Any]]:
        return [(scalar_value(k), k, v) for k, v in h.value]

    def elements(self, h: yaml.SequenceNode) -> list[Any]:
        return list(h.value)

    def scalar(self, h: yaml.Node) -> Any:
        return scalar_value(h)

    def plain(self, h: yaml.Node) -> Any:
        if isinstance(h, yaml.ScalarNode):
            return scalar_value(h)
        if isinstance(h, yaml.SequenceNode):
            return [self.plain(n) for n in h.value]
        return {scalar_value(k): self.plain(v) for k, v in h.value}

    def place(self, h: yaml.Node) -> tuple[str, int]:
        return where(h)

    def find(self, h: yaml.Node, parts: list[str]) -> Optional[yaml.Node]:
        """The node at a relative path of mapping keys and [index]es, or None."""
        for p in parts:
            if p.startswith("[") and isinstance(h, yaml.SequenceNode):
                i = int(p[1:-1])
                if i >= len(h.value):
                    return None
                h = h.value[i]
            elif isinstance(h, yaml.MappingNode):
                h = next((v for k, v in h.value if scalar_value(k) == p), None)
                if h is None:
                    return None
            else:
                return None
        return h


class Values:
    """Plain Python data: mappings, lists, scalars, and dataclass instances (seen as the
    mapping of their fields). Handles are the values themselves; nothing has a line."""

    def shape(self, h: Any) -> str:
        if isinstance(h, Mapping) or _is_instance(h):
            return MAPPING
        return LIST if isinstance(h, (list, tuple)) else SCALAR

    def entries(self, h: Any) -> list[tuple[Any, Any, Any]]:
        if isinstance(h, Mapping):
            return [(k, k, v) for k, v in h.items()]
        return [(name, name, getattr(h, name)) for name in _init_fields(type(h))]

    def elements(self, h: Any) -> list[Any]:
        return list(h)

    def scalar(self, h: Any) -> Any:
        return h

    def plain(self, h: Any) -> Any:
        return h

    def place(self, h: Any) -> tuple[str, int]:
        return ("", 0)

    def find(self, h: Any, parts: list[str]) -> Any:
        return h          # no line to point at: the key says it all


# -- the checker ----------------------------------------------------------------------

class Unknown(Exception):
    """Raised when a cross-field rule reads a field whose value is :data:`INVALID`."""


class _Invalid:
    """The value of a field that is already reported as wrong, while the rules run.

    Reading it in any way (an attribute, a comparison, arithmetic, truth, length)
    raises :class:`Unknown`, which ends that object's rules quietly: a rule must not
    report a second, misleading problem from a value that is not there.
    """

    __slots__ = ()

    def _unknown(self, *args: Any) -> Any:
        raise Unknown()

    __getattr__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _unknown
    __bool__ = __len__ = __iter__ = __contains__ = __getitem__ = __hash__ = _unknown
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _unknown
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _unknown
    __neg__ = __abs__ = __int__ = __float__ = __index__ = _unknown

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = _Invalid()


class Builder:
    """Builds dataclasses from a source, or checks instances in place; collects problems.

    ``in_place``: the data is objects already (``Values`` only), so a dataclass-typed
    place must hold an instance, which is checked and kept, not rebuilt from a mapping.
    """

    def __init__(self, source: Optional[Source] = None, in_place: bool = False) -> None:
        self.src: Source = source if source is not None else Nodes()
        self.in_place = in_place
        self.problems: list[Problem] = []

    def problem(self, h: Any, key: str, message: str, requirement: str = "") -> None:
        file, line = self.src.place(h)
        self.problems.append(Problem(file, line, key, message, requirement))

    # -- entry point ------------------------------------------------------------------

    def build(self, tp: Any, h: Any, key: str = "") -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            return self._union(tp, h, key)
        if origin is Literal:
            return self._literal(tp, h, key)
        if origin is list:
            return self._list(get_args(tp)[0], h, key)
        if origin is dict:
            return self._dict(get_args(tp), h, key)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, h, key)
        if tp is Any:
            return self.src.plain(h)
        return self._scalar(tp, h, key)

    # -- kinds of types -----------------------------------------------------------------

    def _union(self, tp: Any, h: Any, key: str) -> Any:
        args = [a for a in get_args(tp) if a is not type(None)]
        if self.src.shape(h) == SCALAR and self.src.scalar(h) is None:
            if len(args) < len(get_args(tp)):
                return None
        if len(args) != 1:
            raise TypeError(f"schema: only Optional[X] unions are supported, not {tp}")
        return self.build(args[0], h, key)

    def _literal(self, tp: Any, h: Any, key: str, nor: str = "") -> Any:
        choices = get_args(tp)
        value = self.src.scalar(h) if self.src.shape(h) == SCALAR else None
        if value in choices and isinstance(value, str) == isinstance(choices[0], str):
            return value
        hint = _suggest(str(value), [str(c) for c in choices])
        listed = ", ".join(map(str, choices)) + (f", nor {nor}" if nor else "")
        self.problem(h, key, f"{value!r} is not one of {listed}{hint}", f"one of {listed}")
        return choices[0]

    def _list(self, item: Any, h: Any, key: str) -> list:
        if self.src.shape(h) != LIST:
            self.problem(h, key, f"expected a list, got {self._describe(h)}", "a list")
            return []
        out = []
        for i, e in enumerate(self.src.elements(h)):
            before = len(self.problems)
            value = self.build(item, e, f"{key}[{i}]")
            out.append(INVALID if value is None and len(self.problems) > before else value)
        return out

    def _dict(self, kv: tuple, h: Any, key: str) -> dict:
        if self.src.shape(h) != MAPPING:
            self.problem(h, key, f"expected a mapping, got {self._describe(h)}", "a mapping")
            return {}
        out = {}
        for _, kh, vh in self.src.entries(h):
            k = self.build(kv[0], kh, key)
            out[k] = self.build(kv[1], vh, f"{key}.{k}")
        return out

    def _scalar(self, tp: type, h: Any, key: str) -> Any:
        if self.src.shape(h) != SCALAR:
            self._wrong_type(tp, h, key)
            return None
        value = self.src.scalar(h)
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if type(value) is not tp:
            self._wrong_type(tp, h, key)
            return None
        if tp is float and not math.isfinite(value):
            self.problem(h, key, f"must be a finite number, got {value!r}", _NOUNS[float])
            return None
        return value

    def _wrong_type(self, tp: type, h: Any, key: str) -> None:
        self.problem(h, key, f"expected {tp.__name__}, got {self._describe(h)}",
                     _NOUNS.get(tp, tp.__name__))

    def _dataclass(self, tp: type, h: Any, key: str) -> Any:
        if self.src.shape(h) != MAPPING:
            self.problem(h, key, f"expected a mapping of {tp.__name__} keys, got {self._describe(h)}")
            return None
        variants = getattr(tp, "__variants__", None)
        if variants:
            tp = self._variant(tp, variants, h, key)
            if tp is None:
                return None
        if (self.in_place or _is_instance(h)) and not isinstance(h, tp):
            self.problem(h, key, f"expected {tp.__name__}, got {type(h).__name__}")
            return None
        hints, fields = _hints(tp), _init_fields(tp)
        given: dict[str, Any] = {}
        for name, kh, vh in self.src.entries(h):
            sub = f"{key}.{name}" if key else str(name)
            if name not in fields:
                self.problem(kh, sub, f"unknown key{_suggest(str(name), list(fields))}")
                continue
            given[name] = vh
        kwargs = {}
        start = len(self.problems)
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in given:
                before = len(self.problems)
                value = self._field(f, hints[name], given[name], sub)
                if len(self.problems) > before and not _is_partial(value):
                    value = INVALID     # a rule that reads it is skipped, not misled
                kwargs[name] = value
            elif f.default is MISSING and f.default_factory is MISSING:
                self.problem(h, sub, "is required")
                kwargs[name] = INVALID
        if isinstance(h, tp):
            if len(self.problems) > start:
                return None     # an instance's bad values are real: its rules could trip
            obj = h             # an instance is checked in place, not copied
        else:
            try:
                obj = tp(**{k: v for k, v in kwargs.items() if v is not None or _optional(hints[k])})
            except (TypeError, ConfigError, Unknown) as exc:
                if len(self.problems) == start:
                    self.problem(h, key, str(exc))
                return None
        # The rules run even when a field is wrong, so that every mistake of a file is
        # reported at once; a rule stops where it reads a field that is INVALID.
        self._rules(obj, h, key)
        return obj

    def _field(self, f: dataclasses.Field, tp: Any, h: Any, key: str) -> Any:
        alt: Optional[Alternative] = f.metadata.get(_ALTERNATIVE)
        if alt is not None:
            value = self.src.scalar(h) if self.src.shape(h) == SCALAR else None
            if isinstance(value, str) and alt.accepts(value):
                return self._alternative(alt, value, h, key)
            if get_origin(tp) is Literal:
                return self._literal(tp, h, key, alt.noun)
        value = self.build(tp, h, key)
        if value is not None:
            bounds = bounds_of(f)
            for message in bounds.problems(value):
                self.problem(h, key, message, bounds.describe())
        return value

    def _alternative(self, alt: Alternative, value: str, h: Any, key: str) -> Any:
        """The alternative's value, or its problems under ``key`` (each keeps its place:
        a policy file's line, say)."""
        file, line = self.src.place(h)
        try:
            return alt.resolve(value, file, line)
        except SchemaError as exc:
            self.problems.extend(dataclasses.replace(p, key=p.key or key) for p in exc.problems)
            return None

    def _variant(self, tp: type, variants: dict, h: Any, key: str) -> Optional[type]:
        disc = getattr(tp, "__discriminator__", "kind")
        for name, _, vh in self.src.entries(h):
            if name == disc:
                kind = self.src.scalar(vh) if self.src.shape(vh) == SCALAR else None
                if kind in variants:
                    return variants[kind]
                hint = _suggest(str(kind), list(variants))
                self.problem(vh, f"{key}.{disc}", f"{kind!r} is not one of {', '.join(variants)}{hint}")
                return None
        self.problem(h, f"{key}.{disc}", f"is required (one of {', '.join(variants)})")
        return None

    def _rules(self, obj: Any, h: Any, key: str) -> None:
        """The object's cross-field rules; each names its key relative to the object."""
        rules = getattr(obj, "rules", None)
        if not callable(rules):
            return
        try:
            for rel, message in rules():
                parts = _split_path(rel)
                self.problem(self._nearest(h, parts), _join(key, parts), message)
        except Unknown:
            pass        # the rule read a field already reported as wrong

    def _nearest(self, h: Any, parts: list[str]) -> Any:
        """The handle of a relative key, or of its nearest ancestor that is there and in
        the same file (a rule may name a key the file left out: its section's line is
        the place, unless that section came from elsewhere, e.g. a --set)."""
        found = self.src.find(h, parts)
        if found is not None:
            return found
        for n in range(len(parts) - 1, 0, -1):
            found = self.src.find(h, parts[:n])
            if found is not None and self.src.place(found)[0] == self.src.place(h)[0]:
                return found
        return h

    def _describe(self, h: Any) -> str:
        shape = self.src.shape(h)
        if shape != SCALAR:
            return f"a {shape}"
        value = self.src.scalar(h)
        return "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"


def build(tp: Any, data: Any, key: str = "") -> Any:
    """Build ``tp`` from a YAML node tree or from plain data (a mapping, e.g. from JSON);
    raise :class:`SchemaError` listing every problem."""
    b = Builder(Nodes() if isinstance(data, yaml.Node) else Values())
    obj = b.build(tp, data, key)
    if b.problems:
        raise SchemaError(b.problems)
    return obj


def problems(obj: Any, key: str = "") -> list[Problem]:
    """Every problem of a dataclass instance (types, bounds, choices, nested instances,
    rules), each under ``key``."""
    b = Builder(Values(), in_place=True)
    b.build(type(obj), obj, key)
    return b.problems


def validate(obj: Any, key: str = "") -> None:
    """Raise :class:`SchemaError` listing every problem of a dataclass instance."""
    found = problems(obj, key)
    if found:
        raise SchemaError(found)


# -- helpers --------------------------------------------------------------------------

_NOUNS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    return get_type_hints(tp)


@functools.cache
def _init_fields(tp: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(tp) if f.init}


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_partial(value: Any) -> bool:
    """A built section or list that holds wrong parts: its right parts stay readable."""
    return _is_instance(value) or isinstance(value, (list, dict))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split_path(path: str) -> list[str]:
    """``a.b[1].c`` -> ``["a", "b", "[1]", "c"]``."""
    out: list[str] = []
    for part in path.split(".") if path else []:
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


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


__all__ = ["Alternative", "alternative", "Bounds", "Builder", "Nodes", "Problem", "SchemaError", "Source", "Values",
           "bounded", "bounds_of", "build", "check_mirrors", "mirror", "mirrored",
           "compose_file", "problems", "scalar_value", "unreadable", "validate", "where"]
