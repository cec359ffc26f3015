"""TCP's global limit, ``net.ipv4.tcp_mem``: its size per era (``tcp_init()``), the charge
of received segments (``sk_rmem_schedule()``), pressure, and 3.6's pfmemalloc exemption."""

from __future__ import annotations

import pytest

from testbed.mm import MemoryManager
from testbed.mm.era import PROFILES
from testbed.mm.skbuff import DropReason
from testbed.mm.sock import tcp_mem_limits

MIB = 256       # pages


@pytest.mark.parametrize("kernel, mib, limits", [
    # 2.6.13 (i386): {768, 1024, 1536} << order; the bind hash is one page up to 32 MiB
    ("2.6.13", 16, (768, 1024, 1536)), ("2.6.13", 32, (768, 1024, 1536)),
    ("2.6.13", 48, (768, 1024, 1536)), ("2.6.13", 64, (1536, 2048, 3072)),
    ("2.6.13", 128, (3072, 4096, 6144)),
    # 3.6: an eighth of memory is tcp_mem[1]
    ("3.6", 16, (384, 512, 768)), ("3.6", 32, (768, 1024, 1536)),
    ("3.6", 128, (3072, 4096, 6144)), ("3.6", 2, (96, 128, 192)),   # at least 128
])
def test_tcp_mem_is_sized_as_each_eras_tcp_init_does(kernel, mib, limits):
    assert tcp_mem_limits(PROFILES[kernel], mib * MIB) == limits


def machine(policy: str, mib: int = 16):
    mm = MemoryManager(mib * MIB, policy=policy)
    return mm, mm.register_netdev("eth0", 1500)


def fill(mm, dev, sk, frames: int, pfmemalloc: bool = False) -> list:
    """Deliver up to ``frames`` full-size segments to ``sk``, unread; the refusals."""
    refused = []
    for _ in range(frames):
        skb = mm.netdev_alloc_skb(dev, 1514)
        skb.pfmemalloc = pfmemalloc
        reason = mm.tcp_rmem_schedule(sk, skb)
        if reason is None:
            sk.queue_rcv(skb, 1448)
        else:
            refused.append(reason)
            mm.kfree_skb(skb)
    return refused


# Full-size segments that fill tcp_mem[2] on a 32 MiB machine in either era, once 2.6.13's
# collapses have packed them (1,536 pages of 4,160-byte truesize hold ~4,000 of them)
FILL = 6000


@pytest.mark.parametrize("policy", ["none", "phillips-2005", "gorman-3.6"])
def test_an_unread_socket_is_refused_past_tcp_mem_and_the_limit_comes_back(policy):
    mm, dev = machine(policy, mib=32)
    sk = mm.sock_create("download")
    low, pressure, high = mm.tcp_mem
    refused = fill(mm, dev, sk, FILL)
    assert refused and set(refused) == {DropReason.PROTO_MEM}
    # refused, TCP first collapsed the queue: 2.6.13 calls every fresh skb bloated; 3.6
    # (tcp_adv_win_scale 1) calls a full segment in a fragment dense, and none was read
    assert (mm.vm.TCPRcvCollapsed > 0) == (mm.era.kernel == "2.6.13")
    assert mm.vm.drops[DropReason.PROTO_MEM] == len(refused)
    # the count stops at the hard limit (a charge past it is undone)
    assert high - 1 <= mm.tcp_memory_allocated <= high
    assert mm.tcp_memory_pressure and mm.vm.TCPMemoryPressures == 1
    assert mm.snapshot()["tcp_mem_pages"] == mm.tcp_memory_allocated
    # the reader reads it all: the pages go back and pressure ends under tcp_mem[0]
    sk.consume(sk.rmem_alloc)   # more than queued: everything
    assert mm.tcp_memory_allocated == 0 and not mm.tcp_memory_pressure
    assert fill(mm, dev, sk, 10) == []
    sk.close()
    assert mm.tcp_memory_allocated == 0


def test_under_pressure_the_socket_past_its_share_is_refused_not_the_one_that_reads():
    """Between tcp_mem[1] and [2] a socket holding more than its share of tcp_mem[2]
    (shared by the sockets TCP has) is refused; one below tcp_rmem[0] (the storage
    socket whose reader keeps up) still gets its segment."""
    mm, dev = machine("none")
    hog, storage = mm.sock_create("download"), mm.sock_create("iscsi")
    low, pressure, high = mm.tcp_mem
    while mm.tcp_memory_allocated <= pressure:
        assert fill(mm, dev, hog, 1) == []
    assert mm.tcp_memory_pressure
    assert fill(mm, dev, storage, 1) == []
    # two sockets now: the hog's share is half of tcp_mem[2]; its collapses keep it
    # under that for a while, then it is refused
    refused = fill(mm, dev, hog, FILL)
    assert refused and set(refused) == {DropReason.PROTO_MEM}
    assert 2 * (hog.rmem_alloc + 4096) > high * 4096
    assert mm.tcp_memory_allocated <= high
    storage.consume(storage.rmem_alloc)
    assert fill(mm, dev, storage, 1) == []


@pytest.mark.parametrize("policy, passes", [("phillips-2005", False), ("gorman-3.6", True)])
def test_a_pfmemalloc_skb_passes_the_limit_only_from_3_6(policy, passes):
    """c76562b6709f: without it the memalloc socket could not receive once other sockets
    had filled tcp_mem; 2.6.13 has no such exemption (for any skb)."""
    mm, dev = machine(policy, mib=32)
    fill(mm, dev, mm.sock_create("download"), FILL)
    storage = mm.sock_create("iscsi")
    # 2.6.13: its first segment fits in the page under tcp_mem[2]; the collapse of that
    # one bloated skb makes room for a second; every later one is refused
    refused = fill(mm, dev, storage, 6, pfmemalloc=True)
    assert (refused == []) if passes else len(refused) == 4


@pytest.mark.parametrize("policy", ["reserve-only", "gorman-3.6"])
def test_asking_whether_a_segment_would_be_refused_agrees_and_changes_nothing(policy):
    """``Sock.rmem_refused_locked`` (the lockup detector's question) gives
    ``sk_rmem_schedule``'s verdict without charging, entering or leaving pressure."""
    mm, dev = machine(policy, mib=32)
    downloads = [mm.sock_create(f"download{i}") for i in (1, 2, 3)]
    storage = mm.sock_create("iscsi")
    storage.set_memalloc()
    checked = 0
    for sk in downloads:
        for _ in range(1200):
            skb = mm.netdev_alloc_skb(dev, 1514)
            with mm.lock:
                before = (mm.tcp_memory_allocated, mm.tcp_memory_pressure, sk.forward_alloc,
                          mm.vm.TCPMemoryPressures)
                asked = sk.rmem_refused_locked(skb.truesize, skb.pfmemalloc)
                assert before == (mm.tcp_memory_allocated, mm.tcp_memory_pressure,
                                  sk.forward_alloc, mm.vm.TCPMemoryPressures)
            refused = mm.tcp_rmem_schedule(sk, skb) is not None
            assert asked == refused
            checked += refused
            if refused:
                mm.kfree_skb(skb)
            else:
                sk.queue_rcv(skb, 1448)
    assert checked > 100        # the refusals were asked too, not only the charges
    with mm.lock:
        assert mm.tcp_memory_allocated > mm.tcp_mem[2] - 2
        assert storage.rmem_refused_locked(dev.truesize, False)
        # 3.6 lets a pfmemalloc skb past the limit; 2.6.13 does not
        assert storage.rmem_refused_locked(dev.truesize, True) == (policy == "reserve-only")
