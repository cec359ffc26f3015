"""The consumed list: frees batched into the next allocation's lock, decisions unchanged.

The packet handler's I/O thread does not free the skb of a finished frame at once: it
hands it back with its next allocation (``consumed=``) or with ``kfree_skb_list``. These
tests run the same frames twice, one free at a time and with the consumed list, near the
GFP_ATOMIC floor so that refills fail and frames find the ring empty, and require the
same outcome for every frame and the same memory afterwards.
"""

from __future__ import annotations

import random

import pytest

from testbed.mm import DropReason, MemoryManager, MMError, Skb

from .conftest import set_free

POLICIES = ("none", "reserve-only", "phillips-2005", "gorman-3.6")


def run(policy: str, seed: int, batched: bool) -> tuple[list, dict]:
    """Frames in and out of a squeezed NIC; each outcome with the ring and zone after it."""
    rng = random.Random(seed)
    mm = MemoryManager(4096, policy=policy)
    dev = mm.register_netdev("eth0", 1500, rx_ring=8)
    sk = mm.sock_create("iscsi")
    if rng.random() < 0.5:
        sk.set_memalloc()
    set_free(mm, mm.zone.mark_atomic + rng.randrange(0, 24))
    held: list[Skb] = []            # skbs a socket keeps until its reader reads them
    done: list[Skb] = []
    trace = []
    for _ in range(400):
        length = rng.choice((60, 1514, 1514, 4000))
        consumed = done if batched else None
        if rng.random() < 0.7:
            skb = mm.netdev_alloc_skb(dev, length, consumed)
        else:
            skb = mm.alloc_tx_skb(dev, length, sk if rng.random() < 0.5 else None, consumed)
        trace.append((skb.name if isinstance(skb, DropReason) else "skb", len(dev.ring),
                      dev.alloc_rx_buff_failed, mm.zone.free))
        if isinstance(skb, Skb):
            if rng.random() < 0.3:
                held.append(skb)
            elif batched:
                done.append(skb)
            else:
                mm.kfree_skb(skb)
        if held and rng.random() < 0.25:
            mm.kfree_skb(held.pop(0))       # a reader reads: freed by another thread
        if rng.random() < 0.05 and batched:     # (both runs draw the same numbers)
            mm.kfree_skb_list(done)         # an end of the I/O loop ran dry
    mm.kfree_skb_list(done)
    assert done == []
    for skb in held:
        mm.kfree_skb(skb)
    assert mm.check_invariants() == []
    snap = mm.snapshot()
    return trace, snap


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(4))
def test_consumed_frees_keep_the_one_at_a_time_outcomes(policy, seed):
    plain, plain_mem = run(policy, seed, batched=False)
    batched, batched_mem = run(policy, seed, batched=True)
    kinds = {t[0] for t in plain}
    assert "skb" in kinds and len(kinds) > 1, kinds     # some frames did fail: a real test
    assert batched == plain
    assert batched_mem == plain_mem


def test_kfree_skb_list_frees_in_one_lock_and_reports_a_double_free():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0", 1500, rx_ring=4)
    free = mm.zone.free
    skbs = [mm.alloc_tx_skb(dev, 1514, None) for _ in range(3)]
    first = skbs[0]
    mm.kfree_skb_list(skbs)
    assert skbs == [] and mm.zone.free == free
    again = [first, mm.alloc_tx_skb(dev, 1514, None)]
    with pytest.raises(MMError, match="eth0"):
        mm.kfree_skb_list(again)            # the double free is named, the other freed
    assert again == [] and mm.zone.free == free
    assert mm.check_invariants() == []
