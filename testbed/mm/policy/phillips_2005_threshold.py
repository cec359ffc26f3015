"""``phillips-2005-threshold``: Phillips' patch with the knob from his LWN comment.

"We can adjust the threshold at which non-blockio packets begin to be dropped,
effectively giving non-vm traffic access to part of the reserve." The posted
code had no such knob (its threshold is effectively 0: any reserve skb
outstanding starts the drops). Here the threshold is a fraction of the
reserve, which is the memory below the ``GFP_ATOMIC`` floor (3/8 of a min
watermark that ``adjust_memalloc_reserve`` raised), where only
``__GFP_MEMALLOC`` may go: non-memalloc packets are kept while the pages taken
there are at most ``threshold`` of it, and dropped beyond. ``threshold``
(default 0.5) is a sweep parameter; 0 behaves as ``phillips-2005``, 1 lets
other traffic take the whole reserve.

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
        zone = self.mm.zone                         # (mm lock held)
        taken = zone.mark_atomic - zone.free        # pages of the reserve in use
        return taken > self.threshold * zone.mark_atomic
