"""The receive ring, the transmit path and the socket API under each policy.

A frame lands in the ring's next posted buffer and the driver refills the slot: the
policies decide how a refill may allocate, and their protocol step which frames are
dropped. Each rule is checked against the cited source (docs/kernels.md).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from testbed.mm import (PF, DropReason, MemoryManager, MMError, NetDev, Skb, Use,
                        estimate_skb_pages, task_flags)
from testbed.mm.era import LINUX_3_6
from testbed.mm.policy import Gorman36, Phillips2005, Phillips2005Threshold
from testbed.mm.skbuff import (ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP,
                               IPPROTO_TCP, IPPROTO_UDP, SKB_HEADS_PER_SLAB, ceiling_log2,
                               kmalloc_size, rx_buffer_len, rx_buffer_len_3_6)

from .conftest import set_free

ETH_P_LLDP = 0x88CC
IPPROTO_GRE = 47


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


def test_rx_buffer_follows_e1000_of_each_era():
    assert rx_buffer_len(1500) == 2048 and rx_buffer_len(9000) == 16384     # 6.0.60-k2
    assert rx_buffer_len_3_6(1500) == 1522                                  # 7.3.21: VLAN size
    assert rx_buffer_len_3_6(1000) == 2048 and rx_buffer_len_3_6(9000) == 4096


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
    with pytest.raises(MMError, match="rx_ring 0"):
        mm.register_netdev("eth1", rx_ring=0)
    with pytest.raises(MMError, match="length 0"):
        mm.netdev_alloc_skb(dev, 0)
    mm.unregister_netdev(dev)
    with pytest.raises(MMError, match="not registered"):
        mm.unregister_netdev(dev)


# ------------------------------------------------------------- helpers
def ring_of(policy, rx_ring: int = 1, **kw):
    """A manager with eth0 up (its ring posted while memory is plentiful)."""
    mm = MemoryManager(16384, policy=policy, **kw)
    return mm, mm.register_netdev("eth0", 1500, rx_ring=rx_ring)


def squeeze(mm: MemoryManager) -> None:
    """Free pages at the GFP_ATOMIC floor: an atomic refill fails, the reserves still hold."""
    set_free(mm, mm.zone.mark_atomic)


def frame(mm: MemoryManager, dev, length: int = 1514):
    """A frame arrives; the pages it frees come back to the rest of the machine (squeeze)."""
    got = mm.netdev_alloc_skb(dev, length)
    squeeze(mm)
    return got


# ------------------------------------------------------------ the ring
@pytest.mark.parametrize("policy, data_pages", [("none", 256), ("gorman-3.6", 128)])
def test_a_posted_ring_holds_its_standing_memory(policy, data_pages):
    """e1000 posts RxDescriptors (256) buffers at e1000_up: a page each in 2005, half a
    page each in 3.6 (two 1920-byte fragments); 13 slab pages of sk_buff heads."""
    mm = MemoryManager(16384, policy=policy)
    free0 = mm.zone.free
    dev = mm.register_netdev("eth0")
    standing = data_pages + -(-256 // SKB_HEADS_PER_SLAB)
    assert dev.rx_ring == 256 and len(dev.ring) == 256
    assert mm.used[Use.SKB] == standing and mm.zone.free == free0 - standing
    for _ in range(1000):                           # frames come and go: the ring stays full
        mm.kfree_skb(mm.netdev_alloc_skb(dev, 1514))
    assert len(dev.ring) == 256 and mm.used[Use.SKB] <= standing + 1
    mm.unregister_netdev(dev)                       # e1000_clean_rx_ring
    assert mm.used[Use.SKB] == 0 and mm.zone.free == free0 and mm.check_invariants() == []


def test_ring_size_is_a_parameter():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0", rx_ring=80)
    assert len(dev.ring) == 80 and mm.used[Use.SKB] == 80 + 4


def test_a_failed_refill_drops_the_next_frame_at_the_ring():
    mm, dev = ring_of("none", rx_ring=4)
    squeeze(mm)
    held = [frame(mm, dev) for _ in range(4)]       # the posted buffers still take frames
    assert all(isinstance(s, Skb) for s in held)
    assert dev.alloc_rx_buff_failed == 4 and len(dev.ring) == 0
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER        # nothing posted: the NIC drops
    assert dev.rx_no_buffer_count == 1 and mm.vm.drops[DropReason.RX_NO_BUFFER] == 1
    set_free(mm, mm.zone.wmark_high)                # memory comes back...
    assert mm.netdev_alloc_skb(dev, 1514) is DropReason.RX_NO_BUFFER    # ...after this frame
    assert len(dev.ring) == 4                       # whose interrupt refilled every slot
    assert isinstance(mm.netdev_alloc_skb(dev, 1514), Skb)
    assert mm.check_invariants() == []


def test_refill_stops_at_the_first_failure():
    mm, dev = ring_of("none", rx_ring=8)
    squeeze(mm)
    for _ in range(8):
        frame(mm, dev)
    set_free(mm, mm.zone.mark_atomic + 3)           # room for two buffers (+ a head page)
    mm.netdev_alloc_skb(dev, 1514)
    assert 1 <= len(dev.ring) <= 3 and dev.alloc_rx_buff_failed == 9


# ------------------------------------------------------ none, reserve-only
def test_none_refills_only_with_gfp_atomic():
    mm, dev = ring_of("none")
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()                               # makes no difference in 2005 vanilla
    squeeze(mm)
    assert isinstance(frame(mm, dev), Skb)          # the buffer posted earlier
    assert mm.vm.alloc_fail["atomic"] == 1 and mm.vm.drops[DropReason.NOMEM] == 1
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER


def test_reserve_only_lets_any_frame_drain_the_reserve():
    mm, dev = ring_of("reserve-only")
    set_free(mm, mm.zone.mark_atomic)
    skbs = []
    while isinstance(r := mm.netdev_alloc_skb(dev, 1514), Skb):
        assert mm.sk_filter(r, None, ETH_P_IP) is None      # no protocol-level drop
        skbs.append(r)
    assert r is DropReason.RX_NO_BUFFER and mm.zone.free <= 1      # drained to the bottom
    assert dev.rx_reserve_used == len(skbs) - 1 > 50            # all but the first posted
    for skb in skbs:
        mm.kfree_skb(skb)
    assert dev.rx_reserve_used == 0 and mm.check_invariants() == []


# ------------------------------------------------- phillips: the counter as posted
def phillips(rx_ring: int = 1, **kw):
    mm, dev = ring_of("phillips-2005", rx_ring, **kw)
    squeeze(mm)
    return mm, dev


def test_phillips_refills_from_the_reserve_up_to_the_cap():
    mm, dev = phillips(rx_reserve=5)
    held = [frame(mm, dev) for _ in range(5)]       # each refill: dev_memalloc_skb, reserve
    assert all(isinstance(s, Skb) for s in held) and dev.rx_reserve_used == 5
    held.append(frame(mm, dev))                     # its refill meets the cap: NULL
    assert mm.vm.drops[DropReason.RESERVE_CAP] == 1 and dev.alloc_rx_buff_failed == 1
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER
    dev2 = mm.register_netdev("eth1", rx_ring=1)    # another device has its own cap: its
    assert dev2.rx_reserve_used == 1                # ring is posted from the reserve at once
    squeeze(mm)
    frame(mm, dev2)
    assert dev2.rx_reserve_used == 2 and dev.rx_reserve_used == 5


def test_phillips_freeing_a_reserve_skb_credits_nothing():
    mm, dev = phillips(rx_reserve=5)
    held = [frame(mm, dev) for _ in range(3)]
    assert dev.rx_reserve_used == 3
    for skb in held:                                # kfree_skb, dev_kfree_skb: no credit
        mm.kfree_skb(skb)
    assert dev.rx_reserve_used == 3
    mm.unregister_netdev(dev)                       # e1000_clean_rx_ring: none either
    assert dev.rx_reserve_used == 3


def test_phillips_driver_error_path_credits_back():
    mm, dev = phillips(rx_reserve=2)
    a, b = frame(mm, dev), frame(mm, dev)
    assert dev.rx_reserve_used == 2
    mm.dev_memfree_skb(a)                           # e1000_alloc_rx_buffers' error path
    assert dev.rx_reserve_used == 1 and a.pages == 0
    mm.dev_memfree_skb(b)
    mm.dev_memfree_skb(frame(mm, dev))
    assert dev.rx_reserve_used == 0                 # never below zero


def in_reserve(used: int = 3):
    mm, dev = phillips()
    skb = frame(mm, dev)
    dev.rx_reserve_used = used                      # reserve skbs counted on eth0
    return mm, dev, skb


def test_phillips_udp_to_a_closed_port_leaks_a_credit():
    mm, dev, skb = in_reserve()
    skb.ip_proto = IPPROTO_UDP                      # udp_rcv: no socket, no check
    assert mm.sk_filter(skb, None, ETH_P_IP) is None and dev.rx_reserve_used == 3


def test_phillips_tcp_without_a_socket_skips_the_check():
    mm, dev, skb = in_reserve()
    skb.ip_proto = IPPROTO_TCP                      # tcp_v4_rcv: goto no_tcp_socket
    assert mm.sk_filter(skb, None, ETH_P_IP) is None and dev.rx_reserve_used == 3


def test_phillips_icmp_credits_back_and_is_dropped():
    mm, dev, skb = in_reserve()
    skb.ip_proto = IPPROTO_ICMP
    assert mm.sk_filter(skb, None, ETH_P_IP) is DropReason.NOT_MEMALLOC
    assert dev.rx_reserve_used == 2


def test_phillips_other_ipv4_protocols_arp_and_ipv6_pass_unchecked():
    mm, dev, skb = in_reserve()
    skb.ip_proto = IPPROTO_GRE
    bulk = mm.sock_create("bulk")
    assert mm.sk_filter(skb, None, ETH_P_IP) is None
    assert mm.sk_filter(skb, None, ETH_P_ARP) is None
    assert mm.sk_filter(skb, bulk, ETH_P_IPV6) is None
    assert dev.rx_reserve_used == 3


def test_phillips_a_socket_packet_credits_back_once_delivered_or_dropped():
    mm, dev, skb = in_reserve()
    iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
    iscsi.set_memalloc()
    assert mm.sk_filter(skb, iscsi, ETH_P_IP) is None and dev.rx_reserve_used == 2
    iscsi.queue_rcv(skb, 1448)
    iscsi.consume(1448)                             # freed from the socket: no second credit
    assert skb.pages == 0 and dev.rx_reserve_used == 2
    squeeze(mm)
    other = frame(mm, dev)
    assert mm.sk_filter(other, bulk, ETH_P_IP) is DropReason.NOT_MEMALLOC
    assert dev.rx_reserve_used == 2                 # the refill took one, the check gave one
    mm.kfree_skb(other)
    assert dev.rx_reserve_used == 2 and mm.vm.drops[DropReason.NOT_MEMALLOC] == 1


def test_phillips_state_is_per_device_not_per_packet():
    mm = MemoryManager(16384, policy="phillips-2005")
    dev = mm.register_netdev("eth0")
    normal = mm.netdev_alloc_skb(dev, 1514)         # plenty of memory: a normal skb
    dev.rx_reserve_used = 3                         # some reserve skbs counted on eth0
    assert mm.sk_filter(normal, mm.sock_create("bulk"), ETH_P_IP) is DropReason.NOT_MEMALLOC


def test_phillips_a_closed_port_flood_leaks_to_the_cap_and_the_storage_frames_follow():
    """The review's reading, checked: each flood frame's refill takes a reserve skb that no
    handler credits back; at 50 the refills stop, the ring runs dry, and the storage flow's
    frames are dropped at the ring with the rest."""
    mm, dev = phillips(rx_ring=8)
    iscsi = mm.sock_create("iscsi")
    iscsi.set_memalloc()
    got = []
    for _ in range(70):
        skb = frame(mm, dev)
        if isinstance(skb, Skb):
            skb.ip_proto = IPPROTO_UDP              # to a closed port: no socket
            assert mm.sk_filter(skb, None, ETH_P_IP) is None
            mm.kfree_skb(skb)                       # the stack drops it: no credit
            squeeze(mm)
        got.append(skb if not isinstance(skb, Skb) else "delivered")
    assert dev.rx_reserve_used == 50 and got[:58] == ["delivered"] * 58
    assert set(got[58:]) == {DropReason.RX_NO_BUFFER}
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER        # an iSCSI response: dropped too
    assert dev.rx_reserve_used == 50


# ------------------------------------------------------- phillips: threshold
def test_threshold_is_on_the_device_reserve():
    mm, dev = ring_of("phillips-2005-threshold", threshold=0.5, rx_reserve=10)
    squeeze(mm)
    bulk = mm.sock_create("bulk")
    skb = frame(mm, dev)
    dev.rx_reserve_used = 5                         # at 0.5 x 10: kept, and credited back
    assert mm.sk_filter(skb, bulk, ETH_P_IP) is None and dev.rx_reserve_used == 4
    dev.rx_reserve_used = 6                         # past it: dropped
    assert mm.sk_filter(skb, bulk, ETH_P_IP) is DropReason.NOT_MEMALLOC
    assert dev.rx_reserve_used == 5


def drive(policy, seed: int = 3) -> list:
    """The same frame sequence, memory swings included; every decision, as a list."""
    mm, dev = ring_of(policy, rx_ring=16, rx_reserve=20, threshold=0.0)
    iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
    iscsi.set_memalloc()
    rnd = random.Random(seed)
    out, held = [], []
    for i in range(3000):
        if i % 400 == 0:
            set_free(mm, rnd.choice((mm.zone.mark_atomic, mm.zone.mark_atomic, mm.zone.wmark_high)))
        kind = rnd.choice(("iscsi", "bulk", "flood", "icmp", "arp"))
        skb = mm.netdev_alloc_skb(dev, 1514)
        if not isinstance(skb, Skb):
            out.append((kind, skb.name, dev.rx_reserve_used))
            continue
        sk = {"iscsi": iscsi, "bulk": bulk}.get(kind)
        skb.ip_proto = {"flood": IPPROTO_UDP, "icmp": IPPROTO_ICMP}.get(kind, 0)
        verdict = mm.sk_filter(skb, sk, ETH_P_ARP if kind == "arp" else ETH_P_IP)
        out.append((kind, verdict, dev.rx_reserve_used, dev.alloc_rx_buff_failed))
        if verdict is None and sk is not None and rnd.random() < 0.5:
            sk.queue_rcv(skb, 1448)
            held.append(sk)
        else:
            mm.kfree_skb(skb)
        if len(held) > 30:
            held.pop(0).consume(1448)
    return out


def test_threshold_zero_is_exactly_phillips_2005():
    a, b = drive("phillips-2005"), drive("phillips-2005-threshold")
    assert a == b
    kinds = {(k, v) for k, v, *_ in a}
    assert ("bulk", DropReason.NOT_MEMALLOC) in kinds and ("iscsi", None) in kinds
    assert ("flood", DropReason.RX_NO_BUFFER) in kinds or ("flood", None) in kinds


def test_threshold_class_only_changes_the_drop_rule():
    assert Phillips2005Threshold.rx_alloc_failed is Phillips2005.rx_alloc_failed
    assert Phillips2005Threshold.sk_filter is Phillips2005.sk_filter


# ----------------------------------------------------------------- gorman
def gorman(**kw):
    mm, dev = ring_of("gorman-3.6", **kw)
    squeeze(mm)
    return mm, dev


def test_gorman_refills_from_the_reserve_only_once_a_socket_is_memalloc():
    mm, dev = gorman()
    held = [frame(mm, dev) for _ in range(2)]       # the second fragment of the cache's page
    assert all(isinstance(s, Skb) for s in held)    # needed no page; the next one does
    assert mm.vm.drops[DropReason.NOMEM] == 1 and mm.vm.alloc_fail["atomic"] == 1
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER
    iscsi = mm.sock_create("iscsi")
    iscsi.set_memalloc()
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER        # its refill: from the reserve
    skb = frame(mm, dev)
    assert isinstance(skb, Skb) and skb.frag is not None and skb.frag.pfmemalloc
    assert dev.rx_reserve_used >= 1
    iscsi.clear_memalloc()
    mm.kfree_skb(skb)
    squeeze(mm)
    frame(mm, dev)
    assert mm.vm.alloc_fail["atomic"] >= 2


def test_gorman_3_6_build_skb_does_not_mark_a_reserve_fragment():
    """3.6's build_skb sets no pfmemalloc: sk_filter lets a reserve skb through to any
    socket (the mark on a fragment's page reaches the skb from 4.0 on)."""
    mm, dev = gorman(rx_ring=4)
    mm.sock_create("iscsi").set_memalloc()
    bulk = mm.sock_create("bulk")
    skbs = [frame(mm, dev) for _ in range(8)]
    reserve = [s for s in skbs if isinstance(s, Skb) and s.frag.pfmemalloc]
    assert reserve and not any(s.pfmemalloc for s in reserve)
    assert all(mm.sk_filter(s, bulk, ETH_P_IP) is None for s in reserve)
    assert mm.vm.PFMemallocDrop == 0

    class Gorman40(Gorman36):                        # the same with 4.0's build_skb
        era = dataclasses.replace(LINUX_3_6, rx_frag_pfmemalloc=True)
    mm = MemoryManager(16384, policy=Gorman40())
    dev = mm.register_netdev("eth0", rx_ring=4)
    squeeze(mm)
    mm.sock_create("iscsi").set_memalloc()
    skbs = [frame(mm, dev) for _ in range(8)]
    reserve = [s for s in skbs if isinstance(s, Skb) and s.frag.pfmemalloc]
    assert reserve and all(s.pfmemalloc for s in reserve)
    assert mm.sk_filter(reserve[0], mm.sock_create("bulk"), ETH_P_IP) is DropReason.PFMEMALLOC


def test_gorman_heads_never_come_from_the_reserve():
    """build_skb asks skbuff_head_cache with plain GFP_ATOMIC: with no free head left, a
    refill fails even though the fragment could come from the reserve."""
    mm, dev = ring_of("gorman-3.6")
    mm.sock_create("iscsi").set_memalloc()
    held = []
    while mm.skb_head_room:
        held.append(mm.alloc_tx_skb(dev, 100, None))
    squeeze(mm)
    assert isinstance(frame(mm, dev), Skb)
    assert dev.alloc_rx_buff_failed == 1 and mm.vm.alloc_fail["memalloc"] == 1
    assert frame(mm, dev) is DropReason.RX_NO_BUFFER


def test_gorman_sk_filter_drops_pfmemalloc_for_other_sockets():
    """The rule itself, on skbs that carry the mark (3.6's __alloc_skb path: a jumbo MTU
    whose buffer is too big for a fragment)."""
    mm = MemoryManager(16384, policy="gorman-3.6")
    dev = mm.register_netdev("eth0", 9000, rx_ring=1)
    assert dev.frag_size == 0 and dev.skb_pages == 2
    iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
    iscsi.set_memalloc()
    squeeze(mm)
    frame(mm, dev, 9014)
    skbs = [frame(mm, dev, 1514) for _ in range(5)]
    assert all(isinstance(s, Skb) and s.pfmemalloc for s in skbs)
    assert mm.sk_filter(skbs[0], iscsi, ETH_P_IP) is None
    assert mm.sk_filter(skbs[1], bulk, ETH_P_IP) is DropReason.PFMEMALLOC
    assert mm.vm.PFMemallocDrop == 1
    assert mm.sk_filter(skbs[2], None, ETH_P_ARP) is None
    assert mm.sk_filter(skbs[3], iscsi, ETH_P_8021Q) is None
    assert mm.sk_filter(skbs[4], iscsi, ETH_P_LLDP) is DropReason.PFMEMALLOC_PROTO
    assert mm.vm.PFMemallocDrop == 1
    set_free(mm, 5000)                              # a normal skb is never filtered
    frame_normal = mm.netdev_alloc_skb(dev, 1514)
    frame_normal = mm.netdev_alloc_skb(dev, 1514)
    assert not frame_normal.pfmemalloc and mm.sk_filter(frame_normal, bulk, ETH_P_LLDP) is None


def test_gorman_reserve_is_the_region_under_min():
    """Refills with SKB_ALLOC_RX (__alloc_skb: a jumbo buffer) take head and data from
    under min, down to zero; fragment refills only as far as free heads go."""
    mm = MemoryManager(16384, policy="gorman-3.6")
    dev = mm.register_netdev("eth0", 9000, rx_ring=1)
    mm.sock_create("iscsi").set_memalloc()
    set_free(mm, mm.zone.mark_atomic)
    while isinstance(mm.netdev_alloc_skb(dev, 1514), Skb):
        pass
    assert mm.zone.free <= 2 and mm.vm.alloc_fail["memalloc"] == 2   # refill, then the retry
    mm, dev = gorman()
    mm.sock_create("iscsi").set_memalloc()
    while isinstance(mm.netdev_alloc_skb(dev, 1514), Skb):
        pass
    assert 0 < mm.zone.free < mm.zone.mark_atomic and mm.skb_head_room == 0


# ------------------------------------------------------- truesize per era
def test_2005_a_page_per_frame():
    """dev_alloc_skb(2048 + 2): kmalloc(SKB_DATA_ALIGN(2066) + shared info) is a 4 KiB
    block; truesize counts the aligned size and the sk_buff, not the rounding."""
    mm, dev = ring_of("phillips-2005", rx_ring=1)
    assert dev.rx_buf_len == 2048 and dev.skb_pages == 1 and dev.frag_size == 0
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(10)]
    assert all(s.pages == 1 and s.frag is None for s in skbs)
    assert skbs[0].truesize == 2112 + 192 < 4096
    assert mm.used[Use.SKB] == 11 + 1              # 11 data pages (10 + the posted one), 1 slab


