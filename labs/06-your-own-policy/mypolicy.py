"""My policy for lab 6. Edit this file: it is what `testbed run flood.yaml` runs.

Write one class, a subclass of Policy, and override the hooks you change; every hook
you leave out does what the base class does (the 2005 vanilla kernel: no reserve,
drop a frame when GFP_ATOMIC fails, deliver everything). The hooks and who calls them
are in testbed/mm/policy/base.py; the five built-in policies next to it are worked
examples (phillips_2005.py is the closest to what this lab asks).
"""

from __future__ import annotations

from typing import Optional

from testbed.mm.era import LINUX_2_6_13
from testbed.mm.policy.base import Policy, SkbOrDrop
from testbed.mm.skbuff import DropReason


class MyPolicy(Policy):
    name = "my-policy"
    description = "describe your policy in one line"
    era = LINUX_2_6_13          # the kernel whose mechanisms it runs on (or LINUX_3_6)

    def netdev_reserve_pages(self, dev) -> int:
        """Pages to add to the reserve when `dev` comes up (0: no reserve)."""
        return 0

    def rx_alloc_failed(self, dev, length: int, pages: int) -> SkbOrDrop:
        """GFP_ATOMIC could not give `dev` a receive buffer: an Skb, or a DropReason."""
        return self.mm.count_drop_locked(dev, DropReason.NOMEM, "atomic")

    def sk_filter(self, skb, sk, ethertype: int) -> Optional[DropReason]:
        """A received skb, the socket it is for (None: no socket): None delivers it."""
        return None

    def storage_rx_mark(self, dev) -> int:
        """The lowest free page count a storage frame's buffer on `dev` may take now."""
        return self.mm.zone.mark_atomic
