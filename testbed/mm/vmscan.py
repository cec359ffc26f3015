"""kswapd: background reclaim of clean page-cache pages.

``kswapd`` sleeps until an allocation leaves the zone under ``WMARK_LOW``
(``wakeup_kswapd``), then reclaims ``SWAP_CLUSTER_MAX`` clean pages at a time
from the LRU until the zone is balanced at ``WMARK_HIGH`` (``balance_pgdat``).
It runs with ``PF_MEMALLOC | PF_KSWAPD``. A round that frees nothing counts in
``kswapd_failures``, wakes the flusher if dirty pages are what fills memory,
and waits ``retry_wait_s`` for writeback; at ``MAX_RECLAIM_RETRIES`` (16)
failures the node is hopeless and kswapd is no longer woken until some
reclaim succeeds again. Tasks held in ``throttle_direct_reclaim()`` are woken
when free memory is back above half of min, and whenever kswapd goes to sleep.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional

from .errors import MachineStopped
from .page_alloc import MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX
from .task import PF, current

if TYPE_CHECKING:
    from .manager import MemoryManager

log = logging.getLogger(__name__)

SLEEP_POLL_S = 0.1


class Kswapd(threading.Thread):
    """The zone's kswapd thread."""

    def __init__(self, mm: "MemoryManager", retry_wait_s: float = 0.1) -> None:
        super().__init__(name="kswapd0", daemon=True)
        self.mm = mm
        self.retry_wait_s = retry_wait_s
        self._wake = threading.Event()
        self.error: Optional[BaseException] = None
        mm.kswapd = self

    def wakeup(self) -> None:
        self._wake.set()

    def run(self) -> None:
        current().flags |= PF.MEMALLOC | PF.KSWAPD | PF.KTHREAD
        mm = self.mm
        try:
            while not mm.stopping:
                if not self._wake.wait(SLEEP_POLL_S):
                    continue
                self._wake.clear()
                with mm.lock:
                    mm.vm.kswapd_runs += 1
                self.balance_pgdat()
                with mm.lock:                       # kswapd_try_to_sleep()
                    mm.pfmemalloc_wait.notify_all()
                    mm.kswapd_wake_pending = False
        except MachineStopped:
            pass
        except BaseException as exc:
            log.exception("kswapd died")
            self.error = exc

    def balance_pgdat(self) -> None:
        """Reclaim until the zone is at ``WMARK_HIGH`` or the node is hopeless."""
        mm = self.mm
        while not mm.stopping:
            with mm.lock:
                zone, vm = mm.zone, mm.vm
                if zone.free >= zone.wmark_high or vm.kswapd_failures >= MAX_RECLAIM_RETRIES:
                    return
                scanned = reclaimed = 0
                if mm.shrinker is not None:
                    scanned, reclaimed = mm.shrinker.shrink_locked(SWAP_CLUSTER_MAX)
                vm.pgscan_kswapd += scanned
                vm.pgsteal_kswapd += reclaimed
                if reclaimed:
                    vm.kswapd_failures = 0
                else:
                    vm.kswapd_failures += 1
                if mm.allow_direct_reclaim_locked():
                    mm.pfmemalloc_wait.notify_all()
                dirty = vm.nr_dirty
            if not reclaimed:
                if dirty and mm.flusher is not None:
                    mm.flusher.wakeup()
                mm.congestion_wait(self.retry_wait_s)
