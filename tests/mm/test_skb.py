"""The receive and transmit paths under each policy, and the socket API."""

from __future__ import annotations

import pytest

from testbed.mm import DropReason, MemoryManager, MMError, Skb, Use, estimate_skb_pages
from testbed.mm.skbuff import (ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, SKB_HEADS_PER_SLAB,
                               ceiling_log2, kmalloc_size, rx_buffer_len)

from .conftest import set_free

ETH_P_LLDP = 0x88CC


# --------------------------------------------------------------- sizing
def test_estimate_skb_pages_worked_example():
    # e1000, 2048-byte buffers: 2050 + 16 -> 4096-byte blocks: 50 data pages + 3 head pages
    assert estimate_skb_pages(50, 2050) == 53


@pytest.mark.parametrize("num, size, pages", [
    (50, 1514, 25 + 3),         # 1530 -> 2048 bytes: two per page
    (1, 2032, 1 + 1),           # 2048 exactly: ceiling_log2 keeps a power of two
    (2, 2032, 1 + 1),
    (1, 2033, 1 + 1),           # 2049 -> 4096
    (2, 2033, 2 + 1),
    (22, 100, 1 + 2),           # 22 heads need two slab pages of 21
    (0, 1500, 0),
])
def test_estimate_skb_pages(num, size, pages):
    assert estimate_skb_pages(num, size) == pages


def test_ceiling_log2_is_fls_of_x_minus_one():
    assert [ceiling_log2(x) for x in (1, 2, 3, 4, 5, 2048, 2049)] == [0, 1, 2, 2, 3, 11, 12]
    assert kmalloc_size(2050) == 4096 and kmalloc_size(2032) == 2048


def test_rx_buffer_follows_e1000():
    assert rx_buffer_len(1500) == 2048
    assert rx_buffer_len(9000) == 16384


def test_estimate_rejects_nonsense():
    with pytest.raises(ValueError, match="estimate_skb_pages"):
        estimate_skb_pages(-1, 1500)


# ---------------------------------------------------------- netdev reserve
@pytest.mark.parametrize("policy, reserve", [
    ("none", 0), ("reserve-only", 53), ("phillips-2005", 53), ("phillips-2005-threshold", 53),
    ("gorman-3.6", 0)])
def test_register_netdev_adds_the_policy_reserve(policy, reserve):
    mm = MemoryManager(16384, policy=policy)
    dev = mm.register_netdev("eth0", 1500)
    assert dev.reserve_pages == reserve
    assert mm.zone.wmark_min == 256 + reserve
    mm.unregister_netdev(dev)
    assert mm.zone.wmark_min == 256 and dev.reserve_pages == 0


def test_reserve_pages_override_and_bad_netdevs():
    mm = MemoryManager(16384, policy="phillips-2005", reserve_pages=100)
    dev = mm.register_netdev("eth0")
    assert dev.reserve_pages == 100
    with pytest.raises(MMError, match="already registered"):
        mm.register_netdev("eth0")
    with pytest.raises(MMError, match="mtu 10"):
        mm.register_netdev("eth1", 10)
    with pytest.raises(MMError, match="length 0"):
        mm.netdev_alloc_skb(dev, 0)
    mm.unregister_netdev(dev)
    with pytest.raises(MMError, match="not registered"):
        mm.unregister_netdev(dev)


# ------------------------------------------------------------- helpers
def below_atomic(policy: str, **kw):
    """A manager with eth0 up and free pages just under GFP_ATOMIC's reach."""
    mm = MemoryManager(16384, policy=policy, **kw)
    dev = mm.register_netdev("eth0", 1500)
    set_free(mm, mm.zone.mark_atomic + 1)       # one page short for data + a head page
    return mm, dev


def test_above_the_atomic_mark_every_policy_allocates_normally():
    for policy in ("none", "reserve-only", "phillips-2005", "phillips-2005-threshold", "gorman-3.6"):
        mm = MemoryManager(16384, policy=policy)
        dev = mm.register_netdev("eth0")
        skb = mm.netdev_alloc_skb(dev, 1514)
        assert isinstance(skb, Skb) and not skb.pfmemalloc and not skb.reserve
        assert mm.used[Use.SKB] == 2                # one data page + one head slab page
        mm.kfree_skb(skb)
        assert mm.used[Use.SKB] == 0 and mm.check_invariants() == []


