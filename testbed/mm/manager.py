"""The memory manager: the page allocator plus the network's memory API.

:class:`MemoryManager` is what the rest of the storage client holds as ``mm``.
On top of :class:`~testbed.mm.page_alloc.PageAllocator` (zone, counters,
``alloc_pages``) it gives

* the reserve: ``adjust_memalloc_reserve(pages)`` (Phillips: pages added to
  the min watermark, so low and high move too), ``sk_memalloc_socks()``;
* the packet handler's API (docs/architecture.md, "Memory manager for the
  packet handler"): ``register_netdev``, ``unregister_netdev``,
  ``netdev_alloc_skb``, ``alloc_tx_skb``, ``sk_filter``, ``sock_create``,
  ``kfree_skb``, ``kfree_skb_list`` (the two allocations also take the caller's
  ``consumed`` skbs to free first). Each is one lock acquisition and a few
  integer updates; the policy (``testbed.mm.policy``) decides which watermark a
  receive allocation may use and which frames the protocol step drops;
* the block device's buffers: ``pdu_alloc(nbytes, sk)`` / ``pdu_free(nbytes)`` for
  the request buffers the writeback path needs, allocated in the context of the
  task that makes them with the socket's ``sk_allocation``: the reserves only for
  a ``PF_MEMALLOC`` task (reclaim's ``pageout``) or, from 3.6, a memalloc socket;
* ``snapshot()`` for the metrics and ``check_invariants()`` for the tests.

The transmit path: the NIC (the packet handler) cannot see which task queued a
frame, so a frame is allocated as ``GFP_ATOMIC`` unless its socket's
``sk_allocation`` has ``__GFP_MEMALLOC`` (3.6's ``sk_set_memalloc``) or a
``PF_MEMALLOC`` task queued the bytes it carries (:meth:`memalloc_tx_credit`:
``tcp_sendmsg`` allocates in the sender's context). The OOM killer of the era
(:mod:`testbed.mm.oom_kill`) is ``mm.oom``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import MMError
from .gfp import GFP_NOIO, Gfp
from .oom_kill import OomKiller
from .page_alloc import PageAllocator
from .policy import Policy, make_policy
from .skbuff import (SKB_HEADS_PER_SLAB, DropReason, FragPage, NetDev, Skb, dev_unreserve_skb,
                     skb_data_pages)
from .sock import Sock, tcp_mem_limits
from .task import PF, current
from .vmstat import Use
from .zone import PAGE_SHIFT, PAGE_SIZE, Zone

if TYPE_CHECKING:
    from .config import MachineConfig

USE_SKB = Use.SKB
MIN_MTU, MAX_MTU = 68, 65535
TCP_HEADERS = 66        # Ethernet + IPv4 + TCP with timestamps: what a frame carries besides payload


class MemoryManager(PageAllocator):
    """The storage client's emulated memory (one zone) and its network API."""

    def __init__(self, total_pages: int, *, min_free_kbytes: Optional[int] = None,
                 watermark_scale_factor: int = 10, policy: Union[str, Policy] = "gorman-3.6",
                 rx_reserve: int = 50, threshold: float = 0.5,
                 reserve_pages: Optional[int] = None, congestion_wait_s: float = 0.02,
                 oom_kill: Optional[bool] = None,
                 tcp_mem: Optional[tuple[int, int, int]] = None) -> None:
        if isinstance(policy, str):
            policy = make_policy(policy, rx_reserve=rx_reserve, threshold=threshold,
                                 reserve_pages=reserve_pages)
        super().__init__(Zone(total_pages, min_free_kbytes, watermark_scale_factor), policy,
                         congestion_wait_s)
        self.rx_reserve = rx_reserve
        self.netdevs: dict[str, NetDev] = {}
        self.socks: set[Sock] = set()
        # 3.6's memalloc_socks static key as a count: sk_set_memalloc raises it, only
        # sk_clear_memalloc lowers it (never a socket's release: Sock.close)
        self.memalloc_socks = 0
        self.skb_head_pages = 0         # slab pages of skbuff_head_cache
        self.skb_head_room = 0          # free sk_buff heads in them
        # TCP's global limit: sysctl_tcp_mem, tcp_memory_allocated, tcp_memory_pressure
        self.tcp_mem = tuple(tcp_mem) if tcp_mem else tcp_mem_limits(policy.era, total_pages)
        self.tcp_memory_allocated = 0
        self.tcp_memory_pressure = False
        policy.attach(self)
        # out_of_memory(): on where the era's kernel had it, unless the config says otherwise
        if oom_kill is None:
            oom_kill = self.era.oom_killer != "off"
        if oom_kill and self.era.oom_killer == "off":
            raise MMError(f"oom_kill: the {self.era.kernel} profile has no OOM killer")
        self.oom = OomKiller(self) if oom_kill else None

    @classmethod
    def from_config(cls, config: "MachineConfig", oom_kill: Optional[bool] = None) -> "MemoryManager":
        """The memory manager a :class:`MachineConfig` describes (validated first).

        ``oom_kill`` None: the config's ``oom_kill`` if it has one, else the era's default.
        """
        config.validate()
        if oom_kill is None:
            oom_kill = getattr(config, "oom_kill", None)
        return cls(config.total_pages, min_free_kbytes=config.min_free_kbytes,
                   watermark_scale_factor=config.watermark_scale_factor, policy=config.policy,
                   rx_reserve=config.rx_reserve, threshold=config.threshold,
                   reserve_pages=config.reserve_pages,
                   congestion_wait_s=config.congestion_wait_ms / 1000,
                   oom_kill=oom_kill, tcp_mem=config.tcp_mem)

    # ------------------------------------------------------------- reserves
    def adjust_memalloc_reserve(self, pages: int) -> None:
        """Add (or, negative, remove) ``pages`` to the emergency reserve (min watermark)."""
        with self.lock:
            self.adjust_memalloc_reserve_locked(pages)

    def adjust_memalloc_reserve_locked(self, pages: int) -> None:
        zone = self.zone
        kbytes = zone.var_free_kbytes + (pages << (PAGE_SHIFT - 10))
        if kbytes < 0:
            raise MMError(f"adjust_memalloc_reserve({pages}): the reserve would go negative "
                          f"({kbytes} KiB) (EINVAL)")
        old = zone.var_free_kbytes
        zone.var_free_kbytes = kbytes
        try:
            zone.setup_per_zone_wmarks()
        except MMError:
            zone.var_free_kbytes = old
            zone.setup_per_zone_wmarks()
            raise

    def sk_memalloc_socks(self) -> bool:
        """``sk_memalloc_socks()``: was a socket made SOCK_MEMALLOC and not cleared since?"""
        return self.memalloc_socks > 0

    # --------------------------------------------------------------- netdev
    def register_netdev(self, name: str, mtu: int = 1500, rx_ring: Optional[int] = None) -> NetDev:
        """Bring up ``name`` (``e1000_up``): the policy sizes and adds its reserve, then the
        driver posts its receive ring of ``rx_ring`` buffers (None: the era's RxDescriptors).
        """
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise MMError(f"register_netdev({name}): mtu {mtu} is outside {MIN_MTU}..{MAX_MTU}")
        era = self.policy.era
        ring = era.rx_ring if rx_ring is None else rx_ring
        if not isinstance(ring, int) or isinstance(ring, bool) or ring < 1:
            raise MMError(f"register_netdev({name}): rx_ring {ring!r} must be an int >= 1")
        with self.lock:
            if name in self.netdevs:
                raise MMError(f"register_netdev({name}): already registered")
            dev = NetDev(name, mtu, self.rx_reserve, ring, era)
            pages = self.policy.netdev_reserve_pages(dev)
            if pages:
                self.adjust_memalloc_reserve_locked(pages)
                dev.reserve_pages = pages
            self.netdevs[name] = dev
            self.alloc_rx_buffers_locked(dev)
            return dev

    def unregister_netdev(self, dev: NetDev) -> None:
        """Take ``dev`` down: free its ring, give its reserve back. Its skbs may be freed later."""
        with self.lock:
            if self.netdevs.get(dev.name) is not dev:
                raise MMError(f"unregister_netdev({dev.name}): not registered")
            del self.netdevs[dev.name]
            self.clean_rx_ring_locked(dev)
            if dev.reserve_pages:
                self.adjust_memalloc_reserve_locked(-dev.reserve_pages)
                dev.reserve_pages = 0
            dev.registered = False

    # --------------------------------------------------------- receive ring
    def netdev_alloc_skb(self, dev: NetDev, length: int,
                         consumed: Optional[list[Skb]] = None) -> Union[Skb, DropReason]:
        """The skb a received frame of ``length`` bytes lands in, or why there is none.

        ``consumed``: skbs the caller finished with since its last call, freed first
        under the same lock (see :meth:`kfree_skb_list`).

        The NIC puts the frame in the ring's next posted buffer; a frame that finds the
        ring empty is dropped by the NIC (``RX_NO_BUFFER``, ``rx_no_buffer_count``).
        Either way the driver then refills the ring (``e1000_clean_rx_irq`` ends with
        ``alloc_rx_buf``). A frame longer than the buffer - a GSO/GRO super-frame, with
        offloads left on - keeps its buffer and takes the rest as extra pages with
        ``GFP_ATOMIC``, or is dropped ``NOMEM``.
        """
        if length <= 0:
            raise MMError(f"netdev_alloc_skb({dev.name}): length {length} must be > 0")
        with self.lock:
            if consumed:
                self.skb_free_consumed_locked(consumed)
            ring = dev.ring
            if not ring:
                dev.rx_no_buffer_count += 1
                self.alloc_rx_buffers_locked(dev)
                return self.count_drop_locked(dev, DropReason.RX_NO_BUFFER, None)
            skb = ring.popleft()
            skb.length = length
            self.alloc_rx_buffers_locked(dev)
            if length > dev.rx_buf_len:
                return self.rx_oversize_locked(skb, length)
            return skb

    def alloc_rx_buffers_locked(self, dev: NetDev) -> None:
        """``e1000_alloc_rx_buffers``: post a buffer in every empty slot, in order.

        Each one is tried with ``GFP_ATOMIC`` first (``dev_alloc_skb``, and the first
        attempt of ``dev_memalloc_skb``); when that fails the policy's ``rx_alloc_failed``
        decides. The first buffer that cannot be had stops the refill ("Better luck next
        round": the next frame's refill tries again) and counts in ``alloc_rx_buff_failed``.
        """
        ring = dev.ring
        want = dev.rx_ring - len(ring)
        while want:
            if dev.frag_size:
                skb = self.rx_skb_alloc_locked(dev, False)
            else:                           # rx_skb_alloc_locked's page mode, one call less
                skb = self.skb_alloc_locked(dev, dev.rx_buf_len, dev.skb_pages, False, dev.truesize)
            if skb is None:
                skb = self.policy.rx_alloc_failed(dev, dev.rx_buf_len, dev.skb_pages)
                if skb.__class__ is not Skb:
                    dev.alloc_rx_buff_failed += 1
                    return
            ring.append(skb)
            want -= 1

    def clean_rx_ring_locked(self, dev: NetDev) -> None:
        """``e1000_clean_rx_ring``: free the posted buffers and let go of the fragment page.

        The buffers are freed with ``dev_kfree_skb``: no credit to ``rx_reserve_used``
        (Phillips' v6 left this function alone).
        """
        ring = dev.ring
        while ring:
            self.skb_free_locked(ring.popleft())
        page = dev.frag_page
        if page is not None:
            dev.frag_page = None
            self.frag_put_locked(page)

    def rx_skb_alloc_locked(self, dev: NetDev, reserves: bool) -> Optional[Skb]:
        """One receive buffer for ``dev``, allocated as the era's driver does; None if none.

        ``reserves`` False is ``GFP_ATOMIC`` (down to 3/8 of min); True adds
        ``__GFP_MEMALLOC`` (down to zero). Page mode (``dev_alloc_skb``; 3.6's
        ``__alloc_skb`` with ``SKB_ALLOC_RX``): head and data alike, and an skb that
        needed the reserves is ``pfmemalloc`` (``kmalloc_reserve``). Frag mode
        (``__netdev_alloc_skb``): the fragment may come from the reserves, the head
        never (``build_skb`` asks ``GFP_ATOMIC``), and the skb is ``pfmemalloc`` only if
        the era's ``build_skb`` looks at the page (``rx_frag_pfmemalloc``).
        """
        if not dev.frag_size:
            skb = self.skb_alloc_locked(dev, dev.rx_buf_len, dev.skb_pages, reserves, dev.truesize)
            if skb is not None and reserves:
                skb.pfmemalloc = True
            return skb
        page = dev.frag_page
        offset = dev.frag_offset + dev.frag_size
        if page is not None and offset <= PAGE_SIZE:    # room on the cache's page
            dev.frag_offset = offset
            page.refs += 1
        else:
            page = self.netdev_alloc_frag_locked(dev, reserves)
            if page is None:
                return None
        room = self.skb_head_room
        if room:
            self.skb_head_room = room - 1
        elif not self.skb_head_alloc_locked():
            self.frag_put_locked(page)      # build_skb failed: put_page(data)
            return None
        return Skb(dev, dev.rx_buf_len, 0, page, dev.truesize, page.pfmemalloc and dev.frag_pfmemalloc)

    def netdev_alloc_frag_locked(self, dev: NetDev, reserves: bool) -> Optional[FragPage]:
        """``__netdev_alloc_frag``: the next ``frag_size`` bytes of the cache's page.

        When they do not fit, the cache lets go of its page - and takes it again, empty,
        if no fragment of it is left (``recycle``) - or allocates a new one with
        ``alloc_page`` (``GFP_ATOMIC``, ``__GFP_MEMALLOC`` when ``reserves``).
        (``rx_skb_alloc_locked`` takes the common case, room on the page, itself.)
        """
        page = dev.frag_page
        if page is None or dev.frag_offset + dev.frag_size > PAGE_SIZE:
            if page is not None and page.refs == 1:
                dev.frag_offset = 0
            else:
                if page is not None:
                    dev.frag_page = None
                    page.refs -= 1          # its fragments keep it until they are freed
                page = self.frag_page_alloc_locked(reserves)
                if page is None:
                    return None
                dev.frag_page = page
                dev.frag_offset = 0
        dev.frag_offset += dev.frag_size
        page.refs += 1
        return page

    def frag_page_alloc_locked(self, reserves: bool) -> Optional[FragPage]:
        """``alloc_page()`` for the fragment cache; ``pfmemalloc`` if it took the reserves."""
        zone = self.zone
        if self.take_locked(1, zone.mark_atomic, USE_SKB):
            return FragPage(False)
        if reserves and self.take_locked(1, 0, USE_SKB):
            return FragPage(True)
        if zone.free < zone.wmark_low:
            self.wakeup_kswapd_locked()
        return None

    def frag_put_locked(self, page: FragPage) -> None:
        """``put_page()`` on a fragment page: the last reference gives it back."""
        page.refs -= 1
        if not page.refs:
            self.give_locked(1, USE_SKB)

    def skb_head_alloc_locked(self) -> bool:
        """A ``struct sk_buff`` from ``skbuff_head_cache`` with ``GFP_ATOMIC`` (``build_skb``)."""
        room = self.skb_head_room
        if room:
            self.skb_head_room = room - 1
            return True
        if not self.take_locked(1, self.zone.mark_atomic, USE_SKB):
            return False
        self.skb_head_pages += 1
        self.skb_head_room = SKB_HEADS_PER_SLAB - 1
        return True

    def rx_oversize_locked(self, skb: Skb, length: int) -> Union[Skb, DropReason]:
        """A frame longer than its buffer keeps it and takes the rest as pages (GFP_ATOMIC)."""
        dev = skb.dev
        extra = -(-(length - dev.rx_buf_len) // PAGE_SIZE)
        if self.take_locked(extra, self.zone.mark_atomic, USE_SKB):
            skb.pages += extra
            skb.truesize += extra * PAGE_SIZE
            return skb
        self.skb_free_locked(skb)
        return self.count_drop_locked(dev, DropReason.NOMEM, "atomic")

    def alloc_tx_skb(self, dev: NetDev, length: int, sk: Optional[Sock],
                     consumed: Optional[list[Skb]] = None) -> Union[Skb, DropReason]:
        """An skb to send ``length`` bytes for ``sk``: ``GFP_ATOMIC``, or the reserves for a
        socket whose ``sk_allocation`` has ``__GFP_MEMALLOC`` or whose bytes a
        ``PF_MEMALLOC`` task queued. ``consumed``: as for :meth:`netdev_alloc_skb`."""
        if length <= 0:
            raise MMError(f"alloc_tx_skb({dev.name}): length {length} must be > 0")
        pages = skb_data_pages(length)
        with self.lock:
            if consumed:
                self.skb_free_consumed_locked(consumed)
            memalloc = sk is not None and self.tx_memalloc_locked(sk, length)
            skb = self.skb_alloc_locked(dev, length, pages, memalloc)
            if skb is None:
                return self.count_drop_locked(dev, DropReason.NOMEM, "memalloc" if memalloc else "atomic")
            return skb

    def tx_memalloc_locked(self, sk: Sock, length: int) -> bool:
        """May this frame of ``sk`` take the reserves? Uses up the socket's credit."""
        if sk.sk_allocation & Gfp.MEMALLOC:
            return True
        credit = sk.memalloc_tx_bytes
        if credit <= 0:
            return False
        sk.memalloc_tx_bytes = max(0, credit - max(0, length - TCP_HEADERS))
        return True

    def memalloc_tx_credit(self, nbytes: int) -> None:
        """The current task is about to send ``nbytes`` of block I/O.

        ``tcp_sendmsg`` allocates the transmit skbs in the sender's context: a
        ``PF_MEMALLOC`` sender (reclaim's ``pageout``) takes them from the reserves.
        The frames pass the NIC later, so the memalloc (block-I/O) sockets get a
        credit of ``nbytes`` of payload that their next frames draw on.
        """
        if not current().flags & PF.MEMALLOC:
            return
        with self.lock:
            for sk in self.socks:
                if sk.memalloc:
                    sk.memalloc_tx_bytes += nbytes

    def sk_filter(self, skb: Skb, sk: Optional[Sock], ethertype: int) -> Optional[DropReason]:
        """The policy's protocol step: None to deliver, else the reason (the caller frees)."""
        return self.policy.sk_filter(skb, sk, ethertype)

    def kfree_skb(self, skb: Skb) -> None:
        """Free an skb no socket kept (dropped, or sent): ``kfree_skb``, no reserve credit."""
        with self.lock:
            self.skb_free_locked(skb)

    def kfree_skb_list(self, skbs: list[Skb]) -> None:
        """Free the skbs of ``skbs`` in order, under one lock, and empty the list.

        The packet handler's I/O thread collects the skbs of the frames it finished
        (delivered with no socket keeping them, or sent) and hands them back with its
        next allocation (``consumed=``) or here at the end of a burst: one lock round
        trip per frame instead of two. The order of frees and allocations stays the
        one-frame-at-a-time order (frame k's skb is freed before frame k+1's is taken),
        so every allocation that would fail one at a time still fails.
        """
        if skbs:
            with self.lock:
                self.skb_free_list_locked(skbs)

    def skb_free_consumed_locked(self, consumed: list[Skb]) -> None:
        """The consumed list of an allocation: most often the one frame before it."""
        if len(consumed) == 1:
            self.skb_free_locked(consumed.pop())
        else:
            self.skb_free_list_locked(consumed)

    def skb_free_list_locked(self, skbs: list[Skb]) -> None:
        """Free every skb of ``skbs`` (a double free raises after the others are freed)."""
        error: Optional[MMError] = None
        for skb in skbs:
            try:
                self.skb_free_locked(skb)
            except MMError as exc:
                error = error or exc
        skbs.clear()
        if error is not None:
            raise error

    def dev_memfree_skb(self, skb: Skb) -> None:
        """Phillips' ``dev_memfree_skb``: free ``skb`` and credit its device one reserve skb.

        v6 calls it only on the error paths of ``e1000_alloc_rx_buffers`` (a buffer across
        a 64 KiB boundary, errata 23 of the 82545/82546; a DMA mapping that fails that
        check), which the emulated NIC never takes; the credit is whether or not the skb
        came from the reserve, as posted.
        """
        with self.lock:
            self.skb_free_locked(skb)
            dev_unreserve_skb(skb.dev)

    def skb_alloc_locked(self, dev: NetDev, length: int, pages: int, reserves: bool,
                         truesize: int = 0) -> Optional[Skb]:
        """Take an skb's data pages (+ a head slab page when the slab is full).

        ``reserves`` False: the ``GFP_ATOMIC`` mark (3/8 of min); True:
        ``ALLOC_NO_WATERMARKS`` (down to zero). None if the zone cannot.
        """
        zone = self.zone
        room = self.skb_head_room
        need = pages if room else pages + 1
        free = zone.free - need
        if free < (0 if reserves else zone.mark_atomic):
            if zone.free < zone.wmark_low:
                self.wakeup_kswapd_locked()
            return None
        zone.free = free
        if room:
            self.skb_head_room = room - 1
        else:
            self.skb_head_room = SKB_HEADS_PER_SLAB - 1
            self.skb_head_pages += 1
        self.used[USE_SKB] += need
        vm = self.vm
        vm.pgalloc += need
        if free < zone.wmark_low:
            if free < zone.wmark_min:
                vm.pgalloc_below_min += need
            self.wakeup_kswapd_locked()
        return Skb(dev, length, pages, None, truesize)

    def skb_free_locked(self, skb: Skb) -> None:
        pages = skb.pages
        frag = skb.frag
        if not pages and frag is None:
            raise MMError(f"kfree_skb: an skb of {skb.dev.name} (length {skb.length}) was already freed")
        skb.pages = 0
        if frag is not None:
            skb.frag = None
            frag.refs -= 1
            if not frag.refs:               # the last fragment of a page the cache let go of
                pages += 1
        room = self.skb_head_room + 1
        if room == SKB_HEADS_PER_SLAB:      # a whole slab page of free heads: give it back
            self.skb_head_pages -= 1
            room = 0
            pages += 1
        self.skb_head_room = room
        if pages:
            self.zone.free += pages
            self.used[USE_SKB] -= pages
            self.vm.pgfree += pages
            self.pages_freed_locked()
        if skb.reserve:                     # reserve-only, gorman: the reserve-use metric
            skb.reserve = False
            dev_unreserve_skb(skb.dev)

    def count_drop_locked(self, dev: NetDev, reason: DropReason, alloc_class: Optional[str]) -> DropReason:
        """Count a drop (and, for an allocation that failed, the failure of its class)."""
        vm = self.vm
        vm.drops[reason] += 1
        if alloc_class is not None:
            vm.alloc_fail[alloc_class] += 1
        return reason

    # ----------------------------------------------------------------- sock
    def tcp_rmem_schedule(self, sk: Sock, skb: Skb) -> Optional[DropReason]:
        """``tcp_data_queue()``'s charge of a segment with data: None, or ``PROTO_MEM``
        when ``sk_rmem_schedule()`` refuses it (TCP drops it; the sender retransmits)."""
        if sk.rmem_schedule(skb):
            return None
        with self.lock:
            self.vm.drops[DropReason.PROTO_MEM] += 1
        return DropReason.PROTO_MEM

    def enter_tcp_memory_pressure_locked(self) -> None:
        """``tcp_enter_memory_pressure()``: counted once per entry."""
        if not self.tcp_memory_pressure:
            self.tcp_memory_pressure = True
            self.vm.TCPMemoryPressures += 1

    def sock_create(self, name: str) -> Sock:
        """A new emulated socket (``struct sock``), not memalloc."""
        sk = Sock(self, name)
        with self.lock:
            self.socks.add(sk)
        return sk

    # ----------------------------------------------------- block-device I/O
    def pdu_alloc(self, nbytes: int, sk: Optional[Sock] = None) -> bool:
        """Charge a request buffer of ``nbytes`` in the current task's context; False if not now.

        It is allocated with ``sk``'s ``sk_allocation`` (``GFP_NOIO`` without a socket,
        as ``nbd``'s ``sock_xmit`` sets it) and ``__GFP_NORETRY``: one reclaim attempt,
        then the block device retries. The reserves are open to it only through
        ``PF_MEMALLOC`` (reclaim's ``pageout``) or ``__GFP_MEMALLOC`` (a memalloc socket
        from 3.6).
        """
        pages = -(-nbytes // PAGE_SIZE)
        if pages <= 0:
            raise MMError(f"pdu_alloc: nbytes must be > 0 (got {nbytes})")
        gfp = sk.sk_allocation if sk is not None else GFP_NOIO
        return self.alloc_pages(pages, gfp | Gfp.NORETRY, Use.PDU)

    def pdu_free(self, nbytes: int) -> None:
        """Give back a buffer charged with :meth:`pdu_alloc` (same ``nbytes``)."""
        pages = -(-nbytes // PAGE_SIZE)
        if pages <= 0:
            raise MMError(f"pdu_free: nbytes must be > 0 (got {nbytes})")
        with self.lock:
            self.give_locked(pages, Use.PDU)

    # -------------------------------------------------------- introspection
    def snapshot(self) -> dict[str, Any]:
        """The memory state in pages, and every counter, as one dict."""
        with self.lock:
            zone = self.zone
            shrinker = self.shrinker
            return {
                "free": zone.free,
                "total": zone.managed_pages,
                "wmark_min": zone.wmark_min, "wmark_low": zone.wmark_low,
                "wmark_high": zone.wmark_high,
                "file": self.used[Use.FILE], "skb": self.used[Use.SKB],
                "pdu": self.used[Use.PDU], "kernel": self.used[Use.KERNEL],
                "dirty": self.vm.nr_dirty, "writeback": self.vm.nr_writeback,
                "reclaimable": shrinker.nr_reclaimable if shrinker is not None else 0,
                "rmem": sum(sk.rmem_pages for sk in self.socks),
                "tcp_mem_pages": self.tcp_memory_allocated,
                "tcp_mem": list(self.tcp_mem),
                "reserve": {name: dev.rx_reserve_used for name, dev in self.netdevs.items()},
                "reserve_pages": {name: dev.reserve_pages for name, dev in self.netdevs.items()},
                "sk_memalloc_socks": self.memalloc_socks,
                "all_unreclaimable": self.all_unreclaimable,
                **self.vm.snapshot(),
            }

    def check_invariants(self) -> list[str]:
        """Every broken invariant as a sentence (empty when all is well)."""
        problems = []
        with self.lock:
            zone = self.zone
            total = zone.free + sum(self.used)
            if total != zone.managed_pages:
                problems.append(f"lost pages: free {zone.free} + used {self.used} = {total} "
                                f"!= {zone.managed_pages}")
            if zone.free < 0:
                problems.append(f"free pages negative: {zone.free}")
            for use in Use:
                if self.used[use] < 0:
                    problems.append(f"{use.name} pages negative: {self.used[use]}")
            problems += [f"negative counter {name}" for name in self.vm.negative_fields()]
            for dev in self.netdevs.values():
                if dev.rx_reserve_used < 0:
                    problems.append(f"{dev.name}: rx_reserve_used negative")
            if self.memalloc_socks < 0:
                problems.append("memalloc_socks negative")
            check = getattr(self.shrinker, "check_locked", None)
            if check is not None:
                problems += check()
        return problems
