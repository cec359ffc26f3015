"""Page reclaim: kswapd, direct reclaim (``try_to_free_pages``) and ``pageout()``.

One pass over the LRU (:func:`shrink_zone`, the kernel's ``shrink_list`` /
``shrink_page_list``) frees up to ``SWAP_CLUSTER_MAX`` clean page-cache pages;
the pages it scans that were dirtied through a shared mapping get their dirt
moved to the page (``try_to_unmap``); and, where the era's kernel did, it starts
writeback of dirty pages itself (:func:`may_pageout`). That writeback runs in the
reclaimer's context, which is ``PF_MEMALLOC`` (kswapd's flags; direct reclaim
sets it around ``try_to_free_pages``), so whatever the block device allocates on
the way - PDU buffers, transmit skbs - may use the reserves:

* 2.6.13: kswapd and direct reclaim both call ``pageout()`` on dirty pages when
  the request allows ``__GFP_FS``; ``may_write_to_queue()`` lets kswapd write to
  any queue, others only to an uncongested one or the one they are writing to;
* 3.6: direct reclaim never writes file pages (since 3.2), kswapd only once its
  priority fell below ``DEF_PRIORITY - 2``.

kswapd (:class:`Kswapd`) sleeps until an allocation leaves the zone under
``WMARK_LOW``, then runs ``balance_pgdat``: passes at priorities
``DEF_PRIORITY`` down to 0 until the zone is at ``WMARK_HIGH``, starting over
after a pass that reclaimed ``SWAP_CLUSTER_MAX`` pages, napping ``HZ/10`` between
passes below ``DEF_PRIORITY - 2``; it runs again (``loop_again``) while the zone
is not balanced. A zone whose reclaim scanned ``all_unreclaimable_ratio`` times its
LRU pages without a page being freed is ``all_unreclaimable`` (then reclaim scans
it only at ``DEF_PRIORITY``); any page freed clears that. ``kswapd_failures``
(4.11 on) is counted only where the era has it. Tasks held in
``throttle_direct_reclaim()`` are woken when free memory is back above half of
min, and whenever kswapd goes to sleep.

Simplification: a pass scans ``SWAP_CLUSTER_MAX`` pages whatever the priority
(the kernel scans ``lru_pages >> priority``); clean pages are taken before dirty
ones (no ``page_referenced`` second chance).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional

from .errors import MachineStopped
from .gfp import GFP_KERNEL, Gfp
from .task import PF, TaskStruct, current, task_flags

if TYPE_CHECKING:
    from .manager import MemoryManager

log = logging.getLogger(__name__)

SWAP_CLUSTER_MAX = 32           # pages reclaimed per pass
DEF_PRIORITY = 12               # reclaim passes run at priorities DEF_PRIORITY .. 0
MAX_RECLAIM_RETRIES = 16        # kswapd_failures at which a node is hopeless (4.11 on)
RECLAIM_NAP_S = 0.1             # blk_congestion_wait(WRITE, HZ/10) / congestion_wait(HZ/10)
SLEEP_POLL_S = 0.1


# ---------------------------------------------------------------------- one pass
def may_write_to_queue(mm: "MemoryManager", task: TaskStruct) -> bool:
    """``may_write_to_queue()``: kswapd always; others to an uncongested queue or their own."""
    pc = mm.shrinker
    if task.flags & PF.KSWAPD:          # 2.6.13 current_is_kswapd(); 3.6 PF_SWAPWRITE
        return True
    return not pc.congested() or task.backing_dev_info is pc


def may_pageout(mm: "MemoryManager", task: TaskStruct, gfp: Gfp, priority: int) -> bool:
    """May this reclaim pass start writeback of the dirty pages it scans (era's rule)?"""
    rule = mm.era.reclaim_pageout
    if rule == "off" or mm.shrinker is None or not gfp & Gfp.FS:     # may_enter_fs
        return False
    if rule == "kswapd" and not (task.flags & PF.KSWAPD and priority < DEF_PRIORITY - 2):
        return False
    return may_write_to_queue(mm, task)


def shrink_zone(mm: "MemoryManager", nr_to_reclaim: int, gfp: Gfp, priority: int,
                task: TaskStruct) -> tuple[int, int]:
    """One pass: free clean pages, ``pageout()`` dirty ones if allowed; (scanned, reclaimed).

    The pageout is submitted after the lock is dropped, in the caller's context.
    """
    writepage = may_pageout(mm, task, gfp, priority)
    kswapd = bool(task.flags & PF.KSWAPD)
    pc = mm.shrinker
    with mm.lock:
        if pc is None:
            return 0, 0
        scanned, reclaimed = pc.shrink_locked(nr_to_reclaim)
        dirty = pc.isolate_dirty_locked(nr_to_reclaim - reclaimed) if writepage else []
        mm.pages_scanned += scanned                     # zone->pages_scanned
        vm = mm.vm
        if kswapd:
            vm.pgscan_kswapd += scanned
            vm.pgsteal_kswapd += reclaimed
        else:
            vm.pgscan_direct += scanned
            vm.pgsteal_direct += reclaimed
    if dirty:
        pc.pageout(dirty)
    return scanned, reclaimed


def note_all_unreclaimable_locked(mm: "MemoryManager") -> None:
    """kswapd marks the zone ``all_unreclaimable`` once scanning got nowhere for long enough."""
    lru_pages = mm.shrinker.nr_lru_pages if mm.shrinker is not None else 0
    if mm.pages_scanned >= mm.era.all_unreclaimable_ratio * lru_pages:
        mm.all_unreclaimable = True


# ---------------------------------------------------------------- direct reclaim
def try_to_free_pages(mm: "MemoryManager", nr: int, gfp: Gfp, task: TaskStruct) -> tuple[int, bool]:
    """Direct reclaim under ``PF_MEMALLOC``: (pages reclaimed, did_some_progress).

    ``did_some_progress`` is what decides whether ``out_of_memory()`` may run; it
    follows the era (:data:`~testbed.mm.era.CITATIONS` ``try_to_free_pages``).
    """
    with mm.lock:
        mm.vm.allocstall += 1
    with task_flags(PF.MEMALLOC):       # __alloc_pages: p->flags |= PF_MEMALLOC
        if mm.era.try_to_free_pages == "2.6.13":
            reclaimed = _sweep_2_6_13(mm, gfp, task)    # wakes pdflush itself
            progress = reclaimed >= SWAP_CLUSTER_MAX
        else:
            scanned, reclaimed = shrink_zone(mm, max(nr, SWAP_CLUSTER_MAX), gfp, DEF_PRIORITY, task)
            with mm.lock:
                progress = reclaimed > 0 or not mm.all_unreclaimable
            _wake_flusher(mm, scanned)  # wakeup_flusher_threads(total_scanned)
    _note_progress(mm, reclaimed)
    return reclaimed, progress


def _wake_flusher(mm: "MemoryManager", total_scanned: int) -> None:
    """Reclaim that scanned more than 1.5 x SWAP_CLUSTER_MAX asks the flusher to write."""
    if total_scanned > SWAP_CLUSTER_MAX + SWAP_CLUSTER_MAX // 2 and mm.flusher is not None:
        mm.flusher.wakeup(total_scanned)


def _sweep_2_6_13(mm: "MemoryManager", gfp: Gfp, task: TaskStruct) -> int:
    """2.6.13 ``try_to_free_pages``: priorities DEF_PRIORITY..0 until SWAP_CLUSTER_MAX
    pages; the pages reclaimed."""
    total_reclaimed = total_scanned = 0
    for priority in range(DEF_PRIORITY, -1, -1):
        with mm.lock:
            skip = mm.all_unreclaimable and priority != DEF_PRIORITY
        scanned = reclaimed = 0
        if not skip:
            scanned, reclaimed = shrink_zone(mm, SWAP_CLUSTER_MAX, gfp, priority, task)
        total_scanned += scanned
        total_reclaimed += reclaimed
        if total_reclaimed >= SWAP_CLUSTER_MAX:
            break                                       # goto out: no wakeup_pdflush
        _wake_flusher(mm, total_scanned)                # wakeup_pdflush(total_scanned)
        if scanned and priority < DEF_PRIORITY - 2:
            mm.congestion_wait(RECLAIM_NAP_S)          # blk_congestion_wait(WRITE, HZ/10)
            mm.check_stopping()
    return total_reclaimed


def _note_progress(mm: "MemoryManager", reclaimed: int) -> None:
    """Progress resets the node's failure count, where the era counts failures."""
    if reclaimed and mm.era.kswapd_failures:
        with mm.lock:
            mm.vm.kswapd_failures = 0


# ------------------------------------------------------------------------ kswapd
class Kswapd(threading.Thread):
    """The zone's kswapd thread."""

    def __init__(self, mm: "MemoryManager", retry_wait_s: float = RECLAIM_NAP_S) -> None:
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

    def balanced_locked(self) -> bool:
        zone = self.mm.zone
        return zone.free >= zone.wmark_high

    def balance_pgdat(self) -> None:
        """Reclaim until the zone is at ``WMARK_HIGH`` (or, from 4.11, the node is hopeless)."""
        mm = self.mm
        while not mm.stopping:                              # loop_again
            with mm.lock:
                if self.balanced_locked() or mm.hopeless_locked():
                    return
            reclaimed, scanned = self._run()
            if reclaimed:
                continue
            with mm.lock:
                if mm.era.kswapd_failures and not self.balanced_locked():
                    mm.vm.kswapd_failures += 1              # once per balance_pgdat run
            if not scanned:                 # nothing on the LRU at all: do not spin
                mm.congestion_wait(self.retry_wait_s)

    def _run(self) -> tuple[int, int]:
        """One sweep of priorities, until balanced: (pages reclaimed, pages scanned)."""
        mm = self.mm
        task = current()
        total_scanned = total_reclaimed = 0
        for priority in range(DEF_PRIORITY, -1, -1):
            with mm.lock:
                if self.balanced_locked():
                    break
                skip = mm.all_unreclaimable and priority != DEF_PRIORITY
            scanned = reclaimed = 0
            if not skip:
                scanned, reclaimed = shrink_zone(mm, SWAP_CLUSTER_MAX, GFP_KERNEL, priority, task)
            total_scanned += scanned
            total_reclaimed += reclaimed
            with mm.lock:
                if not reclaimed:
                    note_all_unreclaimable_locked(mm)
                if mm.allow_direct_reclaim_locked():
                    mm.pfmemalloc_wait.notify_all()
            if reclaimed >= SWAP_CLUSTER_MAX:
                break                                       # start over at DEF_PRIORITY
            if total_scanned and priority < DEF_PRIORITY - 2:
                mm.congestion_wait(self.retry_wait_s)       # blk_congestion_wait(WRITE, HZ/10)
        _note_progress(mm, total_reclaimed)
        return total_reclaimed, total_scanned