def test_none_drops_under_three_eighths_of_min():
    mm, dev = below_atomic("none")
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()                               # makes no difference in 2005 vanilla
    assert mm.netdev_alloc_skb(dev, 1514) is DropReason.NOMEM
    assert mm.vm.drops[DropReason.NOMEM] == 1 and mm.vm.alloc_fail["atomic"] == 1


def test_reserve_only_lets_any_frame_drain_the_reserve():
    mm, dev = below_atomic("reserve-only")
    skbs = []
    while True:
        r = mm.netdev_alloc_skb(dev, 1514)
        if not isinstance(r, Skb):
            break
        assert r.reserve
        assert mm.sk_filter(r, None, ETH_P_IP) is None      # no protocol-level drop
        skbs.append(r)
    assert r is DropReason.NOMEM and mm.zone.free <= 1      # drained to the bottom
    assert dev.rx_reserve_used == len(skbs) > 50
    for skb in skbs:
        mm.kfree_skb(skb)
    assert dev.rx_reserve_used == 0 and mm.check_invariants() == []


def test_phillips_caps_reserve_skbs_per_device_at_rx_reserve():
    mm, dev = below_atomic("phillips-2005")
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(50)]
    assert all(isinstance(s, Skb) and s.reserve for s in skbs)
    assert dev.rx_reserve_used == 50
    assert mm.netdev_alloc_skb(dev, 1514) is DropReason.RESERVE_CAP
    mm.kfree_skb(skbs.pop())                        # dev_memfree_skb: credit back
    assert dev.rx_reserve_used == 49
    again = mm.netdev_alloc_skb(dev, 1514)
    assert isinstance(again, Skb) and again.reserve and dev.rx_reserve_used == 50
    # a second device has its own cap
    dev2 = mm.register_netdev("eth1")
    assert isinstance(mm.netdev_alloc_skb(dev2, 1514), Skb) and dev2.rx_reserve_used == 1


def test_phillips_cap_follows_rx_reserve():
    mm, dev = below_atomic("phillips-2005", rx_reserve=5)
    assert dev.rx_reserve == 5
    assert all(isinstance(mm.netdev_alloc_skb(dev, 1514), Skb) for _ in range(5))
    assert mm.netdev_alloc_skb(dev, 1514) is DropReason.RESERVE_CAP


def test_phillips_drops_non_memalloc_while_the_device_is_in_reserve():
    mm, dev = below_atomic("phillips-2005")
    bulk, iscsi = mm.sock_create("bulk"), mm.sock_create("iscsi")
    iscsi.set_memalloc()
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(3)]
    assert mm.sk_filter(skbs[0], bulk, ETH_P_IP) is DropReason.NOT_MEMALLOC
    assert dev.rx_reserve_used == 2                 # dev_unreserve once per packet
    assert mm.sk_filter(skbs[1], iscsi, ETH_P_IP) is None
    assert dev.rx_reserve_used == 1
    assert mm.sk_filter(skbs[2], None, ETH_P_IP) is DropReason.NOT_MEMALLOC   # ICMP, no socket
    assert dev.rx_reserve_used == 0
    for skb in skbs:                                # freeing does not credit twice
        mm.kfree_skb(skb)
    assert dev.rx_reserve_used == 0
    assert mm.vm.drops[DropReason.NOT_MEMALLOC] == 2


def test_phillips_state_is_per_device_not_per_packet():
    mm = MemoryManager(16384, policy="phillips-2005")
    dev = mm.register_netdev("eth0")
    normal = mm.netdev_alloc_skb(dev, 1514)         # plenty of memory: a normal skb
    assert not normal.reserve
    dev.rx_reserve_used = 3                         # some reserve skbs outstanding on eth0
    assert mm.sk_filter(normal, mm.sock_create("bulk"), ETH_P_IP) is DropReason.NOT_MEMALLOC


