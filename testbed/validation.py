"""The model against the kernel: the validation table of ``testbed compare --clients``.

A compare batch that ran the same load on the emulated client (the model) and on the
kernel client (Debian's 6.1 kernel in a guest, whose policy is what 6.1 does: Gorman's
series) is read here into one table: per figure, each client's median with its 95 %
interval over its runs (the statistics :func:`testbed.results.group_stats` gives every
batch), and for each model group (``--clients emulated:none,emulated:gorman-3.6,kernel``
has two) a column that says how much the kernel differs from it.

The figures are the ones both clients can be asked about: the verdict, the time to the
outcome, writeback goodput, ``PFMemallocDrop`` (a frame from the reserve dropped for a
socket without ``SOCK_MEMALLOC``) and ``pgscan_direct_throttle`` (direct reclaimers
throttled at half of min) as the rise of the client's own counters over the load, the
lowest free memory and each bulk flow's goodput; then the figures only one kind has.
A figure a kind of client does not have is ``n/a`` with a footnote that says why,
never 0: the kernel client has no packet handler counting drops per flow class, and
the model has no socket backlog (``TCPBacklogDrop``).

How much they differ: the kernel's median minus the model's, and their ratio, and
whether the two intervals are apart (disjoint 95 % intervals of the medians: a
difference the runs show, not a test at a stated level) or overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from . import results
from .results import Figure, GroupStats, RunOutcome, Table

KINDS = ("emulated", "kernel")
NOTE = ("median [95 % interval] over each client's runs; * marks an interval that covers "
        "the median with less than 95 % (too few runs: the range); the last column is the "
        "kernel's median minus the model's, their ratio, and whether the intervals are "
        "apart")


@dataclass(frozen=True)
class Row:
    """One figure of the table; ``missing`` names the kinds of client that do not have
    it, with the footnote that says why."""

    figure: Figure
    missing: dict[str, str] = field(default_factory=dict)
    note: str = ""          # a footnote on the figure itself, for both kinds


NO_HANDLER = ("the kernel client has no packet handler: its NIC is the guest kernel's "
              "virtio-net, whose drops per flow class nothing counts (the kernel's own "
              "PFMemallocDrop is above)")
CLOCKS = ("each client's clock starts with the load: the kernel client's boot and login "
          "(15 to 20 s under TCG) are not in it")
NO_BACKLOG = ("the model has no socket backlog (nothing in testbed/netdev models the "
              "queue of a socket its owner holds), so it counts no TCPBacklogDrop")


SOCKET_MEMORY = ("pages charged against tcp_mem (sk_memory_allocated): the model's are its "
                 "receive queues' (it keeps no send queue charges), the kernel's sockstat "
                 "TCP mem also holds its send queues; 6.1 sizes tcp_mem at half of 3.6's")


LOAD_MEMORY = ("free pages and clean page cache in the client's first sample: the guest's "
               "memory_mb also holds its kernel, its page tables and slab, and the agent's "
               "and workloads' Python processes, which the model does not count; "
               "`compare --set-model client.memory_mb=N` gives the model the kernel's")


def _counter(name: str) -> Callable[[RunOutcome], Optional[float]]:
    def value(r: RunOutcome) -> Optional[float]:
        return r.counter_rise(name)
    return value


ROWS: tuple[Row, ...] = (
    Row(Figure("time_s", "time to lockup / completion (s)", 1, lambda r: r.time_s),
        note=CLOCKS),
    Row(Figure("writeback_mb_s", "writeback goodput (MiB/s)", 2, lambda r: r.writeback_mb_s)),
    Row(Figure("pfmemalloc_drops", "PFMemallocDrop (frames)", 0, _counter("PFMemallocDrop"))),
    Row(Figure("throttled_reclaim", "throttled reclaim (pgscan_direct_throttle)", 0,
               _counter("pgscan_direct_throttle"))),
    Row(Figure("allocstall", "direct reclaim stalls (allocstall)", 0, _counter("allocstall"))),
    Row(Figure("lowest_free_pages", "lowest free memory (pages)", 0,
               lambda r: r.lowest_free_pages)),
    Row(Figure("socket_pages", "socket memory, peak (pages)", 0,
               lambda r: r.peak_socket_pages), note=SOCKET_MEMORY),
    Row(Figure("tcp_memory_pressures", "TCP memory pressure entered (TCPMemoryPressures)", 0,
               _counter("TCPMemoryPressures"))),
    Row(Figure("rx_storage_drops", "storage frames dropped, received (handler)", 0,
               lambda r: r.drops("memalloc")), {"kernel": NO_HANDLER}),
    Row(Figure("other_drops", "other frames dropped, rx + tx (handler)", 0,
               lambda r: r.other_drops), {"kernel": NO_HANDLER}),
    Row(Figure("tcp_backlog_drops", "TCPBacklogDrop (frames)", 0, _counter("TCPBacklogDrop")),
        {"emulated": NO_BACKLOG}),
    Row(Figure("load_memory_pages", "memory for the load at its start (pages)", 0,
               lambda r: r.load_memory_pages), note=LOAD_MEMORY),
)


def rows(runs: Sequence[RunOutcome]) -> list[Row]:
    """:data:`ROWS`, then the goodput of each bulk host any run had."""
    per_flow = [f for f in results.figures(runs) if f.key.startswith("goodput_")]
    return list(ROWS) + [Row(f) for f in per_flow]


def is_validation(runs: Sequence[RunOutcome]) -> bool:
    """Did the runs include both kinds of client (a ``compare --clients`` batch)?"""
    return {r.client_kind for r in runs} >= set(KINDS)


@dataclass(frozen=True)
class Validation:
    """The table and its footnotes (numbered as the cells mark them)."""

    table: Table
    footnotes: list[str]


def _kind(g: GroupStats) -> str:
    return "kernel" if g.label == "kernel" else "emulated"


def validation(runs: Sequence[RunOutcome]) -> Validation:
    """The validation table of a batch's runs, one column per client group (in the order
    of their first run; ``results.by_client`` groups them), then one difference column
    per model group: the kernel's figures against that model's."""
    table = rows(runs)
    groups = results.group_stats(runs, results.by_client, [r.figure for r in table])
    pairs = _pairs(groups)
    notes: list[str] = []
    table_rows = [["runs"] + [str(g.runs) for g in groups] + [""] * len(pairs),
                  ["verdicts"] + [results.verdict_text(g.verdicts) for g in groups]
                  + [_verdicts_differ(p) for p in pairs]]
    for row in table:
        cells = []
        for g in groups:
            why = row.missing.get(_kind(g))
            if why is None:
                cells.append(results.estimate_text(g.estimates[row.figure.key],
                                                   row.figure.digits, g.runs))
            else:
                cells.append(f"n/a [{_note(notes, why)}]")
        label = row.figure.label
        if row.note:
            label += f" [{_note(notes, row.note)}]"
        table_rows.append([label] + cells + [difference(p, row) for p in pairs])
    header = ["figure"] + [g.label for g in groups] + [_difference_header(p, pairs)
                                                       for p in pairs]
    return Validation(Table(header, table_rows), notes)


def _note(notes: list[str], text: str) -> int:
    """The number of footnote ``text``, added to ``notes`` the first time."""
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1


Pair = tuple[GroupStats, GroupStats]


def _pairs(groups: Sequence[GroupStats]) -> list[Pair]:
    """(model, kernel) for each model group, when the batch has the kernel's group."""
    kernel = [g for g in groups if _kind(g) == "kernel"]
    if len(kernel) != 1:
        return []
    return [(g, kernel[0]) for g in groups if _kind(g) == "emulated"]


