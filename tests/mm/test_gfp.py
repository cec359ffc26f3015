"""Which gfp class may take which page, under each policy.

The zone is brought to a chosen number of free pages with nothing reclaimable;
then one page is requested in each class. Sleeping classes use __GFP_NORETRY
(one reclaim attempt, then fail) and run as a kernel thread, so that neither the
retry loop nor throttle_direct_reclaim keeps them waiting: this test is about
watermarks only. Expected, with min the zone's min watermark (which the
Phillips-style policies raise by the reserve of the registered device):

  GFP_KERNEL, GFP_NOIO      down to min            (slow path, no reserves)
  GFP_NOWAIT                down to 3/4 min        (ALLOC_HARDER)
  GFP_ATOMIC                down to 3/8 min        (ALLOC_HIGH + ALLOC_HARDER)
  __GFP_MEMALLOC, PF_MEMALLOC  down to zero        (ALLOC_NO_WATERMARKS)
  ... | __GFP_NOMEMALLOC    never the reserves
"""

from __future__ import annotations

import pytest

from testbed.mm import (GFP_ATOMIC, GFP_KERNEL, GFP_NOIO, GFP_NOWAIT, PF, POLICIES, Gfp,
                        MemoryManager, Use, task_flags)
from testbed.mm.gfp import gfp_class

from .conftest import clean_cache, set_free

KTHREAD = PF.KTHREAD


def floor_of(case: str, wmin: int) -> int:
    """The lowest free count an allocation of this case may leave."""
    return {
        "kernel": wmin, "noio": wmin,
        "nowait": wmin - wmin // 4,
        "atomic": (wmin - wmin // 2) - (wmin - wmin // 2) // 4,
        "memalloc": 0, "pf_memalloc": 0, "pf_memalloc_kernel": 0,
        "atomic_nomemalloc": (wmin - wmin // 2) - (wmin - wmin // 2) // 4,
        "pf_memalloc_nomemalloc": (wmin - wmin // 2) - (wmin - wmin // 2) // 4,
    }[case]


def try_one(mm: MemoryManager, case: str) -> bool:
    if case == "kernel":
        with task_flags(KTHREAD):
            return mm.alloc_pages(1, GFP_KERNEL | Gfp.NORETRY)
    if case == "noio":
        with task_flags(KTHREAD):
            return mm.alloc_pages(1, GFP_NOIO | Gfp.NORETRY)
    if case == "nowait":
        return mm.alloc_pages(1, GFP_NOWAIT)
    if case == "atomic":
        return mm.alloc_pages(1, GFP_ATOMIC)
    if case == "memalloc":
        return mm.alloc_pages(1, GFP_ATOMIC | Gfp.MEMALLOC)
    if case == "atomic_nomemalloc":
        return mm.alloc_pages(1, GFP_ATOMIC | Gfp.NOMEMALLOC)
    if case == "pf_memalloc":
        with task_flags(PF.MEMALLOC):
            return mm.alloc_pages(1, GFP_ATOMIC)
    if case == "pf_memalloc_kernel":
        with task_flags(PF.MEMALLOC):
            return mm.alloc_pages(1, GFP_KERNEL)      # PF_MEMALLOC never sleeps in reclaim
    if case == "pf_memalloc_nomemalloc":
        with task_flags(PF.MEMALLOC):
            return mm.alloc_pages(1, GFP_ATOMIC | Gfp.NOMEMALLOC)
    raise AssertionError(case)


CASES = ["kernel", "noio", "nowait", "atomic", "memalloc", "atomic_nomemalloc",
         "pf_memalloc", "pf_memalloc_kernel", "pf_memalloc_nomemalloc"]


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("case", CASES)
def test_gfp_class_floor(policy, case):
    mm = MemoryManager(16384, policy=policy)
    mm.register_netdev("eth0", 1500)            # Phillips-style policies add their reserve
    wmin = mm.zone.wmark_min
    floor = floor_of(case, wmin)
    levels = sorted({floor + 1, floor, max(floor - 1, 0), wmin + 1, wmin, wmin // 2, 1, 0,
                     mm.zone.wmark_low + 5})
    for free in levels:
        set_free(mm, free)
        got = try_one(mm, case)
        assert got == (free - 1 >= floor), f"{policy} {case}: free={free} floor={floor} got={got}"
        if got:
            mm.free_pages(1, Use.KERNEL)
    assert mm.check_invariants() == []


def test_failures_are_counted_per_class():
    mm = MemoryManager(16384, policy="none")
    set_free(mm, 50)                            # under 3/8 min (96)
    assert not mm.alloc_pages(1, GFP_ATOMIC)
    assert not mm.alloc_pages(1, GFP_NOWAIT | Gfp.NOWARN)
    with task_flags(KTHREAD):
        assert not mm.alloc_pages(1, GFP_KERNEL | Gfp.NORETRY)
        assert not mm.alloc_pages(1, GFP_NOIO | Gfp.NORETRY)
    set_free(mm, 0)
    assert not mm.alloc_pages(1, Gfp.MEMALLOC)
    assert mm.vm.alloc_fail == {"kernel": 1, "nofs": 0, "noio": 1, "nowait": 1, "atomic": 1, "memalloc": 1}
    assert mm.vm.alloc_fail_warn == 4           # the __GFP_NOWARN one is not reported


def test_gfp_class_names():
    assert gfp_class(GFP_KERNEL) == "kernel"
    assert gfp_class(GFP_NOIO) == "noio"
    assert gfp_class(GFP_ATOMIC) == "atomic"
    assert gfp_class(GFP_NOWAIT) == "nowait"
    assert gfp_class(GFP_ATOMIC, no_watermarks=True) == "memalloc"


def test_memalloc_noio_scope_strips_io_and_fs():
    from testbed.mm.task import current, current_gfp_context
    with task_flags(PF.MEMALLOC_NOIO) as task:
        assert task is current()
        assert current_gfp_context(GFP_KERNEL, task) == GFP_NOIO
    assert not current().flags & PF.MEMALLOC_NOIO


def test_a_sleeping_allocation_reclaims_clean_page_cache(disk):
    mm = MemoryManager(16384, policy="none")
    pc = clean_cache(mm, disk, 64)
    set_free(mm, mm.zone.wmark_min)             # GFP_KERNEL cannot take the next page ...
    assert mm.alloc_pages(1, GFP_KERNEL)        # ... until direct reclaim frees clean ones
    assert mm.vm.allocstall == 1 and mm.vm.pgsteal_direct == 32
    assert pc.nr_reclaimable == 32
    assert mm.check_invariants() == []
