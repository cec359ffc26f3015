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
4. a sleeping caller passes the policy's ``throttle_direct_reclaim()``, runs
   direct reclaim of clean page-cache pages, retries, and when reclaim made no
   progress waits in ``congestion_wait()`` - a bounded sleep (20 ms by default)
   cut short when a writeback completes - and loops. There is no OOM killer:
   a ``GFP_KERNEL`` request that can never be met waits until the machine
   stops (then :class:`~testbed.mm.errors.MachineStopped` is raised), which is
   exactly how the emulated machine locks up without the emulator hanging.
   ``__GFP_NORETRY`` makes it give up after one reclaim attempt.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional, Protocol

from .errors import MachineStopped, MMError
from .gfp import GFP_KERNEL, Gfp, gfp_class, gfp_pfmemalloc_allowed, gfp_to_alloc_flags, slowpath_mark
from .task import PF, TaskStruct, current, current_gfp_context
from .vmstat import Use, VmStat
from .zone import Zone

if TYPE_CHECKING:
    from .policy.base import Policy

SWAP_CLUSTER_MAX = 32           # pages reclaimed per batch
MAX_RECLAIM_RETRIES = 16        # kswapd_failures at which a node is hopeless


class Shrinker(Protocol):
    """What reclaim needs of the page cache (called with the mm lock held)."""

    def shrink_locked(self, nr_to_reclaim: int) -> tuple[int, int]:
        """Free up to ``nr_to_reclaim`` clean pages; return (scanned, reclaimed)."""

    @property
    def nr_reclaimable(self) -> int:
        """Clean pages on the LRU that reclaim could free now."""


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
        self.flusher: Optional[Waker] = None
        self.kswapd_wake_pending = False
        self._stopping = threading.Event()

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

    def wakeup_kswapd_locked(self) -> None:
        """``wakeup_kswapd()``: unless already woken, or the node is hopeless."""
        if self.kswapd_wake_pending or self.kswapd is None:
            return
        if self.vm.kswapd_failures >= MAX_RECLAIM_RETRIES:
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
        stalled = False
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
                progress = self.direct_reclaim(nr)
                with self.lock:
                    if self._try_slowpath_locked(nr, gfp, mark, no_watermarks, use):
                        return True
                    if gfp & Gfp.NORETRY:
                        self.count_failure_locked(gfp, no_watermarks)
                        return False
                if not progress:
                    self.congestion_wait()
        finally:
            if stalled:
                with self.lock:
                    self.vm.nr_alloc_stalled -= 1

    # -------------------------------------------------------------- reclaim
    def direct_reclaim(self, nr: int) -> bool:
        """``try_to_free_pages()``: reclaim clean page-cache pages; True on progress."""
        with self.lock:
            self.vm.allocstall += 1
            nr_to_reclaim = max(nr, SWAP_CLUSTER_MAX)
            scanned = reclaimed = 0
            if self.shrinker is not None:
                scanned, reclaimed = self.shrinker.shrink_locked(nr_to_reclaim)
            self.vm.pgscan_direct += scanned
            self.vm.pgsteal_direct += reclaimed
            if reclaimed:
                self.vm.kswapd_failures = 0
            elif self.vm.nr_dirty and self.flusher is not None:
                self.flusher.wakeup()       # wakeup_flusher_threads(WB_REASON_VMSCAN)
        return reclaimed > 0

    def allow_direct_reclaim_locked(self) -> bool:
        """``allow_direct_reclaim()``: free pages above half the min watermark."""
        if self.vm.kswapd_failures >= MAX_RECLAIM_RETRIES:
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
        if self._stopping.is_set():
            raise MachineStopped("the machine is stopping")

    def wait_stopping(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True if the machine is stopping."""
        return self._stopping.wait(timeout)

    def shutdown(self) -> None:
        """Make every sleeping task give up (MachineStopped) and threads exit."""
        self._stopping.set()
        with self.lock:
            self.congestion.notify_all()
            self.pfmemalloc_wait.notify_all()
