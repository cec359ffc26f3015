"""``phillips-2005-threshold``: Phillips' patch with the knob from his LWN comment.

"We can adjust the threshold at which non-blockio packets begin to be dropped,
effectively giving non-vm traffic access to part of the reserve." The posted code has no
such knob: it drops as soon as the device's count is non-zero. Here the threshold is
on the device's reserve, in its own unit: a non-memalloc packet is dropped only while
``rx_reserve_used > threshold * rx_reserve`` (the count read before the packet's own
credit-back). ``threshold`` 0 is the posted rule, so the policy is then exactly
``phillips-2005``; 1 drops nothing short of the cap. The cap, the refill and the
credit-back are ``phillips-2005``'s, unchanged.

What the posted credit-back does to such a count: every packet the patched handlers
see while the count is non-zero credits one skb back, delivered or dropped, from the
reserve or not; a packet delivered to a socket and held there no longer counts. The
count is not reserve memory in use but the refills from the reserve not yet matched by
a checked packet: with every frame checked once, each refill's +1 meets a check's -1
and the count stays low, below any threshold of a few skbs, while held bulk data drains
the reserve unseen (nothing is dropped until the pages run out). It climbs only with
frames no handler checks (UDP or TCP with no socket, ARP, IPv6, other protocols), so
the threshold trips on a flood of those, not on the memory other traffic holds.
"""

from __future__ import annotations

from ..era import LINUX_2_6_13
from ..skbuff import NetDev
from .phillips_2005 import Phillips2005


class Phillips2005Threshold(Phillips2005):
    name = "phillips-2005-threshold"
    description = "phillips-2005, non-memalloc traffic dropped only past threshold x rx_reserve"
    era = LINUX_2_6_13

    def drops_non_memalloc(self, dev: NetDev, used: int) -> bool:
        return used > self.threshold * dev.rx_reserve
