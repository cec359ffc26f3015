"""Lab 6 reference policy: a reserve for the storage flow that no flood can keep.

Phillips' 2005 reserve on Linux 3.6's mechanisms, with the filter moved from the device
to the buffer:

- ``era``: 3.6, whose ``sk_set_memalloc`` lets the storage socket send from the reserve
  (``sk_memalloc_tx``): the initiator's ACKs are ``GFP_ATOMIC`` plus ``__GFP_MEMALLOC``.
  On 2.6.13 they live on the headroom between min and the ``GFP_ATOMIC`` floor, and on
  d84d3fb's models no reserve size tried kept every ACK in five flood runs (twice
  Phillips' size: 3 of 5 clean; four times: 4 of 5; the instructor's README);
- ``netdev_reserve_pages``: four times Phillips' size (``estimate_skb_pages(rx_reserve,
  buffer)``), added to the min watermark: room for the ring's posted buffers and the
  frames in flight each way;
- ``rx_alloc_failed``: when ``GFP_ATOMIC`` fails, at most ``rx_reserve`` buffers per
  device from the reserve, each marked (``skb.reserve``) and counted in
  ``rx_reserve_used`` until it is freed (the memory manager gives the count back);
- ``sk_filter``: a buffer from the reserve is delivered only to a ``SOCK_MEMALLOC``
  socket. Unlike the posted patch, a frame with no socket at all (a UDP flood to a
  closed port, ICMP) is dropped too, and the decision is the buffer's, not the
  device's: nothing is credited by hand, so no flood can leak the count;
- ``storage_rx_mark``: down to zero while the device is under its cap.

The hooks see the socket a frame names, never whether it is genuine: a forged storage
frame gets what a genuine one gets (question 12).
"""

from __future__ import annotations

from typing import Optional

from testbed.mm.era import LINUX_3_6
from testbed.mm.policy.base import Policy
from testbed.mm.skbuff import DropReason


class ReserveForStorage(Policy):
    name = "reserve-for-storage"
    description = "Phillips' reserve; reserve buffers reach SOCK_MEMALLOC sockets only"
    era = LINUX_3_6             # the storage socket's own sends may use the reserve

    def netdev_reserve_pages(self, dev):
        return 4 * self.reserve_estimate(dev)       # 5/8 of min must hold the flood's dip

    def rx_alloc_failed(self, dev, length, pages):
        mm = self.mm
        if dev.rx_reserve_used >= dev.rx_reserve:
            return mm.count_drop_locked(dev, DropReason.RESERVE_CAP, "atomic")
        skb = mm.rx_skb_alloc_locked(dev, True)        # GFP_ATOMIC | __GFP_MEMALLOC
        if skb is None:
            return mm.count_drop_locked(dev, DropReason.NOMEM, "memalloc")
        skb.reserve = True          # counted in rx_reserve_used until freed
        dev.rx_reserve_used += 1
        return skb

    def sk_filter(self, skb, sk, ethertype) -> Optional[DropReason]:
        if not skb.reserve or (sk is not None and sk.memalloc):
            return None
        with self.mm.lock:
            return self.mm.count_drop_locked(skb.dev, DropReason.NOT_MEMALLOC, None)

    def storage_rx_mark(self, dev):
        return 0 if dev.rx_reserve_used < dev.rx_reserve else self.mm.zone.mark_atomic
