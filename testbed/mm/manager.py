"""The memory manager: the page allocator plus the network's memory API.

:class:`MemoryManager` is what the rest of the storage client holds as ``mm``.
On top of :class:`~testbed.mm.page_alloc.PageAllocator` (zone, counters,
``alloc_pages``) it gives

* the reserve: ``adjust_memalloc_reserve(pages)`` (Phillips: pages added to
  the min watermark, so low and high move too), ``sk_memalloc_socks()``;
* the packet handler's API (docs/architecture.md, "Memory manager for the
  packet handler"): ``register_netdev``, ``unregister_netdev``,
  ``netdev_alloc_skb``, ``alloc_tx_skb``, ``sk_filter``, ``sock_create``,
  ``kfree_skb``. Each is one lock acquisition and a few integer updates; the
  policy (``testbed.mm.policy``) decides which watermark a receive allocation
  may use and which frames the protocol step drops;
* the block device's buffers: ``pdu_alloc(nbytes)`` / ``pdu_free(nbytes)`` for
  the request buffers the writeback path needs (charged in the flusher's
  ``PF_MEMALLOC`` context: they may use the reserves under every policy);
* ``snapshot()`` for the metrics and ``check_invariants()`` for the tests.

The transmit path is the same under every policy: a memalloc socket's frames
are sent in the writeback task's ``PF_MEMALLOC`` context (``ALLOC_NO_WATERMARKS``),
any other socket's with ``GFP_ATOMIC``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import MMError
from .page_alloc import PageAllocator
from .policy import Policy, make_policy
from .skbuff import NET_IP_ALIGN, SKB_HEADS_PER_SLAB, DropReason, NetDev, Skb, skb_data_pages
from .sock import Sock
from .vmstat import Use
from .zone import PAGE_SHIFT, PAGE_SIZE, Zone

if TYPE_CHECKING:
    from .config import MachineConfig

USE_SKB = Use.SKB
MIN_MTU, MAX_MTU = 68, 65535


class MemoryManager(PageAllocator):
    """The storage client's emulated memory (one zone) and its network API."""

    def __init__(self, total_pages: int, *, min_free_kbytes: Optional[int] = None,
                 watermark_scale_factor: int = 10, policy: Union[str, Policy] = "gorman-3.6",
                 rx_reserve: int = 50, threshold: float = 0.5,
                 reserve_pages: Optional[int] = None, congestion_wait_s: float = 0.02) -> None:
        if isinstance(policy, str):
            policy = make_policy(policy, rx_reserve=rx_reserve, threshold=threshold,
                                 reserve_pages=reserve_pages)
        super().__init__(Zone(total_pages, min_free_kbytes, watermark_scale_factor), policy,
                         congestion_wait_s)
        self.rx_reserve = rx_reserve
        self.netdevs: dict[str, NetDev] = {}
        self.socks: set[Sock] = set()
        self.memalloc_socks = 0         # the memalloc_socks_key static branch, as a count
        self.skb_head_pages = 0         # slab pages of skbuff_head_cache
        self.skb_head_room = 0          # free sk_buff heads in them
        policy.attach(self)

    @classmethod
    def from_config(cls, config: "MachineConfig") -> "MemoryManager":
        """The memory manager a :class:`MachineConfig` describes (validated first)."""
        config.validate()
        return cls(config.total_pages, min_free_kbytes=config.min_free_kbytes,
                   watermark_scale_factor=config.watermark_scale_factor, policy=config.policy,
                   rx_reserve=config.rx_reserve, threshold=config.threshold,
                   reserve_pages=config.reserve_pages,
                   congestion_wait_s=config.congestion_wait_ms / 1000)

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
        """Is any socket SOCK_MEMALLOC?"""
        return self.memalloc_socks > 0

    # --------------------------------------------------------------- netdev
    def register_netdev(self, name: str, mtu: int = 1500) -> NetDev:
        """Bring up ``name``: the policy sizes and adds its reserve."""
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise MMError(f"register_netdev({name}): mtu {mtu} is outside {MIN_MTU}..{MAX_MTU}")
        with self.lock:
            if name in self.netdevs:
                raise MMError(f"register_netdev({name}): already registered")
            dev = NetDev(name, mtu, self.rx_reserve)
            pages = self.policy.netdev_reserve_pages(dev)
            if pages:
                self.adjust_memalloc_reserve_locked(pages)
                dev.reserve_pages = pages
            self.netdevs[name] = dev
            return dev

    def unregister_netdev(self, dev: NetDev) -> None:
        """Take ``dev`` down and give its reserve back. Its skbs may still be freed later."""
        with self.lock:
            if self.netdevs.get(dev.name) is not dev:
                raise MMError(f"unregister_netdev({dev.name}): not registered")
            del self.netdevs[dev.name]
            if dev.reserve_pages:
                self.adjust_memalloc_reserve_locked(-dev.reserve_pages)
                dev.reserve_pages = 0
            dev.registered = False

    # ------------------------------------------------------------------ skb
    def netdev_alloc_skb(self, dev: NetDev, length: int) -> Union[Skb, DropReason]:
        """An skb for a received frame of ``length`` bytes, or why there is none.

        Every policy starts with ``GFP_ATOMIC`` (down to 3/8 of min, no
        reserves); that attempt is inlined here because it runs per frame. Only
        when it fails does the policy's ``rx_alloc_failed`` decide.
        """
        if length <= dev.rx_buf_len:
            if length <= 0:
                raise MMError(f"netdev_alloc_skb({dev.name}): length {length} must be > 0")
            pages = dev.skb_pages
        else:
            pages = skb_data_pages(length + NET_IP_ALIGN)
        with self.lock:
            zone = self.zone
            room = self.skb_head_room
            need = pages if room else pages + 1
            free = zone.free - need
            if free < zone.mark_atomic:
                self.wakeup_kswapd_locked()
                return self.policy.rx_alloc_failed(dev, length, pages)
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
            return Skb(dev, length, pages)

    def alloc_tx_skb(self, dev: NetDev, length: int, sk: Optional[Sock]) -> Union[Skb, DropReason]:
        """An skb to send ``length`` bytes for ``sk``: memalloc sockets may use the reserves."""
        if length <= 0:
            raise MMError(f"alloc_tx_skb({dev.name}): length {length} must be > 0")
        pages = skb_data_pages(length)
        memalloc = sk is not None and sk.memalloc
        with self.lock:
            skb = self.skb_alloc_locked(dev, length, pages, memalloc)
            if skb is None:
                return self.count_drop_locked(dev, DropReason.NOMEM, "memalloc" if memalloc else "atomic")
            return skb

    def sk_filter(self, skb: Skb, sk: Optional[Sock], ethertype: int) -> Optional[DropReason]:
        """The policy's protocol step: None to deliver, else the reason (the caller frees)."""
        return self.policy.sk_filter(skb, sk, ethertype)

    def kfree_skb(self, skb: Skb) -> None:
        """Free an skb no socket kept (dropped, or sent)."""
        with self.lock:
            self.skb_free_locked(skb)

    def skb_alloc_locked(self, dev: NetDev, length: int, pages: int, reserves: bool) -> Optional[Skb]:
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
        return Skb(dev, length, pages)

    def skb_free_locked(self, skb: Skb) -> None:
        pages = skb.pages
        if not pages:
            raise MMError(f"kfree_skb: an skb of {skb.dev.name} (length {skb.length}) was already freed")
        skb.pages = 0
        room = self.skb_head_room + 1
        if room == SKB_HEADS_PER_SLAB:      # a whole slab page of free heads: give it back
            self.skb_head_pages -= 1
            room = 0
            pages += 1
        self.skb_head_room = room
        self.zone.free += pages
        self.used[USE_SKB] -= pages
        self.vm.pgfree += pages
        if skb.reserve:
            skb.reserve = False
            dev = skb.dev
            if dev.rx_reserve_used:
                dev.rx_reserve_used -= 1        # dev_memfree_skb(): credit the device back

    def count_drop_locked(self, dev: NetDev, reason: DropReason, alloc_class: Optional[str]) -> DropReason:
        """Count a drop (and, for an allocation that failed, the failure of its class)."""
        vm = self.vm
        vm.drops[reason] += 1
        if alloc_class is not None:
            vm.alloc_fail[alloc_class] += 1
        return reason

    # ----------------------------------------------------------------- sock
    def sock_create(self, name: str) -> Sock:
        """A new emulated socket (``struct sock``), not memalloc."""
        sk = Sock(self, name)
        with self.lock:
            self.socks.add(sk)
        return sk

    # ----------------------------------------------------- block-device I/O
    def pdu_alloc(self, nbytes: int) -> bool:
        """Charge a request buffer of ``nbytes`` for writeback; False if the zone is empty."""
        pages = -(-nbytes // PAGE_SIZE)
        if pages <= 0:
            raise MMError(f"pdu_alloc: nbytes must be > 0 (got {nbytes})")
        with self.lock:
            if self.take_locked(pages, 0, Use.PDU):
                return True
            self.vm.alloc_fail["memalloc"] += 1
            return False

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
                "reserve": {name: dev.rx_reserve_used for name, dev in self.netdevs.items()},
                "reserve_pages": {name: dev.reserve_pages for name, dev in self.netdevs.items()},
                "sk_memalloc_socks": self.memalloc_socks,
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
