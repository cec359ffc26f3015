"""Socket buffers: what a frame costs in pages, and the reasons one is dropped.

Charging model (in the terms of net/core/skbuff.c):

* an skb's data comes from kmalloc: ``2^ceiling_log2(size + 16)`` bytes (the 16
  is the shared-info tail the 2005 patch counted), charged as whole pages with
  at least one page per skb - the 2005 e1000's receive buffers were exactly
  that: 2048 + NET_IP_ALIGN + 16 bytes round up to one 4096-byte block;
* the ``struct sk_buff`` heads come from ``skbuff_head_cache``, a slab of
  ``SKB_HEADS_PER_SLAB`` objects per page; the head pages are counted as the
  slab fills and empties, not per skb.

So a reserve sized by :func:`estimate_skb_pages` for ``rx_reserve`` skbs is
exactly what that many skbs take (the worked example: 50 skbs of 2050 bytes =
50 data pages + 3 head pages = 53 pages, about 212 KiB).

Nothing here allocates; the memory manager does (``MemoryManager.netdev_alloc_skb``).
"""

from __future__ import annotations

from enum import IntEnum
from .zone import PAGE_SIZE

NET_IP_ALIGN = 2
SKB_SHINFO_OVERHEAD = 16        # the "+ 16" of estimate_skb_pages()
SKB_HEAD_SIZE = 192             # bytes of one struct sk_buff (2.6-era, rounded to a cache line)
SKB_HEADS_PER_SLAB = PAGE_SIZE // SKB_HEAD_SIZE   # 21 heads per order-0 slab page
ETH_HLEN = 14

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_8021AD = 0x88A8


class DropReason(IntEnum):
    """Why a frame was dropped: the one list every counter in the testbed uses."""

    NOMEM = 1              # no memory for the skb
    RESERVE_CAP = 2        # phillips: rx_reserve_used reached rx_reserve
    NOT_MEMALLOC = 3       # phillips: device in reserve, frame not for a SOCK_MEMALLOC socket
    PFMEMALLOC = 4         # gorman: pfmemalloc skb for a non-memalloc socket (PFMemallocDrop)
    PFMEMALLOC_PROTO = 5   # gorman: pfmemalloc skb that is not ARP/IPv4/IPv6/VLAN
    MALFORMED = 6          # packet handler: a frame it cannot parse
    LINK_LOSS = 7          # packet handler: user-space random loss
    FAULT = 8              # packet handler: fault hooks


def ceiling_log2(x: int) -> int:
    """``fls(x - 1)``: the 9 Aug 2005 fix (v5 used ``ffs()``, which was grossly wrong)."""
    return (x - 1).bit_length()


def kmalloc_size(size: int) -> int:
    """Bytes kmalloc hands out for ``size`` bytes of skb data (plus the shared info)."""
    return 1 << ceiling_log2(size + SKB_SHINFO_OVERHEAD)


def kmem_estimate_pages(num: int, objs_per_slab: int = SKB_HEADS_PER_SLAB, gfporder: int = 0) -> int:
    """Slab pages that ``num`` objects occupy: ``ceil(num / objs_per_slab) << gfporder``."""
    return -(-num // objs_per_slab) << gfporder


def estimate_skb_pages(num: int, size: int) -> int:
    """Pages needed to hold ``num`` skbs of ``size`` bytes (Phillips, net/core/skbuff.c)."""
    if num < 0 or size <= 0:
        raise ValueError(f"estimate_skb_pages: num={num} size={size} must be >= 0 and > 0")
    data_pages = -(-num * kmalloc_size(size) // PAGE_SIZE)
    return kmem_estimate_pages(num) + data_pages


_data_pages_cache: dict[int, int] = {}


def skb_data_pages(size: int) -> int:
    """Whole pages charged for one skb's data of ``size`` bytes (at least one)."""
    pages = _data_pages_cache.get(size)
    if pages is None:
        pages = _data_pages_cache[size] = max(1, -(-kmalloc_size(size) // PAGE_SIZE))
    return pages


def rx_buffer_len(mtu: int) -> int:
    """The receive buffer a driver posts for ``mtu`` (e1000: 2048 for 1500, else powers of 2)."""
    frame = mtu + ETH_HLEN + 4      # header + VLAN tag room, as e1000 sized it
    return max(2048, 1 << ceiling_log2(frame))


class NetDev:
    """``struct net_device``: what the memory manager keeps per interface.

    ``rx_reserve`` / ``rx_reserve_used`` are Phillips' per-device cap and count;
    the other policies use ``rx_reserve_used`` for the skbs they took from the
    reserves on this device (so the metrics show one "reserve use" per device).
    ``reserve_pages`` is what :meth:`MemoryManager.register_netdev` added with
    ``adjust_memalloc_reserve()`` (0 when the policy adds none).
    """

    __slots__ = ("name", "mtu", "rx_reserve", "rx_reserve_used", "reserve_pages",
                 "rx_buf_len", "skb_pages", "rx_skbs", "tx_skbs", "registered")

    def __init__(self, name: str, mtu: int, rx_reserve: int) -> None:
        self.name = name
        self.mtu = mtu
        self.rx_reserve = rx_reserve
        self.rx_reserve_used = 0
        self.reserve_pages = 0
        self.rx_buf_len = rx_buffer_len(mtu)
        self.skb_pages = skb_data_pages(self.rx_buf_len + NET_IP_ALIGN)
        self.rx_skbs = 0        # skbs allocated on the receive path
        self.tx_skbs = 0        # skbs allocated on the transmit path
        self.registered = True

    def __repr__(self) -> str:
        return (f"<NetDev {self.name} mtu={self.mtu} rx_reserve_used={self.rx_reserve_used}"
                f"/{self.rx_reserve} reserve_pages={self.reserve_pages}>")


class Skb:
    """One ``struct sk_buff`` as the memory manager sees it: who, how big, from where.

    ``pages`` is the data pages charged (0 once freed); ``pfmemalloc`` says the
    data came from under the watermarks (gorman); ``reserve`` says the skb is
    counted in ``dev.rx_reserve_used``; ``unread`` is the payload still unread
    while the skb sits in a socket's receive queue.
    """

    __slots__ = ("dev", "length", "pages", "pfmemalloc", "reserve", "unread")

    def __init__(self, dev: NetDev, length: int, pages: int,
                 pfmemalloc: bool = False, reserve: bool = False) -> None:
        self.dev = dev
        self.length = length
        self.pages = pages
        self.pfmemalloc = pfmemalloc
        self.reserve = reserve
        self.unread = 0

    def __repr__(self) -> str:
        flags = "".join((" pfmemalloc" if self.pfmemalloc else "", " reserve" if self.reserve else ""))
        return f"<Skb {self.dev.name} len={self.length} pages={self.pages}{flags}>"

