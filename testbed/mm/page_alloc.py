"""The page allocator: ``alloc_pages(nr, gfp)`` in the current task's context.

One lock (``self.lock``) guards the zone's free count, the page counts per
:class:`~testbed.mm.vmstat.Use` and every counter; everything done under it is a
few integer updates, so the packet handler's per-frame calls stay cheap.

``alloc_pages`` follows ``__alloc_pages()``:

1. fast path: take the pages if the zone stays at or above ``WMARK_LOW``;
2. slow path: wake kswapd (``__GFP_KSWAPD_RECLAIM``); retry at ``WMARK_MIN``
   lowered for ``__GFP_HIGH`` / atomic callers; then, if
   ``gfp_pfmemalloc_allowed()``, with ``ALLOC_NO_WATERMARKS`` (down to zero);
3. a caller that may not sleep (no ``__GFP_DIRECT_RECLAIM``, or a
   ``PF_MEMALLOC`` task, which must not recurse into reclaim) fails here, and
   the failure is counted under its class;
4. a sleeping caller passes the policy's ``throttle_direct_reclaim()`` and runs
   direct reclaim (:func:`~testbed.mm.vmscan.try_to_free_pages`, under
   ``PF_MEMALLOC``, the era's loop). With progress it retries at its mark.
   Without, a ``__GFP_FS`` request that may retry calls the era's
   ``out_of_memory()`` (:mod:`testbed.mm.oom_kill`) after a last try at
   ``WMARK_HIGH``, then starts over. When reclaim freed nothing the task waits in
   ``congestion_wait()`` - a bounded sleep (20 ms by default) cut short when a
   writeback completes - and loops. A request that can never be met waits until
   the machine stops (then :class:`~testbed.mm.errors.MachineStopped` is raised),
   which is how the emulated machine locks up without the emulator hanging.
   ``__GFP_NORETRY`` makes it give up after one reclaim attempt. A task the OOM
   killer chose gives up at once (:class:`~testbed.mm.task.TaskKilled`): it is dying.

The zone's reclaim state lives here too: ``pages_scanned`` and
``all_unreclaimable``, which any page given back clears (``free_pages_bulk`` /
``free_pcppages_bulk``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Optional, Protocol

from .errors import MachineStopped, MMError
from .gfp import GFP_KERNEL, Gfp, gfp_class, gfp_pfmemalloc_allowed, gfp_to_alloc_flags, slowpath_mark
from .task import PF, TaskKilled, TaskStruct, current, current_gfp_context
from .vmscan import MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX, try_to_free_pages
from .vmstat import Use, VmStat
from .zone import Zone

if TYPE_CHECKING:
    from .era import EraProfile
    from .oom_kill import OomKiller
    from .pagecache import Page
    from .policy.base import Policy

__all__ = ["PageAllocator", "SWAP_CLUSTER_MAX", "MAX_RECLAIM_RETRIES"]


class Shrinker(Protocol):
    """What reclaim needs of the page cache (``*_locked``: called with the mm lock held)."""

    def shrink_locked(self, nr_to_reclaim: int) -> tuple[int, int]:
        """Free up to ``nr_to_reclaim`` clean pages; return (scanned, reclaimed)."""

    def isolate_dirty_locked(self, nr: int) -> list["Page"]:
        """Up to ``nr`` dirty pages, oldest first, for ``pageout()``."""

    def pageout(self, pages: list["Page"]) -> None:
        """Start writeback of ``pages`` in the caller's context (mm lock not held)."""

    def congested(self) -> bool:
        """Is the device's request queue full (``bdi_write_congested``)?"""

    @property
    def nr_reclaimable(self) -> int:
        """Clean pages on the LRU that reclaim could free now."""

    @property
    def nr_lru_pages(self) -> int:
        """Every page-cache page (the LRU lists' length)."""

    @property
    def nr_mapped(self) -> int:
        """Page-cache pages mapped by a workload (``nr_mapped``)."""


class Waker(Protocol):
    def wakeup(self) -> None:
        """Wake the thread (kswapd or the flusher); never blocks."""


