"""The one reader of run, compare and sweep folders.

A run folder's ``summary.json`` (and its metric streams) and a batch folder's
``runs.json`` are read here, and only here, into typed values: :class:`RunOutcome` is one
run (verdict, time to the outcome, drops, its label and parameters), :class:`Batch` is a
compare or sweep folder (its title and the runs ``runs.json`` lists, with the parameters
stored there, never parsed back from labels). Each rule, such as "the time of a run is
the lockup's, or the end of writeback", is written once here; the report, the plots, the
CLI and the graders' readers call it. Runs group by policy or by grid point
(:func:`verdict_counts`), which is how repeated runs are counted. The comparison table is
data (:class:`Table`, plain strings); ``report/html.py`` and the CLI each render it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, TypeVar

from .errors import ConfigError

SUMMARY = "summary.json"     # a run folder's outcome (written by report.summary.summarize)
INDEX = "runs.json"          # a compare/sweep folder's list of runs

Params = dict[str, str]     # a sweep point: scenario key -> value as given on the command line
K = TypeVar("K", bound=Hashable)


# -- the files ------------------------------------------------------------------------------

def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON file's object, or None when it is missing, unreadable or not an object
    (every JSON file of a run or batch folder holds one object)."""
    try:
        got = json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of an NDJSON file; a torn last line (a killed writer) is skipped."""
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
    except FileNotFoundError:
        return


def until_end(samples: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The samples up to the outcome (later ones show the client shutting down)."""
    end = summary.get("end_t")
    return samples if end is None else [s for s in samples if s.get("t", 0) <= end]


# -- one run --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOutcome:
    """One run folder's outcome, from its ``summary.json``.

    ``label`` and ``params`` are the batch's names for the run (``runs.json``); a run
    read on its own is labelled with its scenario's name and has no parameters.
    """

    path: Path
    summary: dict[str, Any]
    label: str
    params: Params = field(default_factory=dict)

    @property
    def scenario(self) -> str:
        return str(self.summary.get("scenario"))

    @property
    def verdict(self) -> Optional[str]:
        """``completed``, ``lockup``, ``degraded``, or None (interrupted or failed)."""
        return self.summary.get("verdict")

    @property
    def expected(self) -> Optional[str]:
        return self.summary.get("expected")

    @property
    def policy(self) -> str:
        return str(self.summary.get("policy"))

    @property
    def finished(self) -> bool:
        """Did the run reach a verdict (not interrupted, no client error)?"""
        return self.summary.get("status") == "finished" and self.verdict is not None

    @property
    def lockup_t(self) -> Optional[float]:
        """When the client's lockup detector fired, if it did."""
        lk = self.summary.get("lockup")
        return float(lk["t"]) if lk else None

    @property
    def time_s(self) -> Optional[float]:
        """Seconds to the outcome: the lockup for a run that locked up, otherwise the
        client's clock when writeback ended; None when the run recorded neither."""
        if self.verdict == "lockup" and self.lockup_t is not None:
            return self.lockup_t
        return float(self.summary.get("writeback", {}).get("time_s") or 0.0) or None

    @property
    def written_back_bytes(self) -> int:
        return int(self.summary.get("writeback", {}).get("bytes") or 0)

    def drops(self, cls: str, reason: Optional[str] = None) -> int:
        """Received frames dropped of class ``memalloc`` (storage) or ``other``, in all or
        for one reason (``PFMemallocDrop``, ...)."""
        return int(self.summary.get("drops", {}).get(cls, {}).get(reason or "total", 0))

    @property
    def mismatches(self) -> int:
        """Pages whose read-back did not match what the target acknowledged."""
        return int(self.summary.get("integrity", {}).get("mismatches", 0))

    def samples(self, until_outcome: bool = True) -> list[dict[str, Any]]:
        """The client's metric samples (``client.ndjson``), by default up to the outcome."""
        got = list(read_ndjson(self.path / "client.ndjson"))
        return until_end(got, self.summary) if until_outcome else got

    def hosts(self) -> dict[str, str]:
        """Node name -> address (``hosts.json``)."""
        return read_json(self.path / "hosts.json") or {}


def read_run(path: Path, label: Optional[str] = None,
             params: Optional[Params] = None) -> Optional[RunOutcome]:
    """The run folder at ``path``, or None when it has no readable summary.json."""
    summary = read_json(Path(path) / SUMMARY)
    if summary is None:
        return None
    return RunOutcome(Path(path), summary, label or str(summary.get("scenario")),
                      dict(params or {}))


def open_run(path: Path) -> RunOutcome:
    """:func:`read_run` for the CLI: a folder that is not a run is a ConfigError."""
    run = read_run(path)
    if run is None:
        raise ConfigError(f"{path}: no {SUMMARY}: not a run folder (or the run never started)")
    return run


# -- compare and sweep folders ----------------------------------------------------------------

