"""``phillips-2005``: Daniel Phillips' "net vm deadlock fix" (Aug 2005, v4-v6).

* Reserve: each interface adds ``estimate_skb_pages(rx_reserve, rx_buffer_len
  + NET_IP_ALIGN)`` pages with ``adjust_memalloc_reserve()`` when it comes up.
* ``dev_memalloc_skb()``: ``GFP_ATOMIC`` first; if that fails and
  ``rx_reserve_used >= rx_reserve`` (default 50) the driver drops the frame
  (``RESERVE_CAP``); else ``GFP_ATOMIC | __GFP_MEMALLOC`` and
  ``rx_reserve_used++``.
* Protocol step (``tcp_v4_rcv``/``udp_rcv``/``icmp_rcv`` after the socket
  lookup): while the device is in reserve (``rx_reserve_used > 0``), every
  IPv4 packet credits one skb back (``dev_unreserve_skb``) and is dropped
  (``NOT_MEMALLOC``) unless its socket is ``SOCK_MEMALLOC``; a packet with no
  socket (ICMP, unknown flows) counts as not memalloc. The test is per-device
  state, not per-packet origin, as in the posted patch. ARP and IPv6 did not
  pass through the patched handlers, so they are delivered untouched (Daniel's
  own caveat: the reserve escapes through any handler that ignores it).
* Freeing a reserve skb the protocol step did not see (a driver-side drop)
  credits it back (``dev_memfree_skb``); the count never goes below zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..skbuff import ETH_P_IP, DropReason, NetDev, Skb
from .base import Policy, SkbOrDrop

if TYPE_CHECKING:
    from ..sock import Sock


class Phillips2005(Policy):
    name = "phillips-2005"
    description = "per-device reserve capped at rx_reserve skbs; SOCK_MEMALLOC-only while in reserve"

    def netdev_reserve_pages(self, dev: NetDev) -> int:
        return self.reserve_estimate(dev)

    def rx_alloc_failed(self, dev: NetDev, length: int, pages: int) -> SkbOrDrop:
        mm = self.mm
        if dev.rx_reserve_used >= dev.rx_reserve:
            return mm.count_drop_locked(dev, DropReason.RESERVE_CAP, "atomic")
        skb = mm.skb_alloc_locked(dev, length, pages, True)
        if skb is None:
            return mm.count_drop_locked(dev, DropReason.NOMEM, "memalloc")
        skb.reserve = True
        dev.rx_reserve_used += 1
        return skb

    def storage_rx_mark(self, dev: NetDev) -> int:
        """Down to zero while the device is under its cap; at the cap, GFP_ATOMIC only."""
        return 0 if dev.rx_reserve_used < dev.rx_reserve else self.mm.zone.mark_atomic

    def drops_non_memalloc(self, dev: NetDev, used: int) -> bool:
        """With ``used`` reserve skbs outstanding, are non-memalloc packets dropped?"""
        return True

    def sk_filter(self, skb: Skb, sk: Optional["Sock"], ethertype: int) -> Optional[DropReason]:
        dev = skb.dev
        if not dev.rx_reserve_used or ethertype != ETH_P_IP:
            return None
        mm = self.mm
        with mm.lock:
            used = dev.rx_reserve_used
            if not used:
                return None
            dev.rx_reserve_used = used - 1      # dev_unreserve_skb(), once per packet
            skb.reserve = False
            if (sk is None or not sk.memalloc) and self.drops_non_memalloc(dev, used):
                return mm.count_drop_locked(dev, DropReason.NOT_MEMALLOC, None)
        return None
