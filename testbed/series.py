"""Series files: one knob that moves several scenario keys together (``sweep --series``).

A sweep's ``--param`` varies one key at a time. Some questions need several keys to move
as one: "the same load on a bigger machine" scales the memory, the link and the loads
together, or the contention of the small machine is not the contention of the big one.
A series file says which keys move and the value of each at every point, as a table::

    keys: [client.memory_mb, topology.client_bw_mbit, client.workloads[1:].rcvbuf_kb]
    points:
      - [32, 20, 2048]
      - [64, 40, 4096]

The first key is the knob: it names each point (``client.memory_mb=64``), it is the
point's parameter in ``runs.json`` and the x axis of the sweep's plots. The other keys
are set with it. Every value is written out, so what a point runs is read in the file,
not computed by a rule hidden in code. Keys are the stress ranges' keys (``a.b``,
``a[0].b``, ``a[1:].b``, ``a[*].b``: a slice sets each element; :mod:`testbed.stress.ranges`
resolves them, the one reader of such keys).

Checking is the one checker's (:mod:`testbed.schema`), twice, and every problem names the
series file, its line and the key: the file's own shape (:class:`SeriesFile`: a row per
point, as long as ``keys``, knob values distinct), then each point against the scenario:
each key must lead to a value of it, and the scenario with the point's values must pass
the scenario schema (``client.memory_mb: 2`` is refused with the scenario's own message,
at the cell's line). Nothing starts before every point of every combination is built.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from . import schema
from .scenario import Scenario
from .schema import Problem, SchemaError
from .stress import ranges as keys_mod


@dataclass
class SeriesFile:
    """A series file as written: the keys that move together, and one row per point."""

    keys: list[str]
    points: list[list[Any]]
    description: str = ""

    def rules(self) -> Iterator[tuple[str, str]]:
        if not self.keys:
            yield ("keys", "give at least one key (the first is the knob)")
        elif len(set(self.keys)) < len(self.keys):
            twice = sorted({k for k in self.keys if self.keys.count(k) > 1})
            yield ("keys", f"a key is given twice: {', '.join(twice)}")
        if not self.points:
            yield ("points", "give at least one point")
        for i, row in enumerate(self.points):
            if len(row) != len(self.keys):
                yield (f"points[{i}]", f"has {len(row)} values for {len(self.keys)} keys")
            elif any(isinstance(v, (list, dict)) for v in row):
                yield (f"points[{i}]", "each value is a number, a string or true/false")
        knobs = [row[0] for row in self.points if row]
        if len(set(map(str, knobs))) < len(knobs):
            yield ("points", f"the knob ({self.keys[0] if self.keys else '?'}) takes a value "
                             f"twice: each point needs its own")


@dataclass(frozen=True)
class Point:
    """One point of a series: the knob's value, and every key's value as a load."""

    knob: str
    value: Any
    load: keys_mod.Load
    line: int                   # the row's line in the series file
    cell_lines: tuple[int, ...]  # each value's line (a row may span lines)

    @property
    def label(self) -> str:
        return f"{self.knob}={self.value}"


@dataclass(frozen=True)
class Series:
    """A checked series file: its points in the file's order."""

    path: Path
    knob: str
    points: tuple[Point, ...]
    keys_line: int = 0          # where ``keys:`` is written
    description: str = ""


def read(path: Path) -> Series:
    """Read and check a series file's own shape (SchemaError names file, line, key)."""
    path = Path(path)
    node = schema.compose_mapping(path, "a series file is a mapping with keys: [KEY, ...] "
                                        "and points: [[V, ...], ...]")
    spec: SeriesFile = schema.build(SeriesFile, node)
    points = []
    for i, row in enumerate(spec.points):
        cells = tuple(_line(node, ["points", f"[{i}]", f"[{j}]"]) for j in range(len(row)))
        points.append(Point(spec.keys[0], row[0], dict(zip(spec.keys, row)),
                            _line(node, ["points", f"[{i}]"]), cells))
    return Series(path, spec.keys[0], tuple(points), _line(node, ["keys"]), spec.description)


def _line(node: yaml.Node, parts: list[str]) -> int:
    found = schema.Nodes().find(node, parts)
    return schema.where(found)[1] if found is not None else 0


def scenarios(series: Series, base: Scenario) -> list[tuple[Point, Scenario]]:
    """Each point applied to ``base``, through the scenario checker; every problem of
    every point at once, each at the series file's line of its key or cell."""
    data = base.to_dict()
    problems: list[Problem] = []
    out = []
    for i, point in enumerate(series.points):
        try:
            out.append((point, keys_mod.build(data, point.load)))
        except keys_mod.KeyProblem as exc:
            problems.append(Problem(str(series.path), series.keys_line, "keys",
                                    f"{exc} (scenario {base.name})"))
            break       # a key that leads nowhere does so at every point
        except SchemaError as exc:
            problems += [_at_cell(series, i, point, p) for p in exc.problems]
    if problems:
        raise SchemaError(list(dict.fromkeys(problems)))
    return out


def _at_cell(series: Series, i: int, point: Point, p: Problem) -> Problem:
    """A scenario problem of point ``i`` placed in the series file: at the cell of the
    key it is about (``client.workloads[2].rcvbuf_kb`` falls under ``client.workloads
    [1:].rcvbuf_kb``), else at the row (a rule that spans keys, say)."""
    keys = list(point.load)
    j = _column(keys, p.key)
    if j is None:
        about = f"{p.key}: " if p.key else ""
        return Problem(str(series.path), point.line, f"points[{i}]",
                       f"{point.label}: {about}{p.message}")
    cell = f"{keys[j]}={point.load[keys[j]]!r}"
    return Problem(str(series.path), point.cell_lines[j], f"points[{i}][{j}]",
                   f"{cell if j == 0 else point.label + ': ' + cell}: {p.message}")


_SLICE = re.compile(r"\\\[(?:\\\*|\d*:\d*)\\\]")


def _column(keys: list[str], problem_key: str) -> Optional[int]:
    """The series key a scenario key falls under (a slice matches each index), or None."""
    for j, k in enumerate(keys):
        pattern = _SLICE.sub(r"\\[\\d+\\]", re.escape(k))
        if re.fullmatch(pattern, problem_key):
            return j
    return None
