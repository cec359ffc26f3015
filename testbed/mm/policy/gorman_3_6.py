"""``gorman-3.6``: Mel Gorman's swap-over-NBD series, mainline since Linux 3.6.

* No separate reserve: the region under the min watermark is the reserve
  (the admin sizes it with ``min_free_kbytes``).
* Receive allocation (e1000's ring refill, ``__netdev_alloc_skb``): only if
  ``sk_memalloc_socks()`` does it add ``__GFP_MEMALLOC``, so that a refill
  ``GFP_ATOMIC`` cannot serve retries with ``ALLOC_NO_WATERMARKS``; until some
  socket is memalloc, no receive allocation touches the reserves. Whether the skb
  is then ``pfmemalloc`` is the allocator's (``MemoryManager.rx_skb_alloc_locked``):
  an skb from ``__alloc_skb``/``kmalloc_reserve`` is; one that ``build_skb`` made
  on a fragment of a reserve page (e1000 at a 1500-byte MTU) is not, in 3.6 -
  ``build_skb`` looks at the page only from 4.0 (the era's ``rx_frag_pfmemalloc``) -
  and then nothing below drops it. ``rx_reserve_used`` counts the buffers the
  retry allocated, until freed (a metric).
* ``__netif_receive_skb``: a pfmemalloc skb whose ethertype is not ARP, IPv4,
  IPv6, 802.1Q or 802.1AD is dropped (``PFMEMALLOC_PROTO``).
* ``sk_filter_trim_cap``: a pfmemalloc skb for a socket without
  ``SOCK_MEMALLOC`` is dropped (``PFMEMALLOC``) and ``PFMemallocDrop`` counts
  it. A frame with no socket (ARP, ICMP) never reaches ``sk_filter``.
* ``throttle_direct_reclaim``: while free pages are at most half of min
  (``allow_direct_reclaim`` false), a task about to enter direct reclaim waits
  on ``pfmemalloc_wait`` for kswapd (``pgscan_direct_throttle`` counts it);
  callers without ``__GFP_FS`` wait at most one second (HZ); kernel threads are
  not throttled; a hopeless node (``kswapd_failures >= 16``) throttles nobody.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from ..era import LINUX_3_6
from ..gfp import Gfp
from ..skbuff import ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, DropReason, NetDev, Skb
from ..task import PF, TaskStruct
from .base import Policy, SkbOrDrop

if TYPE_CHECKING:
    from ..sock import Sock

PFMEMALLOC_PROTOCOLS = frozenset((ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD))
THROTTLE_NOFS_TIMEOUT_S = 1.0       # HZ: how long a !__GFP_FS caller may be held
THROTTLE_STEP_S = 0.1               # re-check period of a throttled task


class Gorman36(Policy):
    name = "gorman-3.6"
    description = "pfmemalloc skbs from under min, only for SOCK_MEMALLOC sockets; throttle_direct_reclaim"
    era = LINUX_3_6

    def rx_alloc_failed(self, dev: NetDev, length: int, pages: int) -> SkbOrDrop:
        mm = self.mm
        if not mm.memalloc_socks:
            return mm.count_drop_locked(dev, DropReason.NOMEM, "atomic")
        skb = mm.rx_skb_alloc_locked(dev, True)        # gfp_mask |= __GFP_MEMALLOC
        if skb is None:
            return mm.count_drop_locked(dev, DropReason.NOMEM, "memalloc")
        skb.reserve = True
        dev.rx_reserve_used += 1
        return skb

    def storage_rx_mark(self, dev: NetDev) -> int:
        """Down to zero once a socket is memalloc; before that, GFP_ATOMIC only."""
        return 0 if self.mm.memalloc_socks else self.mm.zone.mark_atomic

    def sk_filter(self, skb: Skb, sk: Optional["Sock"], ethertype: int) -> Optional[DropReason]:
        if not skb.pfmemalloc:
            return None
        mm = self.mm
        if ethertype not in PFMEMALLOC_PROTOCOLS:
            with mm.lock:
                return mm.count_drop_locked(skb.dev, DropReason.PFMEMALLOC_PROTO, None)
        if sk is None or sk.memalloc:
            return None
        with mm.lock:
            mm.vm.PFMemallocDrop += 1
            return mm.count_drop_locked(skb.dev, DropReason.PFMEMALLOC, None)

    def throttle_direct_reclaim(self, gfp: Gfp, task: TaskStruct) -> None:
        if task.flags & PF.KTHREAD:
            return
        mm = self.mm
        with mm.lock:
            if mm.allow_direct_reclaim_locked():
                return
            mm.vm.pgscan_direct_throttle += 1
            mm.vm.nr_throttled_reclaim += 1
            try:
                deadline = time.monotonic() + THROTTLE_NOFS_TIMEOUT_S if not gfp & Gfp.FS else None
                while not mm.allow_direct_reclaim_locked():
                    mm.check_stopping()
                    step = THROTTLE_STEP_S
                    if deadline is not None:
                        step = min(step, deadline - time.monotonic())
                        if step <= 0:
                            return
                    mm.pfmemalloc_wait.wait(step)
            finally:
                mm.vm.nr_throttled_reclaim -= 1