def test_3_6_page_fragments():
    """__netdev_alloc_skb(1522 + 2): fragsz = SKB_DATA_ALIGN(1588) + SKB_DATA_ALIGN(320)
    = 1920, two per page; truesize = SKB_TRUESIZE(1600) = 1600 + 256 + 320."""
    mm, dev = ring_of("gorman-3.6", rx_ring=1)
    assert dev.rx_buf_len == 1522 and dev.frag_size == 1920 and dev.skb_pages == 0
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(9)]
    assert all(s.pages == 0 and s.frag is not None for s in skbs)
    assert skbs[0].truesize == 2176
    assert mm.used[Use.SKB] == 5 + 1                # 10 fragments on 5 pages, 1 slab
    assert skbs[0].frag is skbs[1].frag and skbs[1].frag is not skbs[2].frag
    mm.kfree_skb(skbs[0])
    assert mm.used[Use.SKB] == 6                    # a page goes with its last fragment
    mm.kfree_skb(skbs[1])
    assert mm.used[Use.SKB] == 5
    for s in skbs[2:]:
        mm.kfree_skb(s)
    mm.unregister_netdev(dev)
    assert mm.used[Use.SKB] == 0 and mm.check_invariants() == []


def test_the_fragment_cache_recycles_a_page_whose_fragments_came_back():
    mm = MemoryManager(16384, policy="gorman-3.6")
    dev = NetDev("eth0", 1500, 50, 1, LINUX_3_6)    # the cache alone, no ring
    with mm.lock:
        a = mm.netdev_alloc_frag_locked(dev, False)
        b = mm.netdev_alloc_frag_locked(dev, False)
        assert a is b and a.refs == 3 and mm.vm.pgalloc == 1
        mm.frag_put_locked(a)
        mm.frag_put_locked(b)
        c = mm.netdev_alloc_frag_locked(dev, False)     # full, but every fragment is back:
        assert c is a and c.refs == 2 and mm.vm.pgalloc == 1   # recycled, no new page
        d = mm.netdev_alloc_frag_locked(dev, False)
        e = mm.netdev_alloc_frag_locked(dev, False)     # full, one still out: a new page
        assert e is not c and mm.vm.pgalloc == 2 and mm.used[Use.SKB] == 2
        for page in (c, d, e, dev.frag_page):
            mm.frag_put_locked(page)
    assert mm.used[Use.SKB] == 0 and mm.check_invariants() == []


