"""The one reader of run, compare and sweep folders.

A run folder's ``summary.json`` (and its metric streams) and a batch folder's
``runs.json`` are read here, and only here, into typed values: :class:`RunOutcome` is one
run (verdict, time to the outcome, drops, its label and parameters), :class:`Batch` is a
compare or sweep folder (its title and the runs ``runs.json`` lists, with the parameters
stored there, never parsed back from labels); a run's ``provenance.json`` (the command,
code version and machine that :mod:`testbed.store` records) is read here too. Each
rule, such as "the time of a run is the lockup's, or the end of writeback", is written
once here; the report, the plots, the CLI, the graders' readers and the results store
call it. Runs group by policy or by grid point
(:func:`verdict_counts`), which is how repeated runs are counted. The comparison table is
data (:class:`Table`, plain strings); ``report/html.py`` and the CLI each render it.

Repeated runs are described by their statistics: each :class:`Figure` (time to the
outcome, drops per class and direction, writeback goodput, lowest free memory, the bulk
flows' goodput, longest stall and retransmission timeouts) is one function of a run, and
:func:`group_stats` gives per group the verdict counts and each figure's median with its
95 % interval (:mod:`testbed.stats`); :func:`stats_table` is that as a :class:`Table`,
:func:`stats_document` as ``stats.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Protocol, TypeVar

from . import stats
from .errors import ConfigError

SUMMARY = "summary.json"     # a run folder's outcome (written by report.summary.summarize)
INDEX = "runs.json"          # a compare/sweep folder's list of runs
STATS = "stats.json"         # a compare/sweep folder's statistics per group (stats_document)
PROVENANCE = "provenance.json"  # a run folder's command, code version and machine (testbed.store)

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
    def client_kind(self) -> str:
        """``emulated`` (the model) or ``kernel`` (the real kernel in a guest); a run
        summarised before the kind was recorded was emulated."""
        return str((self.summary.get("client") or {}).get("kind") or "emulated")

    @property
    def handler_counted(self) -> bool:
        """Did a packet handler count the drops per flow class (not so for a kernel
        client: its figures are None, not 0)?"""
        return self.summary.get("drops", {}).get("counted") is not False

    @property
    def status(self) -> Optional[str]:
        """``finished``, ``interrupted`` or ``error`` (then ``detail`` says why)."""
        return self.summary.get("status")

    @property
    def detail(self) -> str:
        return str(self.summary.get("detail") or "")

    @property
    def duration_s(self) -> Optional[float]:
        """Wall-clock seconds from the run's start to its summary."""
        d = self.summary.get("duration_s")
        return None if d is None else float(d)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per step of the orchestrator (bring_up, start_nodes, run, ...)."""
        got = self.summary.get("timings") or {}
        return {str(k): float(v) for k, v in got.items() if isinstance(v, (int, float))}

    @property
    def summarized_at(self) -> float:
        """When summary.json was last written (its mtime, seconds since the epoch)."""
        return (self.path / SUMMARY).stat().st_mtime

    @property
    def provenance(self) -> dict[str, Any]:
        """``provenance.json``: the command that made the run, the code version and the
        machine, as the results store wrote them (empty for an older folder)."""
        return read_json(self.path / PROVENANCE) or {}

    @property
    def finished(self) -> bool:
        """Did the run reach a verdict (not interrupted, no client error)?"""
        return self.summary.get("status") == "finished" and self.verdict is not None

    @property
    def validity(self) -> Optional[str]:
        """``valid`` or ``invalid`` (past a fidelity bound: :mod:`testbed.fidelity`); None
        for a run summarised before runs measured their fidelity."""
        return self.summary.get("validity")

    @property
    def invalid(self) -> bool:
        """Was the run past a fidelity bound? Its verdict is kept but never counted."""
        return self.validity == "invalid"

    def fidelity_figure(self, *path: str) -> Optional[float]:
        """A number of the summary's ``fidelity`` block (``"lag", "max_ms"``), or None."""
        got: Any = self.summary.get("fidelity") or {}
        for key in path:
            got = got.get(key) if isinstance(got, dict) else None
        return float(got) if isinstance(got, (int, float)) and not isinstance(got, bool) else None

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

    def drops(self, cls: str, reason: Optional[str] = None) -> Optional[int]:
        """Received frames dropped of class ``memalloc`` (storage) or ``other``, in all or
        for one reason (``PFMemallocDrop``, ...); None when no packet handler counted
        them (:attr:`handler_counted`)."""
        if not self.handler_counted:
            return None
        return int(self.summary.get("drops", {}).get(cls, {}).get(reason or "total", 0))

    def tx_drops(self, cls: str, reason: Optional[str] = None) -> Optional[int]:
        """Transmitted frames dropped of class ``memalloc`` or ``other``; None for a run
        summarised before transmit drops were split by class, or without a handler."""
        by_class = self.summary.get("drops", {}).get("tx", {}).get(cls)
        if by_class is None or not self.handler_counted:
            return None
        return int(by_class.get(reason or "total", 0))

    @property
    def other_drops(self) -> Optional[int]:
        """Frames of other traffic dropped, received and transmitted: what its users feel
        (a lost ACK stalls a download as surely as a lost segment)."""
        rx, tx = self.drops("other"), self.tx_drops("other")
        return None if rx is None or tx is None else rx + tx

    def counter_rise(self, name: str) -> Optional[int]:
        """How much a cumulative counter of the client's samples (``PFMemallocDrop``,
        ``pgscan_direct_throttle``, ...) rose from the first sample that has it to the
        outcome: a guest's counters count from its boot, the model's from the start.
        None when the client does not keep that counter."""
        got = [s[name] for s in self.samples() if isinstance(s.get(name), (int, float))]
        return int(got[-1] - got[0]) if got else None

    @property
    def writeback_mb_s(self) -> float:
        return float(self.summary.get("writeback", {}).get("mb_s") or 0.0)

    @property
    def bulk_flows(self) -> dict[str, dict[str, Any]]:
        """Per bulk host: goodput (``bytes``, ``mbit_s``), ``longest_stall_s`` and the
        server's TCP figures (``retrans``, ``rto``, ``rto_time_s``) where recorded."""
        return dict(self.summary.get("goodput") or {})

    def _bulk_figure(self, key: str) -> list[Optional[float]]:
        return [f.get(key) for f in self.bulk_flows.values()]

    @property
    def longest_bulk_stall_s(self) -> Optional[float]:
        """The longest time any bulk flow went without new bytes (None: not recorded)."""
        got = self._bulk_figure("longest_stall_s")
        return None if not got or None in got else float(max(got))  # type: ignore[type-var]

    @property
    def bulk_timeouts(self) -> Optional[int]:
        """Retransmission timeouts of the bulk flows, all together, as their servers'
        TCP_INFO counted them (None: not recorded, e.g. a kernel before 6.7)."""
        got = self._bulk_figure("rto")
        return None if not got or None in got else int(sum(got))  # type: ignore[arg-type]

    @property
    def bulk_rto_time_s(self) -> Optional[float]:
        """Time the bulk flows spent recovering from retransmission timeouts, summed over
        flows (TCP_INFO's tcpi_total_rto_time; None: not recorded)."""
        got = self._bulk_figure("rto_time_s")
        return None if not got or None in got else float(sum(got))  # type: ignore[arg-type]

    @cached_property
    def lowest_free_pages(self) -> Optional[int]:
        """The fewest free pages the client had before the outcome (client.ndjson)."""
        free = [s["free"] for s in self.samples() if isinstance(s.get("free"), int)]
        return min(free) if free else None

    @cached_property
    def load_memory_pages(self) -> Optional[int]:
        """The memory the load had at its start: free pages and clean page cache
        (``reclaimable``) in the first sample. The kernel's ``memory_mb`` also holds the
        kernel itself and its processes; the model's is all for the load. None: not
        recorded."""
        for s in self.samples():
            if isinstance(s.get("free"), int):
                return s["free"] + int(s.get("reclaimable") or 0)
        return None

    @cached_property
    def peak_socket_pages(self) -> Optional[int]:
        """The most pages TCP's sockets had charged at once (``tcp_mem_pages``:
        ``sk_memory_allocated``, what ``net.ipv4.tcp_mem`` bounds; the kernel's from
        sockstat), or, for a run recorded before the model kept it, its receive queues
        (``rmem``). None: not recorded."""
        got = [s.get("tcp_mem_pages", s.get("rmem")) for s in self.samples()]
        got = [v for v in got if isinstance(v, int)]
        return max(got) if got else None

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


