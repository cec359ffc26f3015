"""``none``: the 2005 vanilla kernel - no reserve for the network.

A received frame gets a ``GFP_ATOMIC`` skb, which may dip to 3/8 of the min
watermark and then fails: the frame is dropped (``NOMEM``), whoever it was
for - the acknowledgement that would have freed memory included. There is no
protocol step. Everything is the base class's default.
"""

from __future__ import annotations

from ..era import LINUX_2_6_13
from .base import Policy


class NonePolicy(Policy):
    name = "none"
    description = "2005 vanilla: GFP_ATOMIC only, drop on failure"
    era = LINUX_2_6_13