def test_phillips_leaves_arp_and_ipv6_alone():
    mm, dev = below_atomic("phillips-2005")
    skb = mm.netdev_alloc_skb(dev, 60)
    bulk = mm.sock_create("bulk")
    assert mm.sk_filter(skb, None, ETH_P_ARP) is None
    assert mm.sk_filter(skb, bulk, ETH_P_IPV6) is None
    assert dev.rx_reserve_used == 1


@pytest.mark.parametrize("threshold, fraction_taken, dropped", [
    (0.5, 0.55, True), (0.5, 0.4, False), (0.5, 0.0, False), (0.0, 0.0, True),
    (1.0, 0.95, False)])
def test_threshold_variant_drops_only_past_the_fraction_of_the_reserve(
        threshold, fraction_taken, dropped):
    """Non-memalloc packets are kept while the pages taken below the GFP_ATOMIC floor (the
    reserve: only __GFP_MEMALLOC goes there) are at most threshold of it; dropped beyond."""
    mm, dev = below_atomic("phillips-2005-threshold", threshold=threshold)
    floor = mm.zone.mark_atomic
    set_free(mm, floor - int(fraction_taken * floor))
    skb = mm.netdev_alloc_skb(dev, 1514)          # from the reserve: 1 data page (+ a head page)
    taken = floor - mm.zone.free
    assert skb.reserve and taken <= int(fraction_taken * floor) + 2
    verdict = mm.sk_filter(skb, mm.sock_create("bulk"), ETH_P_IP)
    assert verdict is (DropReason.NOT_MEMALLOC if dropped else None)
    assert (taken > threshold * floor) is dropped
    assert dev.rx_reserve_used == 0               # credited back by the protocol step either way


def test_gorman_uses_pfmemalloc_only_once_a_socket_is_memalloc():
    mm, dev = below_atomic("gorman-3.6")
    assert not mm.sk_memalloc_socks()
    assert mm.netdev_alloc_skb(dev, 1514) is DropReason.NOMEM       # no reserves yet
    iscsi = mm.sock_create("iscsi")
    iscsi.set_memalloc()
    assert mm.sk_memalloc_socks()
    skb = mm.netdev_alloc_skb(dev, 1514)
    assert isinstance(skb, Skb) and skb.pfmemalloc and dev.rx_reserve_used == 1
    iscsi.clear_memalloc()
    assert mm.netdev_alloc_skb(dev, 1514) is DropReason.NOMEM
    mm.kfree_skb(skb)
    assert dev.rx_reserve_used == 0


def test_gorman_sk_filter_drops_pfmemalloc_for_other_sockets():
    mm, dev = below_atomic("gorman-3.6")
    iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
    iscsi.set_memalloc()
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(5)]
    assert all(s.pfmemalloc for s in skbs)
    assert mm.sk_filter(skbs[0], iscsi, ETH_P_IP) is None
    assert mm.sk_filter(skbs[1], bulk, ETH_P_IP) is DropReason.PFMEMALLOC
    assert mm.vm.PFMemallocDrop == 1
    assert mm.sk_filter(skbs[2], None, ETH_P_ARP) is None
    assert mm.sk_filter(skbs[3], iscsi, ETH_P_8021Q) is None
    assert mm.sk_filter(skbs[4], iscsi, ETH_P_LLDP) is DropReason.PFMEMALLOC_PROTO
    assert mm.vm.PFMemallocDrop == 1
    # a normal skb is never filtered
    set_free(mm, 5000)
    normal = mm.netdev_alloc_skb(dev, 1514)
    assert not normal.pfmemalloc and mm.sk_filter(normal, bulk, ETH_P_LLDP) is None


def test_gorman_reserve_is_the_region_under_min():
    mm, dev = below_atomic("gorman-3.6")
    mm.sock_create("iscsi").set_memalloc()
    skbs = []
    while isinstance(r := mm.netdev_alloc_skb(dev, 1514), Skb):
        skbs.append(r)
    assert r is DropReason.NOMEM and mm.zone.free <= 1 and mm.vm.alloc_fail["memalloc"] == 1