def write_provenance(path: Path, doc: dict[str, Any]) -> None:
    """Write a run folder's ``provenance.json`` (see :attr:`RunOutcome.provenance`)."""
    (Path(path) / PROVENANCE).write_text(json.dumps(doc, indent=2))


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


def by_client(run: RunOutcome) -> str:
    """The kind of client and its policy: ``emulated:gorman-3.6``, or ``kernel`` (its
    policy is what its kernel does, not a choice)."""
    return "kernel" if run.client_kind == "kernel" else f"{run.client_kind}:{run.policy}"


def by_scenario_policy(run: RunOutcome) -> str:
    """Scenario and policy: a batch of several scenarios (``testbed claims``: the
    contention load and the baseline) must not pool the baseline with a policy's runs."""
    return f"{run.scenario} ({run.policy})"


def grouping(batch: "Batch", runs: Sequence[RunOutcome]) -> Callable[[RunOutcome], Hashable]:
    """How a batch's runs group for counting: by grid point in a sweep, by client when
    it ran both kinds (``compare --clients``), by scenario and policy when it ran several
    scenarios, by policy otherwise."""
    if batch.is_sweep:
        return by_point
    if len({r.client_kind for r in runs}) > 1:
        return by_client
    if len({r.scenario for r in runs}) > 1:
        return by_scenario_policy
    return by_policy


