"""``phillips-2005-threshold``: Phillips' patch with the knob from his LWN comment.

"We can adjust the threshold at which non-blockio packets begin to be dropped,
effectively giving non-vm traffic access to part of the reserve." The posted
code had no such knob (its threshold is effectively 0); here non-memalloc
packets are dropped only once ``rx_reserve_used`` exceeds ``threshold *
rx_reserve`` (``threshold`` is a fraction, default 0.5, a sweep parameter).
Everything else - the cap, the credit-back - is ``phillips-2005``.
"""

from __future__ import annotations

from ..skbuff import NetDev
from .phillips_2005 import Phillips2005


class Phillips2005Threshold(Phillips2005):
    name = "phillips-2005-threshold"
    description = "phillips-2005, non-memalloc traffic may use a fraction of the reserve"

    def drops_non_memalloc(self, dev: NetDev, used: int) -> bool:
        return used > self.threshold * dev.rx_reserve
