"""Experiment: gorman-3.6 plus headroom under tcp_mem[2] kept for SOCK_MEMALLOC sockets.

A segment for a TCP socket that is not memalloc is dropped in sk_filter (before TCP
charges it) once TCP's count is within HEADROOM pages of tcp_mem[2], so the storage
socket's responses always find room: what c76562b6709f's message says it does, for
every skb, not only pfmemalloc ones.
"""

from __future__ import annotations

from typing import Optional

from testbed.mm.policy.gorman_3_6 import Gorman36
from testbed.mm.skbuff import DropReason

HEADROOM = 64       # pages: the storage flow's responses in flight, with room to spare


class Headroom(Gorman36):
    name = "headroom"
    description = "gorman-3.6, and tcp_mem[2] keeps 64 pages for memalloc sockets"

    def sk_filter(self, skb, sk, ethertype: int) -> Optional[DropReason]:
        reason = super().sk_filter(skb, sk, ethertype)
        if reason is not None or sk is None or sk.memalloc:
            return reason
        mm = self.mm
        if mm.tcp_memory_allocated + HEADROOM >= mm.tcp_mem[2]:
            return DropReason.NOT_MEMALLOC
        return None
