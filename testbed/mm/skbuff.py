"""Socket buffers: what a received frame costs in each era, and the reasons one is dropped.

The receive buffers a NIC keeps posted (its ring, see ``MemoryManager.netdev_alloc_skb``)
are allocated the way the era's e1000 allocated them. The era's ``skb_truesize`` switch
picks one of two charging models (in the terms of net/core/skbuff.c):

* ``"page"`` (2.6.13, e1000 6.0.60-k2): ``e1000_alloc_rx_buffers`` asks
  ``dev_alloc_skb(rx_buffer_len + NET_IP_ALIGN)`` = ``alloc_skb(2050 + 16)``: the head
  from ``skbuff_head_cache``, the data from ``kmalloc(SKB_DATA_ALIGN(size) +
  sizeof(struct skb_shared_info))``, which lands in the size-4096 cache - a whole page
  per buffer. :func:`kmalloc_size` is Phillips' estimate of that block,
  ``2^ceiling_log2(size + 16)``, the same 4096 bytes. ``truesize`` is
  ``SKB_DATA_ALIGN(size) + sizeof(struct sk_buff)``: the kmalloc rounding is not in it.
* ``"frag"`` (3.6, e1000 7.3.21-k8-NAPI): ``netdev_alloc_skb_ip_align(1522)`` ->
  ``__netdev_alloc_skb`` carves ``fragsz = SKB_DATA_ALIGN(len + NET_SKB_PAD) +
  SKB_DATA_ALIGN(sizeof(struct skb_shared_info))`` (1920 bytes) from the per-CPU
  ``netdev_alloc_cache`` page (two per page), and ``build_skb`` takes the head with
  plain ``GFP_ATOMIC`` and sets ``truesize = SKB_TRUESIZE(fragsz - shinfo)``. A page
  goes back when the cache has moved on and its last fragment is freed (:class:`FragPage`).

The ``struct sk_buff`` heads come from ``skbuff_head_cache``, ``SKB_HEADS_PER_SLAB`` per
page; the memory manager counts its slab pages as the slab fills and empties.

A reserve sized by :func:`estimate_skb_pages` for ``rx_reserve`` page-mode skbs is
exactly what that many skbs take (the worked example: 50 skbs of 2050 bytes = 50 data
pages + 3 head pages = 53 pages, about 212 KiB).

Nothing here allocates; the memory manager does.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, Optional

from .zone import PAGE_SIZE

if TYPE_CHECKING:
    from .era import EraProfile

NET_IP_ALIGN = 2
SKB_SHINFO_OVERHEAD = 16        # the "+ 16" of estimate_skb_pages() (and of __dev_alloc_skb)
SKB_HEAD_SIZE = 192             # bytes of one struct sk_buff (2.6-era, rounded to a cache line)
SKB_HEADS_PER_SLAB = PAGE_SIZE // SKB_HEAD_SIZE   # 21 heads per order-0 slab page
ETH_HLEN = 14
ETH_FCS_LEN = 4

# 3.6 on x86_64 (64-byte cache lines): what __netdev_alloc_skb and SKB_TRUESIZE add.
SMP_CACHE_BYTES = 64
NET_SKB_PAD = 64                # max(32, L1_CACHE_BYTES)
SKB_SHINFO_SIZE = 320           # sizeof(struct skb_shared_info): 48 + 17 frags x 16
SKB_STRUCT_SIZE = 256           # SKB_DATA_ALIGN(sizeof(struct sk_buff))
MAXIMUM_ETHERNET_VLAN_SIZE = 1522
E1000_RXBUFFER_2048 = 2048

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_8021AD = 0x88A8
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17


class DropReason(IntEnum):
    """Why a frame was dropped: the one list every counter in the testbed uses."""

    NOMEM = 1              # no memory for the skb (transmit; an oversize frame's extra pages)
    RESERVE_CAP = 2        # phillips: rx_reserve_used reached rx_reserve
    NOT_MEMALLOC = 3       # phillips: device in reserve, frame not for a SOCK_MEMALLOC socket
    PFMEMALLOC = 4         # gorman: pfmemalloc skb for a non-memalloc socket (PFMemallocDrop)
    PFMEMALLOC_PROTO = 5   # gorman: pfmemalloc skb that is not ARP/IPv4/IPv6/VLAN
    MALFORMED = 6          # packet handler: a frame it cannot parse
    LINK_LOSS = 7          # packet handler: user-space random loss
    FAULT = 8              # packet handler: fault hooks
    RX_NO_BUFFER = 9       # the frame found no posted buffer in the rx ring (rx_no_buffer_count)
    PROTO_MEM = 10         # the socket could not charge it: TCP past tcp_mem (sk_rmem_schedule)


def ceiling_log2(x: int) -> int:
    """``fls(x - 1)``: the 9 Aug 2005 fix (v5 used ``ffs()``, which was grossly wrong)."""
    return (x - 1).bit_length()


def kmalloc_size(size: int) -> int:
    """Bytes kmalloc hands out for ``size`` bytes of skb data (plus the shared info)."""
    return 1 << ceiling_log2(size + SKB_SHINFO_OVERHEAD)


def skb_data_align(x: int) -> int:
    """``SKB_DATA_ALIGN``: round up to a cache line."""
    return (x + SMP_CACHE_BYTES - 1) & -SMP_CACHE_BYTES


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
    """Whole pages charged for one page-mode skb's data of ``size`` bytes (at least one)."""
    pages = _data_pages_cache.get(size)
    if pages is None:
        pages = _data_pages_cache[size] = max(1, -(-kmalloc_size(size) // PAGE_SIZE))
    return pages


def rx_buffer_len(mtu: int) -> int:
    """The receive buffer e1000 6.0.60-k2 (2.6.13) posts for ``mtu``: 2048 up to 1500, else powers of 2."""
    frame = mtu + ETH_HLEN + 4      # header + VLAN tag room, as e1000 sized it
    return max(E1000_RXBUFFER_2048, 1 << ceiling_log2(frame))


def rx_buffer_len_3_6(mtu: int) -> int:
    """The receive buffer e1000 7.3.21 (3.6) posts for ``mtu`` (e1000_sw_init, e1000_change_mtu).

    1522 (``MAXIMUM_ETHERNET_VLAN_SIZE``) for a 1500-byte MTU, 2048 for smaller frames,
    a page for jumbo frames (whose jumbo ring this model does not have).
    """
    max_frame = mtu + ETH_HLEN + ETH_FCS_LEN
    if max_frame in (1518, MAXIMUM_ETHERNET_VLAN_SIZE):
        return MAXIMUM_ETHERNET_VLAN_SIZE
    return E1000_RXBUFFER_2048 if max_frame <= E1000_RXBUFFER_2048 else PAGE_SIZE


def frag_size(buf_len: int) -> int:
    """``fragsz`` of ``__netdev_alloc_skb`` for a ``buf_len`` receive buffer (3.6)."""
    return skb_data_align(buf_len + NET_IP_ALIGN + NET_SKB_PAD) + skb_data_align(SKB_SHINFO_SIZE)


def truesize_page(buf_len: int) -> int:
    """``skb->truesize`` of 2.6.13's ``alloc_skb(buf_len + NET_IP_ALIGN + 16)``."""
    return skb_data_align(buf_len + NET_IP_ALIGN + SKB_SHINFO_OVERHEAD) + SKB_HEAD_SIZE


def truesize_frag(fragsz: int) -> int:
    """``SKB_TRUESIZE(fragsz - shinfo)`` as 3.6's ``build_skb`` sets it."""
    return fragsz - skb_data_align(SKB_SHINFO_SIZE) + SKB_STRUCT_SIZE + skb_data_align(SKB_SHINFO_SIZE)


# tcp_collapse(): a received TCP segment's headroom once TCP has pulled its headers (what
# the collapsed copy keeps in front of the data): the driver's reserve, NET_IP_ALIGN,
# Ethernet, IPv4 and a TCP header with timestamps
TCP_RX_HEADERS = ETH_HLEN + 20 + 32
SKB_SHINFO_SIZE_2_6_13 = 160    # i386: 16 bytes + MAX_SKB_FRAGS 18 x 8-byte skb_frag_t


def collapse_header(mode: str) -> int:
    """``skb_headroom(skb)`` of a queued segment: ``"page"`` 2.6.13 (``dev_alloc_skb``'s 16),
    ``"frag"`` 3.6 (``NET_SKB_PAD``)."""
    pad = SKB_SHINFO_OVERHEAD if mode == "page" else NET_SKB_PAD
    return pad + NET_IP_ALIGN + TCP_RX_HEADERS


def collapse_copy(mode: str) -> int:
    """``SKB_MAX_ORDER(header, 0)``: the payload one collapsed skb holds at most."""
    header = collapse_header(mode)
    if mode == "page":      # 2.6.13: (PAGE_SIZE - X - sizeof(shinfo)) & ~(SMP_CACHE_BYTES - 1)
        return (PAGE_SIZE - header - SKB_SHINFO_SIZE_2_6_13) & -SMP_CACHE_BYTES
    return PAGE_SIZE - header - skb_data_align(SKB_SHINFO_SIZE)   # 3.6: SKB_WITH_OVERHEAD


def collapse_skb(mode: str, nbytes: int) -> tuple[int, int]:
    """(data pages, ``truesize``) of ``alloc_skb(nbytes + header, GFP_ATOMIC)``, the skb
    ``tcp_collapse()`` copies ``nbytes`` of payload into. The data is one ``kmalloc``
    block (a power of two); a block smaller than a page is counted as a page, as the
    model counts every skb's data in whole pages. 2.6.13's ``truesize`` is the aligned
    request + ``sizeof(struct sk_buff)``; 3.6's ``SKB_TRUESIZE(ksize - shinfo)``."""
    size = skb_data_align(nbytes + collapse_header(mode))
    if mode == "page":
        block = 1 << ceiling_log2(size + SKB_SHINFO_SIZE_2_6_13)
        return max(1, block // PAGE_SIZE), size + SKB_HEAD_SIZE
    block = 1 << ceiling_log2(size + skb_data_align(SKB_SHINFO_SIZE))
    return max(1, block // PAGE_SIZE), block + SKB_STRUCT_SIZE


class FragPage:
    """A page the ``netdev_alloc_cache`` carves receive fragments from (3.6).

    ``refs`` are the fragments still in use plus one while the cache holds the page;
    the page returns to the zone when they reach zero. ``pfmemalloc``: the page came
    from under the watermarks (``ALLOC_NO_WATERMARKS``).
    """

    __slots__ = ("refs", "pfmemalloc")

    def __init__(self, pfmemalloc: bool) -> None:
        self.refs = 1
        self.pfmemalloc = pfmemalloc


def dev_unreserve_skb(dev: "NetDev") -> None:
    """Phillips' ``dev_unreserve_skb()``: credit one reserve skb back, never below zero."""
    if dev.rx_reserve_used:
        dev.rx_reserve_used -= 1


class NetDev:
    """``struct net_device`` with its e1000 receive ring: what the memory manager keeps.

    ``rx_reserve`` / ``rx_reserve_used`` are Phillips' per-device cap and count; the
    other policies use ``rx_reserve_used`` for the skbs they took from the reserves on
    this device (so the metrics show one "reserve use" per device). ``reserve_pages``
    is what ``register_netdev`` added with ``adjust_memalloc_reserve()``.

    The ring: ``rx_ring`` slots (RxDescriptors), ``ring`` the posted buffers in the
    order the NIC fills them, ``rx_no_buffer_count`` frames that found none,
    ``alloc_rx_buff_failed`` refills that failed. The receive buffer follows the era
    (``rx_buf_len``; ``skb_pages`` data pages per buffer in page mode, ``frag_size``
    bytes of a page in frag mode, ``truesize``), and ``frag_page``/``frag_offset`` are
    the fragment cache of frag mode.
    """

    __slots__ = ("name", "mtu", "rx_reserve", "rx_reserve_used", "reserve_pages",
                 "rx_buf_len", "skb_pages", "frag_size", "truesize", "frag_pfmemalloc",
                 "rx_ring", "ring", "rx_no_buffer_count", "alloc_rx_buff_failed",
                 "frag_page", "frag_offset", "rx_skbs", "tx_skbs", "registered")

    def __init__(self, name: str, mtu: int, rx_reserve: int, rx_ring: int = 256,
                 era: Optional["EraProfile"] = None) -> None:
        self.name = name
        self.mtu = mtu
        self.rx_reserve = rx_reserve
        self.rx_reserve_used = 0
        self.reserve_pages = 0
        self.rx_ring = rx_ring
        self.ring: deque[Skb] = deque()
        self.rx_no_buffer_count = 0
        self.alloc_rx_buff_failed = 0
        self.frag_page: Optional[FragPage] = None
        self.frag_offset = 0
        self.frag_pfmemalloc = bool(era is not None and era.rx_frag_pfmemalloc)
        frag = era is not None and era.skb_truesize == "frag"
        self.rx_buf_len = rx_buffer_len_3_6(mtu) if frag else rx_buffer_len(mtu)
        self.frag_size = frag_size(self.rx_buf_len) if frag else 0
        if self.frag_size > PAGE_SIZE:      # __netdev_alloc_skb: too big for a fragment,
            self.frag_size = 0              # __alloc_skb(SKB_ALLOC_RX) from kmalloc instead
        self.skb_pages = 0 if self.frag_size else skb_data_pages(self.rx_buf_len + NET_IP_ALIGN)
        self.truesize = truesize_frag(self.frag_size) if self.frag_size else truesize_page(self.rx_buf_len)
        self.rx_skbs = 0        # skbs allocated on the receive path
        self.tx_skbs = 0        # skbs allocated on the transmit path
        self.registered = True

    def __repr__(self) -> str:
        return (f"<NetDev {self.name} mtu={self.mtu} rx_reserve_used={self.rx_reserve_used}"
                f"/{self.rx_reserve} ring={len(self.ring)}/{self.rx_ring} "
                f"reserve_pages={self.reserve_pages}>")


class Skb:
    """One ``struct sk_buff`` as the memory manager sees it: who, how big, from where.

    ``pages`` is the data pages it owns and ``frag`` the page its data is a fragment of
    (both gone once freed); ``truesize`` as the kernel counts it for socket memory;
    ``pfmemalloc`` says the skb carries the kernel's under-the-watermarks mark (gorman);
    ``reserve`` says it is counted in ``dev.rx_reserve_used`` until freed;
    ``ip_proto`` is the IP protocol of a received frame that has no flow (ICMP), else 0;
    ``payload`` and ``unread`` are the payload it brought (``skb->len`` once TCP has
    pulled its headers) and what of it is still unread while it sits in a socket's queue.
    """

    __slots__ = ("dev", "length", "pages", "frag", "truesize", "pfmemalloc", "reserve",
                 "ip_proto", "payload", "unread")

    def __init__(self, dev: NetDev, length: int, pages: int, frag: Optional[FragPage] = None,
                 truesize: int = 0, pfmemalloc: bool = False, reserve: bool = False) -> None:
        self.dev = dev
        self.length = length
        self.pages = pages
        self.frag = frag
        self.truesize = truesize or pages * PAGE_SIZE + SKB_HEAD_SIZE
        self.pfmemalloc = pfmemalloc
        self.reserve = reserve
        self.ip_proto = 0
        self.payload = 0
        self.unread = 0

    def __repr__(self) -> str:
        flags = "".join((" pfmemalloc" if self.pfmemalloc else "", " reserve" if self.reserve else "",
                         " frag" if self.frag is not None else ""))
        return f"<Skb {self.dev.name} len={self.length} pages={self.pages}{flags}>"
