"""throttle_direct_reclaim (gorman-3.6): direct reclaimers wait while free <= min/2."""

from __future__ import annotations

import threading
import time

import pytest

from testbed.mm import GFP_KERNEL, GFP_NOIO, PF, Gfp, MemoryManager, task_flags
from testbed.mm.vmscan import Kswapd

from .conftest import clean_cache, set_free


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Alloc(threading.Thread):
    """One allocation on its own thread; result and duration kept."""

    def __init__(self, mm, gfp, flags=PF(0)):
        super().__init__(daemon=True)
        self.mm, self.gfp, self.flags = mm, gfp, flags
        self.result = None
        self.elapsed = None

    def run(self):
        t = time.monotonic()
        with task_flags(self.flags):
            self.result = self.mm.alloc_pages(1, self.gfp)
        self.elapsed = time.monotonic() - t


def test_allow_direct_reclaim_at_half_of_min():
    mm = MemoryManager(16384, policy="gorman-3.6")       # min 256
    set_free(mm, 128)
    with mm.lock:
        assert not mm.allow_direct_reclaim_locked()
    set_free(mm, 129)
    with mm.lock:
        assert mm.allow_direct_reclaim_locked()


def test_gfp_kernel_waits_until_free_is_above_half_min():
    mm = MemoryManager(16384, policy="gorman-3.6")
    set_free(mm, 128)
    task = Alloc(mm, GFP_KERNEL)
    task.start()
    wait_for(lambda: mm.vm.nr_throttled_reclaim == 1)
    assert mm.vm.pgscan_direct_throttle == 1
    time.sleep(0.3)
    assert task.is_alive()                               # still held: free <= min/2
    set_free(mm, 300)                                    # memory came back ...
    with mm.lock:
        mm.pfmemalloc_wait.notify_all()                  # ... and kswapd wakes the waiters
    task.join(5)
    assert task.result is True and mm.vm.nr_throttled_reclaim == 0
    assert mm.check_invariants() == []


def test_nofs_callers_wait_at_most_one_second():
    mm = MemoryManager(16384, policy="gorman-3.6")
    set_free(mm, 100)
    task = Alloc(mm, GFP_NOIO | Gfp.NORETRY)             # !__GFP_FS: at most HZ
    task.start()
    task.join(5)
    assert task.result is False                          # nothing to reclaim after the wait
    assert 0.9 <= task.elapsed < 2.0
    assert mm.vm.pgscan_direct_throttle == 1


def test_kernel_threads_are_not_throttled():
    mm = MemoryManager(16384, policy="gorman-3.6")
    set_free(mm, 100)
    task = Alloc(mm, GFP_KERNEL | Gfp.NORETRY, PF.KTHREAD)
    task.start()
    task.join(5)
    assert task.result is False and task.elapsed < 0.5
    assert mm.vm.pgscan_direct_throttle == 0


@pytest.mark.parametrize("policy", ["none", "reserve-only", "phillips-2005", "phillips-2005-threshold"])
def test_other_policies_never_throttle(policy):
    mm = MemoryManager(16384, policy=policy)
    set_free(mm, 10)
    task = Alloc(mm, GFP_KERNEL | Gfp.NORETRY)
    task.start()
    task.join(5)
    assert task.result is False and task.elapsed < 0.5
    assert mm.vm.pgscan_direct_throttle == 0


def test_kswapd_reclaims_and_wakes_the_throttled(disk):
    mm = MemoryManager(16384, policy="gorman-3.6")
    clean_cache(mm, disk, 2000)
    kswapd = Kswapd(mm)
    set_free(mm, 120)                                    # under min/2, kswapd not yet woken
    task = Alloc(mm, GFP_KERNEL)
    task.start()
    wait_for(lambda: mm.vm.nr_throttled_reclaim == 1)   # throttled; kswapd was woken ...
    kswapd.start()
    try:
        task.join(5)                                     # ... reclaims to high and wakes it
        assert task.result is True
        assert mm.vm.pgscan_direct_throttle == 1
        assert mm.vm.pgsteal_kswapd > 0
        wait_for(lambda: mm.zone.free >= mm.zone.wmark_high - 1)
    finally:
        mm.shutdown()
        kswapd.join(5)
    assert not kswapd.is_alive() and mm.check_invariants() == []


def test_a_throttled_task_gives_up_when_the_machine_stops():
    mm = MemoryManager(16384, policy="gorman-3.6")
    set_free(mm, 0)
    errors = []

    def run():
        try:
            mm.alloc_pages(1, GFP_KERNEL)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: mm.vm.nr_throttled_reclaim == 1)
    t = time.monotonic()
    mm.shutdown()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - t < 1.0
    assert type(errors[0]).__name__ == "MachineStopped"
    assert mm.vm.nr_throttled_reclaim == 0 and mm.vm.nr_alloc_stalled == 0
