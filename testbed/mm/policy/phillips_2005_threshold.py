"""``phillips-2005-threshold``: Phillips' patch with the knob from his LWN comment.

"We can adjust the threshold at which non-blockio packets begin to be dropped,
effectively giving non-vm traffic access to part of the reserve." The posted
code had no such knob (its threshold is effectively 0: any reserve skb
outstanding starts the drops). Here the threshold is a fraction of the
device's reserve *pages*: non-memalloc packets are kept while the reserve in
use - the pages taken below the ``GFP_ATOMIC`` floor, where only
``__GFP_MEMALLOC`` may go - is at most ``threshold * reserve_pages``, and
dropped beyond it. ``threshold`` (default 0.5) is a sweep parameter; 0 behaves
as ``phillips-2005``, 1 lets other traffic take the whole reserve.

It is measured in pages, not in ``rx_reserve_used``, because the posted
patch credits a reserve skb back once per delivered packet
(``dev_unreserve_skb``): a delivered packet that then sits in a socket no
longer counts, so a count-based threshold would let held bulk data drain the
reserve unseen. Everything else - the cap, the credit-back - is
``phillips-2005``.
"""

from __future__ import annotations

from ..skbuff import NetDev
from .phillips_2005 import Phillips2005


class Phillips2005Threshold(Phillips2005):
    name = "phillips-2005-threshold"
    description = "phillips-2005, non-memalloc traffic may use a fraction of the reserve"

    def drops_non_memalloc(self, dev: NetDev, used: int) -> bool:
        zone = self.mm.zone
        in_use = zone.mark_atomic - zone.free      # reserve pages taken (mm lock held)
        return in_use > self.threshold * dev.reserve_pages