@pytest.mark.parametrize("policy", ["none", "gorman-3.6"])
def test_sockets_charge_truesize(policy):
    mm = MemoryManager(16384, policy=policy)
    dev = mm.register_netdev("eth0")
    sk = mm.sock_create("download")
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(4)]
    for skb in skbs:
        assert mm.sk_filter(skb, sk, ETH_P_IP) is None
        sk.queue_rcv(skb, 1000)
    assert sk.rmem_alloc == 4 * dev.truesize and sk.rmem_pages == -(-4 * dev.truesize // 4096)
    assert len(sk) == 4 and sk.rmem_bytes == 4000
    sk.consume(1500)                                # first skb read, half of the second
    assert len(sk) == 3 and sk.rmem_bytes == 2500 and skbs[0].frag is None and skbs[0].pages == 0
    assert sk.rmem_alloc == 3 * dev.truesize
    sk.consume(2500)
    assert len(sk) == 0 and sk.rmem_alloc == 0
    sk.consume(100)                                 # more than was queued: nothing to free
    mm.unregister_netdev(dev)
    assert mm.used[Use.SKB] == 0


# ------------------------------------------------------------- transmit
def test_transmit_reserves_follow_the_era_socket_mark():
    """A memalloc socket transmits from the reserves only where sk_set_memalloc() puts
    __GFP_MEMALLOC in sk_allocation (3.6); Phillips' 2005 mark is receive-side."""
    for policy in ("none", "phillips-2005", "gorman-3.6"):
        mm, dev = ring_of(policy)
        iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
        iscsi.set_memalloc()
        squeeze(mm)
        assert mm.alloc_tx_skb(dev, 1514, bulk) is DropReason.NOMEM
        tx = mm.alloc_tx_skb(dev, 1514, iscsi)
        assert isinstance(tx, Skb) is mm.era.sk_memalloc_tx, policy
        if isinstance(tx, Skb):
            mm.kfree_skb(tx)
        with pytest.raises(MMError, match="length"):
            mm.alloc_tx_skb(dev, -5, iscsi)


# --------------------------------------------------------------- sockets
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
    mm.unregister_netdev(dev)
    # the closed socket keeps its count: no era's release calls sk_clear_memalloc
    assert mm.used[Use.SKB] == 0 and mm.memalloc_socks == 1 and len(sk) == 0
    dev = mm.register_netdev("eth0")
    late = mm.netdev_alloc_skb(dev, 1514)
    sk.queue_rcv(late, 1448)                        # to a closed socket: freed
    assert late.pages == 0
    with pytest.raises(MMError, match="closed"):
        sk.set_memalloc()
    assert mm.check_invariants() == []


def test_double_free_is_an_error_that_names_the_device():
    for policy in ("none", "gorman-3.6"):
        mm = MemoryManager(16384, policy=policy)
        dev = mm.register_netdev("eth7")
        skb = mm.netdev_alloc_skb(dev, 1514)
        mm.kfree_skb(skb)
        with pytest.raises(MMError, match="eth7.*already freed"):
            mm.kfree_skb(skb)


def test_head_slab_pages_are_shared():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0", rx_ring=1)
    assert mm.used[Use.SKB] == 1 + 1                # the posted buffer and its slab page
    skbs = [mm.netdev_alloc_skb(dev, 1514) for _ in range(SKB_HEADS_PER_SLAB - 1)]
    assert mm.used[Use.SKB] == SKB_HEADS_PER_SLAB + 1
    skbs.append(mm.netdev_alloc_skb(dev, 1514))
    assert mm.used[Use.SKB] == SKB_HEADS_PER_SLAB + 1 + 2
    for skb in skbs:
        mm.kfree_skb(skb)
    mm.unregister_netdev(dev)
    assert mm.used[Use.SKB] == 0 and mm.skb_head_pages == 0


def test_jumbo_frames_take_more_pages():
    mm = MemoryManager(16384, policy="none")
    dev = mm.register_netdev("eth0", 9000, rx_ring=4)
    skb = mm.netdev_alloc_skb(dev, 9014)
    assert skb.pages == 8                           # 16384 + 2 + 16 -> 32 KiB
    eth1 = mm.register_netdev("eth1", 1500, rx_ring=4)
    big = mm.netdev_alloc_skb(eth1, 4100)           # longer than the buffer (GSO/GRO)
    assert big.pages == 2 and big.truesize == 2304 + 4096
    set_free(mm, mm.zone.mark_atomic)
    assert mm.netdev_alloc_skb(eth1, 4100) is DropReason.NOMEM    # no page for the rest
    assert mm.check_invariants() == []


def test_pdu_buffers_use_the_reserves_in_a_memalloc_context():
    mm = MemoryManager(16384, policy="none")
    set_free(mm, 10)
    with task_flags(PF.MEMALLOC):                   # reclaim's pageout: PF_MEMALLOC
        assert mm.pdu_alloc(8192 + 48)              # 3 pages, under min
        assert mm.used[Use.PDU] == 3
        assert not mm.pdu_alloc(65536)
    mm.pdu_free(8192 + 48)
    assert mm.used[Use.PDU] == 0 and mm.check_invariants() == []
