"""``reserve-only``: a reserve exists, and any frame may use it.

The reserve is sized as Phillips sized it (``adjust_memalloc_reserve(
estimate_skb_pages(rx_reserve, buffer))`` per interface), but nothing caps its
use and no protocol step drops anything: when ``GFP_ATOMIC`` cannot refill the
receive ring, every buffer is allocated with ``__GFP_MEMALLOC`` down to zero. Bulk
traffic drains it - the "longstanding problem" of the seed article. ``rx_reserve_used``
counts the reserve buffers not yet freed (a metric; no kernel had this policy).
"""

from __future__ import annotations

from ..skbuff import DropReason, NetDev
from ..era import LINUX_2_6_13
from .base import Policy, SkbOrDrop


class ReserveOnly(Policy):
    name = "reserve-only"
    description = "a Phillips-sized reserve that any frame may use"
    era = LINUX_2_6_13             # a 2005 hypothetical: 2.6.13's mechanisms

    def netdev_reserve_pages(self, dev: NetDev) -> int:
        return self.reserve_estimate(dev)

    def rx_alloc_failed(self, dev: NetDev, length: int, pages: int) -> SkbOrDrop:
        mm = self.mm
        skb = mm.rx_skb_alloc_locked(dev, True)     # GFP_ATOMIC | __GFP_MEMALLOC
        if skb is None:
            return mm.count_drop_locked(dev, DropReason.NOMEM, "memalloc")
        skb.reserve = True
        dev.rx_reserve_used += 1
        return skb

    def storage_rx_mark(self, dev: NetDev) -> int:
        return 0                                    # every frame may empty the reserve