def group_label(key: Hashable) -> str:
    """A group's name as people read it (a grid point as ``key=value`` pairs)."""
    if isinstance(key, tuple):
        return " ".join(f"{k}={v}" for k, v in key)
    return str(key)


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
    verdict_column: Optional[int] = None


TABLE_HEADER = ["run", "policy", "verdict", "expected", "time to lockup / completion (s)",
                "written back (MiB)", "storage drops", "other drops", "mismatches"]


def table(runs: Iterable[RunOutcome]) -> Table:
    """Policy, verdict, time to lockup or completion, and drops of each run."""
    return Table(list(TABLE_HEADER), [_row(r) for r in runs], TABLE_HEADER.index("verdict"))


def _row(r: RunOutcome) -> list[str]:
    t = r.time_s
    # a run without a verdict shows "None", as it always has in the table; an invalid
    # run's verdict is shown as measured, marked: nothing counts it
    return [r.label, r.policy, verdict_shown(r.verdict, r.invalid), str(r.expected),
            f"{t:.1f}" if t else "-", f"{r.written_back_bytes / 2**20:.1f}",
            count_text(r.drops("memalloc")), count_text(r.drops("other")), str(r.mismatches)]


SWEEP_HEADER = ["policy", "verdict", "time to verdict (s)", "run's wall time (s)", "validity"]


def sweep_table(runs: Iterable[RunOutcome], keys: Sequence[str]) -> Table:
    """A sweep's runs by grid point: the swept values, then policy, verdict, time to the
    verdict, the run's wall time (start to summary) and its validity (:mod:`testbed.
    fidelity`; ``-`` for a run summarised before runs judged themselves)."""
    rows = []
    for r in runs:
        wall = r.duration_s
        rows.append([r.params.get(k, "-") for k in keys]
                    + [r.policy, str(r.verdict), f"{r.time_s:.1f}" if r.time_s else "-",
                       f"{wall:.1f}" if wall is not None else "-", r.validity or "-"])
    return Table(list(keys) + SWEEP_HEADER, rows, len(keys) + SWEEP_HEADER.index("verdict"))


def verdict_shown(verdict: Optional[str], invalid: bool) -> str:
    """A verdict in a table: ``completed``, or ``completed (invalid)`` for a run past a
    fidelity bound (:mod:`testbed.fidelity`)."""
    return f"{verdict} (invalid)" if invalid else str(verdict)


