"""Counters, in the kernel's names, and what the pages are used for.

``VmStat`` holds the event counters of /proc/vmstat and /proc/net/netstat that
the emulation reproduces (``pgscan_direct_throttle``, ``allocstall``,
``PFMemallocDrop``, ...), the node state (``nr_dirty``, ``nr_writeback``) and
the failures per allocation class. Every field is changed only under the
memory manager's lock; :meth:`VmStat.snapshot` copies them for the metrics.

``Use`` says what a page is charged to, so that at every moment
``free + sum(used) == managed_pages`` can be checked.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .skbuff import DropReason


class Use(IntEnum):
    """What an allocated page is used for."""

    FILE = 0        # page cache (NR_FILE_PAGES): clean, dirty or under writeback
    SKB = 1         # socket buffers: data pages and skbuff_head_cache slab pages
    PDU = 2         # block-device request buffers charged through pdu_alloc()
    KERNEL = 3      # anything else allocated with alloc_pages()


ALLOC_CLASSES = ("kernel", "nofs", "noio", "nowait", "atomic", "memalloc")

# Event counters, named as the kernel names them.
EVENT_COUNTERS = (
    "pgalloc", "pgfree",
    "allocstall",               # direct reclaim entered
    "pgscan_kswapd", "pgsteal_kswapd", "pgscan_direct", "pgsteal_direct",
    "pgscan_direct_throttle",   # throttle_direct_reclaim() made a task wait
    "kswapd_wakeups", "kswapd_runs",
    "pgalloc_below_min",        # pages handed out under WMARK_MIN (not a kernel counter)
    "nr_dirtied", "nr_written", # pages dirtied / written back (cumulative)
    "writeback_errors",
    "dirty_throttle_pauses",    # balance_dirty_pages() sleeps
    "nr_vmscan_write",          # pages reclaim wrote back itself (pageout)
    "oom_kill",                 # tasks the OOM killer killed
    "PFMemallocDrop",           # TcpExt: pfmemalloc skb for a non-memalloc socket
    "TCPMemoryPressures",       # TcpExt: TCP entered memory pressure (tcp_mem[1] passed)
    "TCPRcvCollapsed",          # TcpExt: skbs tcp_collapse() copied out and freed
)


class VmStat:
    """The memory manager's counters. Mutated only under the mm lock."""

    def __init__(self) -> None:
        for name in EVENT_COUNTERS:
            setattr(self, name, 0)
        self.kswapd_failures = 0            # pgdat->kswapd_failures (reset on progress)
        self.nr_dirty = 0                   # NR_FILE_DIRTY
        self.nr_writeback = 0               # NR_WRITEBACK
        self.writeback_bytes = 0            # bytes whose writeback completed
        self.dirty_throttle_seconds = 0.0   # time spent paused in balance_dirty_pages()
        self.nr_throttled_dirty = 0         # tasks paused in balance_dirty_pages() now
        self.nr_throttled_reclaim = 0       # tasks waiting in throttle_direct_reclaim() now
        self.nr_alloc_stalled = 0           # tasks sleeping in the allocator's slow path now
        self.alloc_fail = dict.fromkeys(ALLOC_CLASSES, 0)
        self.alloc_fail_warn = 0            # failures without __GFP_NOWARN (the kernel prints them)
        self.drops = [0] * (max(DropReason) + 1)   # indexed by DropReason

    def snapshot(self) -> dict[str, Any]:
        """A copy of every counter, for metrics and evidence."""
        out: dict[str, Any] = {name: getattr(self, name) for name in EVENT_COUNTERS}
        out.update(kswapd_failures=self.kswapd_failures,
                   nr_dirty=self.nr_dirty, nr_writeback=self.nr_writeback,
                   writeback_bytes=self.writeback_bytes,
                   dirty_throttle_seconds=round(self.dirty_throttle_seconds, 3),
                   nr_throttled_dirty=self.nr_throttled_dirty,
                   nr_throttled_reclaim=self.nr_throttled_reclaim,
                   nr_alloc_stalled=self.nr_alloc_stalled,
                   alloc_fail=dict(self.alloc_fail), alloc_fail_warn=self.alloc_fail_warn,
                   drops={r.name: self.drops[r] for r in DropReason})
        return out

    def negative_fields(self) -> list[str]:
        """Names of counters that went below zero (a bug; the concurrency test checks it)."""
        snap = self.snapshot()
        bad = [k for k, v in snap.items() if isinstance(v, (int, float)) and v < 0]
        bad += [f"alloc_fail.{k}" for k, v in self.alloc_fail.items() if v < 0]
        bad += [f"drops.{r.name}" for r in DropReason if self.drops[r] < 0]
        return bad