@dataclass(frozen=True)
class BatchEntry:
    """One run as ``runs.json`` lists it: label, folder (inside the batch), parameters."""

    label: str
    dir: str
    params: Params = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "dir": self.dir, "params": self.params}

    @classmethod
    def from_json(cls, r: Any) -> Optional["BatchEntry"]:
        if not isinstance(r, dict) or not isinstance(r.get("dir"), str):
            return None
        params = r.get("params") or {}
        if not isinstance(params, dict):
            return None
        return cls(str(r.get("label", r["dir"])), r["dir"],
                   {str(k): str(v) for k, v in params.items()})


@dataclass(frozen=True)
class Batch:
    """A ``testbed compare`` or ``testbed sweep`` folder."""

    path: Path
    title: str
    entries: tuple[BatchEntry, ...]

    def run_path(self, entry: BatchEntry) -> Path:
        return self.path / entry.dir

    def runs(self) -> list[RunOutcome]:
        """The listed runs that have an outcome, in the order of runs.json (a run that
        never started, or is still running, has no summary.json and is left out)."""
        got = (read_run(self.run_path(e), e.label, e.params) for e in self.entries)
        return [r for r in got if r is not None]

    @property
    def param_keys(self) -> list[str]:
        """The swept keys in the order they were given; empty for a compare folder."""
        return list(dict.fromkeys(k for e in self.entries for k in e.params))

    @property
    def is_sweep(self) -> bool:
        return bool(self.param_keys)


def read_batch(path: Path) -> Optional[Batch]:
    """The batch folder at ``path``, or None when its runs.json is missing or malformed."""
    index = read_json(Path(path) / INDEX)
    if index is None or not isinstance(index.get("runs"), list):
        return None
    entries = [BatchEntry.from_json(r) for r in index["runs"]]
    if any(e is None for e in entries):
        return None
    return Batch(Path(path), str(index.get("title", Path(path).name)),
                 tuple(e for e in entries if e is not None))


def open_batch(path: Path) -> Batch:
    """:func:`read_batch` for the CLI: a folder that is not a batch is a ConfigError."""
    batch = read_batch(path)
    if batch is None:
        raise ConfigError(f"{path}: no readable {INDEX}: not a compare or sweep folder "
                          f"(or the command did not finish its first run)")
    return batch


def is_batch(path: Path) -> bool:
    """Does ``path`` claim to be a compare or sweep folder (it has a runs.json)?"""
    return (Path(path) / INDEX).exists()


def write_index(path: Path, title: str, entries: Sequence[BatchEntry]) -> None:
    """Write ``runs.json``: rewritten after each run, so an interrupted batch is readable."""
    (Path(path) / INDEX).write_text(json.dumps(
        {"title": title, "runs": [e.to_json() for e in entries]}, indent=2))


# -- groups -----------------------------------------------------------------------------------

def by_policy(run: RunOutcome) -> str:
    return run.policy


def by_point(run: RunOutcome) -> tuple[tuple[str, str], ...]:
    """A sweep's grid point: its (key, value) pairs in the sweep's key order."""
    return tuple(run.params.items())


def group(runs: Iterable[RunOutcome], key: Callable[[RunOutcome], K]) -> dict[K, list[RunOutcome]]:
    """Runs by ``key`` (:func:`by_policy`, :func:`by_point`), groups in order of first run."""
    out: dict[K, list[RunOutcome]] = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def verdict_counts(runs: Iterable[RunOutcome], key: Callable[[RunOutcome], K] = by_policy
                   ) -> dict[K, Counter[Optional[str]]]:
    """Per group, how many runs reached each verdict (None: no verdict)."""
    return {k: Counter(r.verdict for r in rs) for k, rs in group(runs, key).items()}


class HasParams(Protocol):
    """Anything placed on a sweep's grid: a run, a runs.json entry, a grader's BatchRun."""

    @property
    def params(self) -> Params: ...


def param_values(runs: Iterable[HasParams], key: str) -> list[str]:
    """The values a sweep took for ``key``, in order of first appearance."""
    return list(dict.fromkeys(r.params[key] for r in runs if key in r.params))


# -- the comparison table --------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """The side-by-side table as plain strings; ``verdict_column`` says which cell a
    renderer may colour."""

    header: list[str]
    rows: list[list[str]]
    verdict_column: int


TABLE_HEADER = ["run", "policy", "verdict", "expected", "time to lockup / completion (s)",
                "written back (MiB)", "storage drops", "other drops", "mismatches"]


def table(runs: Iterable[RunOutcome]) -> Table:
    """Policy, verdict, time to lockup or completion, and drops of each run."""
    return Table(list(TABLE_HEADER), [_row(r) for r in runs], TABLE_HEADER.index("verdict"))


def _row(r: RunOutcome) -> list[str]:
    t = r.time_s
    # a run without a verdict shows "None", as it always has in the table
    return [r.label, r.policy, str(r.verdict), str(r.expected),
            f"{t:.1f}" if t else "-", f"{r.written_back_bytes / 2**20:.1f}",
            str(r.drops("memalloc")), str(r.drops("other")), str(r.mismatches)]