class PageAllocator:
    """The zone, its counters and ``alloc_pages`` / ``free_pages``."""

    def __init__(self, zone: Zone, policy: "Policy", congestion_wait_s: float = 0.02) -> None:
        self.lock = threading.Lock()
        self.zone = zone
        self.policy = policy
        self.vm = VmStat()
        self.used = [0] * len(Use)
        self.congestion_wait_s = congestion_wait_s
        # congestion_wait(): sleepers woken early when a writeback completes.
        self.congestion = threading.Condition(self.lock)
        # pgdat->pfmemalloc_wait: tasks held by throttle_direct_reclaim().
        self.pfmemalloc_wait = threading.Condition(self.lock)
        self.shrinker: Optional[Shrinker] = None
        self.kswapd: Optional[Waker] = None
        self.flusher: Optional[Any] = None          # the Flusher: wakeup(nr), writeback_inodes()
        self.oom: Optional["OomKiller"] = None      # out_of_memory(), when the era has one
        self.kswapd_wake_pending = False
        self.pages_scanned = 0                      # zone->pages_scanned since a page was freed
        self.all_unreclaimable = False              # zone->all_unreclaimable
        self._stopping = threading.Event()

    @property
    def era(self) -> "EraProfile":
        """The mechanisms of the policy's kernel."""
        return self.policy.era

    # ----------------------------------------------------------- primitives
    def take_locked(self, nr: int, mark: int, use: Use) -> bool:
        """Take ``nr`` pages if at least ``mark`` stay free (the watermark check)."""
        zone = self.zone
        free = zone.free - nr
        if free < mark:
            return False
        zone.free = free
        self.used[use] += nr
        self.vm.pgalloc += nr
        if free < zone.wmark_min:
            self.vm.pgalloc_below_min += nr
        if free < zone.wmark_low:
            self.wakeup_kswapd_locked()
        return True

    def give_locked(self, nr: int, use: Use) -> None:
        """Return ``nr`` pages charged to ``use`` to the zone."""
        if nr > self.used[use]:
            raise MMError(f"free_pages: freeing {nr} {use.name} pages but only "
                          f"{self.used[use]} are allocated")
        self.zone.free += nr
        self.used[use] -= nr
        self.vm.pgfree += nr
        self.pages_freed_locked()

    def pages_freed_locked(self) -> None:
        """Pages went back to the zone: it is reclaimable again (``free_pages_bulk``)."""
        self.pages_scanned = 0
        self.all_unreclaimable = False

    def hopeless_locked(self) -> bool:
        """``kswapd_failures >= MAX_RECLAIM_RETRIES``, in kernels that count them (4.11 on)."""
        return self.era.kswapd_failures and self.vm.kswapd_failures >= MAX_RECLAIM_RETRIES

    def wakeup_kswapd_locked(self) -> None:
        """``wakeup_kswapd()``: unless already woken, or (4.11 on) the node is hopeless."""
        if self.kswapd_wake_pending or self.kswapd is None:
            return
        if self.hopeless_locked():
            return
        self.kswapd_wake_pending = True
        self.vm.kswapd_wakeups += 1
        self.kswapd.wakeup()

    def count_failure_locked(self, gfp: Gfp, no_watermarks: bool) -> None:
        self.vm.alloc_fail[gfp_class(gfp, no_watermarks)] += 1
        if not gfp & Gfp.NOWARN:
            self.vm.alloc_fail_warn += 1

    # ------------------------------------------------------------ allocator
    def alloc_pages(self, nr: int, gfp: Gfp = GFP_KERNEL, use: Use = Use.KERNEL) -> bool:
        """Allocate ``nr`` pages for the current task; False if a non-sleeping request fails.

        Raises :class:`MachineStopped` if a sleeping request is still waiting
        when the machine stops.
        """
        if nr <= 0:
            raise MMError(f"alloc_pages: nr must be > 0 (got {nr})")
        with self.lock:                     # the fast path is the same for every request
            if self.take_locked(nr, self.zone.wmark_low, use):
                return True
        task = current()
        return self._alloc_pages_slowpath(nr, current_gfp_context(gfp, task), task, use)

    def free_pages(self, nr: int, use: Use = Use.KERNEL) -> None:
        """Give back ``nr`` pages allocated with :meth:`alloc_pages`."""
        if nr <= 0:
            raise MMError(f"free_pages: nr must be > 0 (got {nr})")
        with self.lock:
            self.give_locked(nr, use)

    def _try_slowpath_locked(self, nr: int, gfp: Gfp, mark: int, no_watermarks: bool,
                             use: Use) -> bool:
        if gfp & Gfp.KSWAPD_RECLAIM:
            self.wakeup_kswapd_locked()
        if self.take_locked(nr, mark, use):
            return True
        return no_watermarks and self.take_locked(nr, 0, use)

    def _alloc_pages_slowpath(self, nr: int, gfp: Gfp, task: TaskStruct, use: Use) -> bool:
        alloc_flags = gfp_to_alloc_flags(gfp)
        no_watermarks = gfp_pfmemalloc_allowed(gfp, bool(task.flags & PF.MEMALLOC))
        may_reclaim = bool(gfp & Gfp.DIRECT_RECLAIM) and not task.flags & PF.MEMALLOC
        may_oom = bool(gfp & Gfp.FS) and not gfp & Gfp.NORETRY and self.oom is not None
        stalled = False
        outer_may_oom, task.may_oom = task.may_oom, may_oom
        try:
            while True:
                with self.lock:
                    mark = slowpath_mark(self.zone.wmark_min, alloc_flags)   # min may move
                    if self._try_slowpath_locked(nr, gfp, mark, no_watermarks, use):
                        return True
                    if not may_reclaim:
                        self.count_failure_locked(gfp, no_watermarks)
                        return False
                    if not stalled:
                        stalled = True
                        self.vm.nr_alloc_stalled += 1
                self.check_stopping()
                self.policy.throttle_direct_reclaim(gfp, task)
                reclaimed, progress = try_to_free_pages(self, nr, gfp, task)
                with self.lock:
                    if progress and self._try_slowpath_locked(nr, gfp, mark, no_watermarks, use):
                        return True
                    if not progress and may_oom and self.take_locked(nr, self.zone.wmark_high, use):
                        return True     # "only to catch a parallel oom killing"
                if not progress and may_oom:
                    self.oom.out_of_memory(gfp, task)
                    continue                                # goto restart
                if gfp & Gfp.NORETRY:
                    with self.lock:
                        self.count_failure_locked(gfp, no_watermarks)
                    return False
                if not reclaimed:
                    self.congestion_wait()
        finally:
            task.may_oom = outer_may_oom
            if stalled:
                with self.lock:
                    self.vm.nr_alloc_stalled -= 1

    # -------------------------------------------------------------- reclaim
    def allow_direct_reclaim_locked(self) -> bool:
        """``allow_direct_reclaim()``: free pages above half the min watermark.

        The bypass for a hopeless node came in 2017 with ``kswapd_failures``:
        kernels without the counter do not have it.
        """
        if self.hopeless_locked():
            return True
        ok = self.zone.free > self.zone.wmark_min // 2
        if not ok:
            self.wakeup_kswapd_locked()
        return ok

    def congestion_wait(self, timeout: Optional[float] = None) -> None:
        """Sleep until a writeback completes or ``timeout`` (default 20 ms) passes."""
        with self.congestion:
            if not self._stopping.is_set():
                self.congestion.wait(self.congestion_wait_s if timeout is None else timeout)

    def writeback_done_locked(self) -> None:
        """A writeback completed: wake congestion_wait() sleepers."""
        self.congestion.notify_all()

    # ------------------------------------------------------------- stopping
    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check_stopping(self) -> None:
        """Raise if the machine is stopping, or if the current task was OOM-killed."""
        if self._stopping.is_set():
            raise MachineStopped("the machine is stopping")
        task = current()
        if task.oom_killed:
            raise TaskKilled(f"{task.comm} was killed by the OOM killer")

    def wait_stopping(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if the machine is stopping."""
        return self._stopping.wait(timeout)

    def shutdown(self) -> None:
        """Make every sleeping task give up (MachineStopped) and threads exit."""
        self._stopping.set()
        with self.lock:
            self.congestion.notify_all()
            self.pfmemalloc_wait.notify_all()