def _difference_header(pair: Pair, pairs: Sequence[Pair]) -> str:
    """``kernel - model`` with one model group; with several, each names its model."""
    return "kernel - model" if len(pairs) == 1 else f"kernel - {pair[0].label}"


def _verdicts_differ(pair: Pair) -> str:
    return "same" if set(pair[0].verdicts) == set(pair[1].verdicts) else "differ"


def difference(pair: Pair, row: Row) -> str:
    """``+0.62 (x1.48), apart``: the kernel's median minus the model's, the ratio, and
    whether the intervals are disjoint; ``n/a`` when either side has no figure."""
    if any(_kind(g) in row.missing for g in pair):
        return "n/a"
    m, k = (g.estimates[row.figure.key] for g in pair)
    if m.median is None or k.median is None:
        return "-"
    d = row.figure.digits
    ratio = f" (x{k.median / m.median:.2f})" if m.median else ""
    apart = k.low > m.high or k.high < m.low            # type: ignore[operator]
    short = "*" if m.short or k.short else ""        # too few runs: ranges, not 95 %
    return f"{k.median - m.median:+.{d}f}{ratio}, {'apart' if apart else 'overlap'}{short}"


def footnote_lines(v: Validation) -> list[str]:
    return [f"[{i}] {text}" for i, text in enumerate(v.footnotes, 1)]