def test_transmit_memalloc_socket_may_use_reserves_others_may_not():
    for policy in ("none", "phillips-2005", "gorman-3.6"):
        mm, dev = below_atomic(policy)
        iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
        iscsi.set_memalloc()
        assert mm.alloc_tx_skb(dev, 1514, bulk) is DropReason.NOMEM
        tx = mm.alloc_tx_skb(dev, 1514, iscsi)
        assert isinstance(tx, Skb)
        mm.kfree_skb(tx)
        with pytest.raises(MMError, match="length"):
            mm.alloc_tx_skb(dev, -5, iscsi)


# --------------------------------------------------------------- sockets
def test_receive_queue_stays_charged_until_consumed():
    mm = MemoryManager(16384, policy="gorman-3.6")
    dev = mm.register_netdev("eth0")
    sk = mm.sock_create("download")
    before = mm.zone.free
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(4)]
    for skb in skbs:
        assert mm.sk_filter(skb, sk, ETH_P_IP) is None
        sk.queue_rcv(skb, 1000)
    assert len(sk) == 4 and sk.rmem_pages == 4 and sk.rmem_bytes == 4000
    assert mm.zone.free == before - 5               # 4 data pages + 1 head page
    sk.consume(1500)                                # first skb read, half of the second
    assert len(sk) == 3 and sk.rmem_bytes == 2500 and skbs[0].pages == 0
    sk.consume(2500)
    assert len(sk) == 0 and mm.zone.free == before and mm.used[Use.SKB] == 0
    sk.consume(100)                                 # more than was queued: nothing to free


def test_queue_rcv_without_payload_frees_and_close_frees_everything():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0")
    sk = mm.sock_create("s")
    sk.set_memalloc()
    ack = mm.netdev_alloc_skb(dev, 66)
    sk.queue_rcv(ack, 0)
    assert ack.pages == 0 and len(sk) == 0
    for _ in range(3):
        sk.queue_rcv(mm.netdev_alloc_skb(dev, 1514), 1448)
    sk.close()
    assert mm.used[Use.SKB] == 0 and not mm.sk_memalloc_socks() and len(sk) == 0
    late = mm.netdev_alloc_skb(dev, 1514)
    sk.queue_rcv(late, 1448)                        # to a closed socket: freed
    assert late.pages == 0
    with pytest.raises(MMError, match="closed"):
        sk.set_memalloc()
    assert mm.check_invariants() == []


def test_double_free_is_an_error_that_names_the_device():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth7")
    skb = mm.netdev_alloc_skb(dev, 1514)
    mm.kfree_skb(skb)
    with pytest.raises(MMError, match="eth7.*already freed"):
        mm.kfree_skb(skb)


def test_head_slab_pages_are_shared():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0")
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(SKB_HEADS_PER_SLAB)]
    assert mm.used[Use.SKB] == SKB_HEADS_PER_SLAB + 1
    skbs.append(mm.netdev_alloc_skb(dev, 1514))
    assert mm.used[Use.SKB] == SKB_HEADS_PER_SLAB + 1 + 2
    for skb in skbs:
        mm.kfree_skb(skb)
    assert mm.used[Use.SKB] == 0 and mm.skb_head_pages == 0


def test_jumbo_frames_take_more_pages():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0", 9000)
    skb = mm.netdev_alloc_skb(dev, 9014)
    assert skb.pages == 8                           # 16384 + 2 + 16 -> 32 KiB
    big = mm.netdev_alloc_skb(mm.register_netdev("eth1", 1500), 4100)   # longer than the buffer
    assert big.pages == 2


def test_pdu_buffers_use_the_reserves():
    mm = MemoryManager(16384, policy="none")
    set_free(mm, 10)
    assert mm.pdu_alloc(8192 + 48)                  # 3 pages, under min: PF_MEMALLOC context
    assert mm.used[Use.PDU] == 3
    assert not mm.pdu_alloc(65536)
    mm.pdu_free(8192 + 48)
    assert mm.used[Use.PDU] == 0 and mm.check_invariants() == []
