"""``tcp_prune_queue()``'s collapse: a socket refused by ``sk_rmem_schedule()`` copies its
receive queue into dense buffers before TCP drops the segment (``Sock.collapse_locked``),
from the first skb the era calls bloated or the head read in part."""

from __future__ import annotations

import pytest

from testbed.mm import MemoryManager
from testbed.mm.skbuff import collapse_copy, collapse_skb
from testbed.mm.sock import tcp_win_from_space

MSS = 1448


def queued(policy: str, segments: int, mib: int = 32):
    """A socket with ``segments`` full-size segments queued, unread."""
    mm = MemoryManager(mib * 256, policy=policy)
    dev = mm.register_netdev("eth0", 1500)
    sk = mm.sock_create("download")
    for _ in range(segments):
        skb = mm.netdev_alloc_skb(dev, 1514)
        assert mm.tcp_rmem_schedule(sk, skb) is None
        sk.queue_rcv(skb, MSS)
    return mm, dev, sk


def test_the_collapsed_buffers_are_sized_as_each_eras_alloc_skb_makes_them():
    # 2.6.13 (64-byte lines): SKB_MAX_ORDER(84, 0) = (4096 - 84 - 160) & ~63 = 3840; the
    # copy + header, aligned, + the 160-byte shared info is 4,128 bytes: a size-8192 block
    assert collapse_copy("page") == 3840 and collapse_skb("page", 3840) == (2, 4160)
    # 3.6: SKB_WITH_OVERHEAD(4096 - 132) = 3644; 3,776 + 320 is exactly a size-4096 block,
    # SKB_TRUESIZE(4096 - 320) = 4352
    assert collapse_copy("frag") == 3644 and collapse_skb("frag", 3644) == (1, 4352)
    assert collapse_skb("frag", 1000) == (1, 2048 + 256)     # a short last copy


@pytest.mark.parametrize("policy, bloated", [("none", True), ("gorman-3.6", False)])
def test_a_full_segment_is_bloated_for_2_6_13_and_not_for_3_6(policy, bloated):
    """tcp_win_from_space(truesize) > len: 2.6.13 (scale 2) offers 1,728 of a 2,304-byte
    skb; 3.6 (scale 1) 1,088 of a 2,176-byte fragment skb, less than its 1,448 bytes."""
    mm, dev, sk = queued(policy, 1)
    assert (tcp_win_from_space(mm.era, dev.truesize) > MSS) == bloated
    with mm.lock:
        assert (sk.collapse_gain() > 0) == bloated


def collapse(mm, dev, sk) -> tuple[int, int, int]:
    """Collapse ``sk``'s queue: (rmem before, rmem after, unread bytes after)."""
    with mm.lock:
        before, gain = sk.rmem_alloc, sk.collapse_gain()
        assert sk.collapse_locked(dev) == (gain > 0)
        assert sk.rmem_alloc == before - gain           # the dry run is the collapse
        assert sk._bloated == sum(map(sk._is_bloated, sk._queue))   # the walk's shortcut
    assert mm.check_invariants() == []
    return before, sk.rmem_alloc, sk.rmem_bytes


def test_under_3_6_only_a_queue_read_in_part_collapses_and_every_byte_stays():
    mm, dev, sk = queued("gorman-3.6", 100)
    assert collapse(mm, dev, sk)[0] == collapse(mm, dev, sk)[1]      # nothing to do
    assert mm.vm.TCPRcvCollapsed == 0
    sk.consume(1000)                            # the head is read in part
    unread = 100 * MSS - 1000
    before, after, left = collapse(mm, dev, sk)
    assert left == unread and len(sk) == -(-unread // 3644)
    assert after == (len(sk) - 1) * 4352 + collapse_skb("frag", unread % 3644)[1]
    assert after < before * 0.85 and mm.vm.TCPRcvCollapsed == 100
    # the copies are dense and start at copied_seq: a second prune finds nothing
    assert collapse(mm, dev, sk)[1] == after
    sk.consume(unread)
    assert sk.rmem_alloc == 0 and len(sk) == 0


def test_under_2_6_13_the_queue_collapses_from_its_first_fresh_skb():
    mm, dev, sk = queued("none", 10)
    collapse(mm, dev, sk)
    dense = len(sk)
    assert dense == -(-10 * MSS // 3840)
    for _ in range(5):                          # five fresh (bloated) skbs behind them
        skb = mm.netdev_alloc_skb(dev, 1514)
        assert mm.tcp_rmem_schedule(sk, skb) is None
        sk.queue_rcv(skb, MSS)
    collapsed = mm.vm.TCPRcvCollapsed
    collapse(mm, dev, sk)
    assert mm.vm.TCPRcvCollapsed == collapsed + 5            # the dense ones stay
    assert len(sk) == dense + -(-5 * MSS // 3840) and sk.rmem_bytes == 15 * MSS


def test_a_collapse_needs_gfp_atomic_memory_and_without_it_changes_nothing():
    """alloc_skb(GFP_ATOMIC) at the floor fails: tcp_collapse returns at once. (Once one
    copy is made, the sources it frees pay for the next: 2.6.13 copies 2.65 pages of
    skbs into 2.)"""
    mm, dev, sk = queued("none", 20)
    with mm.lock:
        mm.zone.free = mm.zone.mark_atomic + 1      # a 2-page copy does not fit
        rmem = sk.rmem_alloc
        assert not sk.collapse_locked(dev)
        assert sk.rmem_alloc == rmem and mm.vm.TCPRcvCollapsed == 0
        mm.zone.free = mm.zone.mark_atomic + 3      # one copy does
        assert sk.collapse_locked(dev)
    assert sk.rmem_bytes == 20 * MSS and len(sk) == -(-20 * MSS // 3840)


def test_a_collapse_stopped_inside_an_skb_starts_there_next_time(monkeypatch):
    """A copy that fails leaves the skb it was copying from half copied, behind the
    copies: its data before ``start`` makes the next tcp_collapse start at it."""
    mm, dev, sk = queued("gorman-3.6", 30)
    sk.consume(1000)
    alloc, made = mm.skb_alloc_locked, []

    def two_copies(*args):
        made.append(args)
        return alloc(*args) if len(made) <= 2 else None
    monkeypatch.setattr(mm, "skb_alloc_locked", two_copies)
    with mm.lock:
        assert sk.collapse_locked(dev)
        torn = [i for i, skb in enumerate(sk._queue) if skb.unread < skb.payload]
        assert torn == [2] and sk._collapse_from() == 2
    monkeypatch.setattr(mm, "skb_alloc_locked", alloc)
    collapse(mm, dev, sk)
    assert sk.rmem_bytes == 30 * MSS - 1000
    with mm.lock:
        assert sk._collapse_from() is None or sk.collapse_gain() == 0
