"""``phillips-2005``: Daniel Phillips' "net vm deadlock fix", as posted (v6, 12 Aug 2005).

Every rule is the posted code's (against 2.6.12.3; the protocol hooks are the same in
v4, v5 and v6):

* Reserve: ``e1000_up`` adds ``estimate_skb_pages(rx_reserve, rx_buffer_len +
  NET_IP_ALIGN)`` pages with ``adjust_memalloc_reserve()`` (``netdev_reserve_pages``).
* ``dev_memalloc_skb()`` refills the receive ring (``e1000_alloc_rx_buffers``):
  ``GFP_ATOMIC`` first; if that fails and ``rx_reserve_used >= rx_reserve`` (50,
  ``ether_setup``) it returns NULL (``RESERVE_CAP``: the slot stays empty); else
  ``GFP_ATOMIC | __GFP_MEMALLOC`` and ``atomic_inc(&dev->rx_reserve_used)``.
* Credit-back, ``dev_unreserve_skb()`` (one, never below zero), only where posted:
  ``tcp_v4_rcv`` and ``udp_rcv`` once the socket lookup found a socket, ``icmp_rcv``,
  and ``dev_memfree_skb()`` on the driver's refill error path
  (``MemoryManager.dev_memfree_skb``). Freeing an skb credits nothing
  (``kfree_skb``, ``e1000_clean_rx_ring``), whether it came from the reserve or not.
* Drop rule, in the same three places: while the device is in reserve
  (``dev_reserve_used(skb->dev)``, per-device state, not per-packet origin), a TCP or
  UDP packet whose socket is not ``SOCK_MEMALLOC`` and every ICMP packet are dropped
  (``NOT_MEMALLOC``). TCP and UDP with no socket skip the check - and the credit: they
  go on to the stack's no-socket path (a reset, a port unreachable). So do the other
  IPv4 protocols, ARP and IPv6, which pass through no patched handler (Daniel's own
  caveat: the reserve escapes through any handler that ignores it).

The count is therefore skbs the refills took from the reserve minus packets the three
handlers saw while it was non-zero. A flood of packets that reach no patched check (UDP
to a closed port) leaks one credit per reserve refill, until the cap holds every refill
that ``GFP_ATOMIC`` cannot serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..era import LINUX_2_6_13
from ..skbuff import ETH_P_IP, IPPROTO_ICMP, DropReason, NetDev, Skb, dev_unreserve_skb
from .base import Policy, SkbOrDrop

if TYPE_CHECKING:
    from ..sock import Sock


class Phillips2005(Policy):
    name = "phillips-2005"
    description = "per-device reserve capped at rx_reserve skbs; SOCK_MEMALLOC-only while in reserve"
    era = LINUX_2_6_13

    def netdev_reserve_pages(self, dev: NetDev) -> int:
        return self.reserve_estimate(dev)

    def rx_alloc_failed(self, dev: NetDev, length: int, pages: int) -> SkbOrDrop:
        mm = self.mm
        if dev.rx_reserve_used >= dev.rx_reserve:
            return mm.count_drop_locked(dev, DropReason.RESERVE_CAP, "atomic")
        skb = mm.rx_skb_alloc_locked(dev, True)         # GFP_ATOMIC | __GFP_MEMALLOC
        if skb is None:
            return mm.count_drop_locked(dev, DropReason.NOMEM, "memalloc")
        dev.rx_reserve_used += 1
        return skb

    def storage_rx_mark(self, dev: NetDev) -> int:
        """Down to zero while the device is under its cap; at the cap, GFP_ATOMIC only."""
        return 0 if dev.rx_reserve_used < dev.rx_reserve else self.mm.zone.mark_atomic

    def drops_non_memalloc(self, dev: NetDev, used: int) -> bool:
        """With ``used`` reserve skbs counted, is a non-memalloc packet dropped? (posted: yes)"""
        return True

    def sk_filter(self, skb: Skb, sk: Optional["Sock"], ethertype: int) -> Optional[DropReason]:
        dev = skb.dev
        if not dev.rx_reserve_used or ethertype != ETH_P_IP:
            return None
        if sk is None and skb.ip_proto != IPPROTO_ICMP:
            return None                     # tcp_v4_rcv / udp_rcv with no socket: no check
        mm = self.mm
        with mm.lock:
            used = dev.rx_reserve_used
            if not used:
                return None
            dev_unreserve_skb(dev)
            if (sk is None or not sk.memalloc) and self.drops_non_memalloc(dev, used):
                return mm.count_drop_locked(dev, DropReason.NOT_MEMALLOC, None)
        return None