def count_text(n: Optional[int]) -> str:
    """A count, or ``n/a`` when it was not counted (a kernel client's drops per class)."""
    return "n/a" if n is None else str(n)


# -- statistics of repeated runs -------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """One number of a run (None when the run did not record it), with its name in
    stats.json (``key``), in tables (``label``) and the decimals to show."""

    key: str
    label: str
    digits: int
    value: Callable[[RunOutcome], Optional[float]]


FIGURES: tuple[Figure, ...] = (
    Figure("time_s", "time to lockup / completion (s)", 1, lambda r: r.time_s),
    Figure("rx_storage_drops", "storage frames dropped, received", 0, lambda r: r.drops("memalloc")),
    Figure("rx_other_drops", "other frames dropped, received", 0, lambda r: r.drops("other")),
    Figure("tx_storage_drops", "storage frames dropped, transmitted", 0,
           lambda r: r.tx_drops("memalloc")),
    Figure("tx_other_drops", "other frames dropped, transmitted", 0, lambda r: r.tx_drops("other")),
    Figure("other_drops", "other frames dropped, rx + tx", 0, lambda r: r.other_drops),
    Figure("writeback_mb_s", "writeback goodput (MiB/s)", 2, lambda r: r.writeback_mb_s),
    Figure("lowest_free_pages", "lowest free memory (pages)", 0, lambda r: r.lowest_free_pages),
    Figure("bulk_longest_stall_s", "longest bulk-flow stall (s)", 1,
           lambda r: r.longest_bulk_stall_s),
    Figure("bulk_timeouts", "bulk retransmission timeouts", 0, lambda r: r.bulk_timeouts),
    Figure("bulk_rto_time_s", "bulk time in RTO recovery (s)", 1, lambda r: r.bulk_rto_time_s),
)


# The run's own fidelity (testbed.fidelity): recorded with each run in the results store,
# not figures of the policy (the statistics of a group leave invalid runs out instead).
FIDELITY_FIGURES: tuple[Figure, ...] = (
    Figure("lag_max_ms", "client wake-up lag, max (ms)", 1,
           lambda r: r.fidelity_figure("lag", "max_ms")),
    Figure("lag_p99_ms", "client wake-up lag, p99 (ms)", 1,
           lambda r: r.fidelity_figure("lag", "p99_ms")),
    Figure("lag_late_fraction", "client wake-ups late", 4,
           lambda r: r.fidelity_figure("lag", "late_fraction")),
    Figure("link_ratio", "bottleneck link, busiest second / configured", 3,
           lambda r: r.fidelity_figure("link", "ratio")),
    Figure("cpu_pressure_some", "host CPU pressure, some (share of the run)", 3,
           lambda r: r.fidelity_figure("cpu_pressure", "some_fraction")),
)


def _goodput_of(host: str) -> Callable[[RunOutcome], Optional[float]]:
    def value(r: RunOutcome) -> Optional[float]:
        flow = r.bulk_flows.get(host)
        return None if flow is None else float(flow.get("mbit_s") or 0.0)
    return value


def figures(runs: Iterable[RunOutcome]) -> list[Figure]:
    """:data:`FIGURES`, then the goodput of each bulk host any of ``runs`` had."""
    hosts = dict.fromkeys(h for r in runs for h in r.bulk_flows)
    return list(FIGURES) + [Figure(f"goodput_{h}", f"goodput {h} (Mbit/s)", 2, _goodput_of(h))
                            for h in hosts]


def figure_values(runs: Iterable[RunOutcome], figure: Figure) -> list[float]:
    """The figure of each run that recorded it."""
    got = (figure.value(r) for r in runs)
    return [float(v) for v in got if v is not None]


@dataclass(frozen=True)
class GroupStats:
    """One policy's (or grid point's) runs: how many, their verdicts, and per figure the
    median with its interval (:class:`testbed.stats.Estimate`)."""

    label: str
    params: Params
    runs: int
    verdicts: Counter[Optional[str]]
    estimates: dict[str, stats.Estimate]
    values: dict[str, list[float]]
    invalid: int = 0          # runs left out: past a fidelity bound (testbed.fidelity)


def group_stats(runs: Sequence[RunOutcome], key: Callable[[RunOutcome], Hashable] = by_policy,
                figs: Optional[Sequence[Figure]] = None) -> list[GroupStats]:
    """Per group (in order of its first run), the statistics of every figure (``figs``,
    by default :func:`figures`), over the runs that reached a verdict (an interrupted or
    failed run's figures describe the testbed's failure, not the policy; it is counted
    among the verdicts as none). An invalid run (past a fidelity bound) is left out of
    the runs, the verdicts and the figures alike, and counted in ``invalid``."""
    figs = figures(runs) if figs is None else figs
    out = []
    for k, every in group(runs, key).items():
        rs = [r for r in every if not r.invalid]
        values = {f.key: figure_values([r for r in rs if r.finished], f) for f in figs}
        out.append(GroupStats(group_label(k), dict(every[0].params), len(rs),
                              Counter(r.verdict for r in rs),
                              {f: stats.median_ci(v) for f, v in values.items()}, values,
                              invalid=len(every) - len(rs)))
    return out


def verdict_text(counts: Counter[Optional[str]]) -> str:
    """``lockup 10`` or ``completed 9, degraded 1`` (``no verdict`` for None)."""
    return ", ".join(f"{v or 'no verdict'} {n}" for v, n in counts.most_common())


def estimate_text(e: stats.Estimate, digits: int, runs: int) -> str:
    """``5.7 [5.5, 6.0]``; ``*`` when the interval is below 95 % (too few runs), and
    ``n=`` when some runs did not record the figure."""
    if e.n == 0 or e.median is None:
        return "-"
    text = f"{e.median:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"
    if e.short:
        text += "*"
    if e.n < runs:
        text += f" n={e.n}"
    return text


STATS_NOTE = ("median [95 % interval] over the runs of each group; * marks an interval "
              "that covers the median with less than 95 % (too few runs: the range)")


def stats_table(groups: Sequence[GroupStats], runs: Iterable[RunOutcome]) -> Table:
    """Figures down, groups across: the verdict counts, then each figure's median and
    interval (the shape reads well for a handful of policies or grid points)."""
    figs = figures(runs)
    rows = [["runs"] + [str(g.runs) for g in groups],
            ["verdicts"] + [verdict_text(g.verdicts) for g in groups]]
    if any(g.invalid for g in groups):
        rows.append(["invalid runs, left out"] + [str(g.invalid) for g in groups])
    for f in figs:
        rows.append([f.label] + [estimate_text(g.estimates[f.key], f.digits, g.runs)
                                 for g in groups])
    return Table(["figure"] + [g.label for g in groups], rows)


def batch_groups(batch: Batch, runs: Sequence[RunOutcome]) -> list[GroupStats]:
    """The statistics of a batch's runs (``batch.runs()``), grouped as :func:`grouping` says."""
    return group_stats(runs, grouping(batch, runs))


def stats_document(batch: Batch, runs: Sequence[RunOutcome],
                   groups: Sequence[GroupStats]) -> dict[str, Any]:
    """``stats.json``: per group its runs, verdict counts and, per figure, the values and
    their median with its interval; the methods are named so that a reader can redo it."""
    labels = {f.key: f.label for f in figures(runs)}
    return {
        "title": batch.title,
        "method": {"median_interval": "distribution-free, order statistics, coverage from "
                                      "the binomial distribution (testbed.stats.median_ci)",
                   "confidence": stats.CONFIDENCE},
        "figures": labels,
        "groups": [{"group": g.label, "params": g.params, "runs": g.runs,
                    "invalid": g.invalid,
                    "verdicts": {str(v): n for v, n in g.verdicts.items()},
                    "figures": {k: {**g.estimates[k].to_json(), "values": g.values[k]}
                                for k in labels}}
                   for g in groups],
    }


def write_stats(batch: Batch, runs: Sequence[RunOutcome], groups: Sequence[GroupStats]) -> Path:
    """Write the batch's ``stats.json``; returns its path."""
    out = batch.path / STATS
    out.write_text(json.dumps(stats_document(batch, runs, groups), indent=2))
    return out
