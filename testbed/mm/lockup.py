"""The lockup detector: writeback stuck while memory is exhausted.

Every ``period_s`` it looks at three things:

* *pending*: dirty pages or pages under writeback exist;
* *stalled for*: time since the last completed writeback, or since writeback
  became pending, whichever is later;
* *exhausted*: free pages at or under ``WMARK_MIN`` - no ``GFP_KERNEL``
  allocation can succeed (the slow path needs free - 1 >= min).

When writeback has been pending and stalled for ``lockup_after_s`` while memory
is exhausted, it declares a lockup and records :class:`LockupEvidence`: the
time, the memory state (free, min, dirty, writeback, reclaimable, reserve use
per device), allocation failures per class, throttled and stalled tasks, and
the kernel counters. When writeback progresses again, the episode gets its
``recovered_at``. Independently it keeps the longest stall seen (``degraded``
verdicts are judged by it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .manager import MemoryManager
    from .pagecache import PageCache


@dataclass
class LockupEvidence:
    """The state of the machine when the detector fired."""

    t: float                        # seconds since the machine started
    stalled_for_s: float
    free: int
    wmark_min: int
    dirty: int
    writeback: int
    reclaimable: int
    reserve: dict[str, int]
    alloc_fail: dict[str, int]
    throttled_dirty: int
    throttled_reclaim: int
    alloc_stalled: int
    counters: dict[str, Any] = field(default_factory=dict)
    recovered_at: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LockupDetector(threading.Thread):
    """Watches writeback progress and memory; fires once per lockup episode."""

    COUNTERS = ("PFMemallocDrop", "pgscan_direct_throttle", "kswapd_failures", "allocstall",
                "writeback_errors", "nr_written", "drops")

    def __init__(self, mm: "MemoryManager", page_cache: "PageCache", lockup_after_s: float = 5.0,
                 period_s: float = 0.1, started: Optional[float] = None) -> None:
        super().__init__(name="lockup-detector", daemon=True)
        self.mm = mm
        self.pc = page_cache
        self.lockup_after_s = lockup_after_s
        self.period_s = period_s
        self.started = time.monotonic() if started is None else started
        self.episodes: list[LockupEvidence] = []
        self.fired = threading.Event()
        self.longest_stall_s = 0.0
        self.stalled_for_s = 0.0
        self._pending_since: Optional[float] = None
        self._in_lockup = False
        self._progress_at_fire = 0.0

    @property
    def evidence(self) -> Optional[LockupEvidence]:
        """The first lockup, if there was one."""
        return self.episodes[0] if self.episodes else None

    @property
    def locked_up(self) -> bool:
        """A lockup is going on now."""
        return self._in_lockup

    def run(self) -> None:
        while not self.mm.wait_stopping(self.period_s):
            self.check()

    def check(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        mm = self.mm
        with mm.lock:
            vm, zone = mm.vm, mm.zone
            pending = vm.nr_dirty + vm.nr_writeback > 0
            last = self.pc.last_progress
            exhausted = zone.free <= zone.wmark_min
        if self._in_lockup and last > self._progress_at_fire:
            self._in_lockup = False
            self.episodes[-1].recovered_at = round(now - self.started, 3)
        if not pending:
            self._pending_since = None
            self.stalled_for_s = 0.0
            return
        if self._pending_since is None:
            self._pending_since = now
        self.stalled_for_s = now - max(last, self._pending_since)
        self.longest_stall_s = max(self.longest_stall_s, self.stalled_for_s)
        if self.stalled_for_s >= self.lockup_after_s and exhausted and not self._in_lockup:
            self._in_lockup = True
            self._progress_at_fire = last
            self.episodes.append(self._evidence(now))
            self.fired.set()

    def _evidence(self, now: float) -> LockupEvidence:
        snap = self.mm.snapshot()
        return LockupEvidence(
            t=round(now - self.started, 3), stalled_for_s=round(self.stalled_for_s, 3),
            free=snap["free"], wmark_min=snap["wmark_min"], dirty=snap["dirty"],
            writeback=snap["writeback"], reclaimable=snap["reclaimable"],
            reserve=snap["reserve"], alloc_fail=snap["alloc_fail"],
            throttled_dirty=snap["nr_throttled_dirty"], throttled_reclaim=snap["nr_throttled_reclaim"],
            alloc_stalled=snap["nr_alloc_stalled"],
            counters={k: snap[k] for k in self.COUNTERS})
