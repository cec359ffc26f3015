"""What a policy is: the few hooks the allocator and the receive path call.

The allocator, the skb API and reclaim contain no policy branches; they call
these hooks, and each policy module overrides only what it changes:

``netdev_reserve_pages(dev)``
    pages to add with ``adjust_memalloc_reserve()`` when ``dev`` comes up
    (``register_netdev``), given back when it goes down. Default: none.
``rx_alloc_failed(dev, length, pages)``
    the rest of the receive allocation (``dev_memalloc_skb`` /
    ``__netdev_alloc_skb``) once its first attempt - ``GFP_ATOMIC``, down to
    3/8 of min, which every policy makes and the memory manager inlines - has
    failed. Called with the mm lock held; returns an :class:`Skb` (from the
    reserve) or the :class:`DropReason`. Default: drop, ``NOMEM``.
``sk_filter(skb, sk, ethertype)``
    the protocol step for a received skb: None to deliver, else the reason to
    drop. Default: deliver everything.
``throttle_direct_reclaim(gfp, task)``
    called before direct reclaim by a task that may sleep. Default: nothing.
``storage_rx_mark(dev)``
    the lowest free count a receive allocation for a memalloc (storage) flow on
    ``dev`` may take the zone to, now (mm lock held); the lockup detector asks it.
    Default: the ``GFP_ATOMIC`` floor, 3/8 of min.

Each policy module also sets ``era``, the :class:`~testbed.mm.era.EraProfile` of the
kernel it names; the memory manager's mechanisms read it (``mm.era``), never the
policy's name.

Helpers for subclasses: :meth:`Policy.reserve_estimate` (Phillips' sizing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional, Union

from ..era import EraProfile
from ..gfp import Gfp
from ..skbuff import NET_IP_ALIGN, DropReason, NetDev, Skb, estimate_skb_pages
from ..task import TaskStruct

if TYPE_CHECKING:
    from ..manager import MemoryManager
    from ..sock import Sock

SkbOrDrop = Union[Skb, DropReason]


class Policy:
    """A memory policy for network block I/O. Subclasses set ``name`` and override hooks."""

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    era: ClassVar[EraProfile]       # the named kernel's mechanisms (set by each policy)
    source: Optional[str] = None    # the policy file it was loaded from (None: built in)

    def __init__(self, rx_reserve: int = 50, threshold: float = 0.5,
                 reserve_pages: Optional[int] = None) -> None:
        self.rx_reserve = rx_reserve
        self.threshold = threshold
        self.reserve_pages = reserve_pages
        self.mm: "MemoryManager" = None  # type: ignore[assignment]  # set by attach()

    def attach(self, mm: "MemoryManager") -> None:
        self.mm = mm

    # ---------------------------------------------------------------- hooks
    def netdev_reserve_pages(self, dev: NetDev) -> int:
        return 0

    def rx_alloc_failed(self, dev: NetDev, length: int, pages: int) -> SkbOrDrop:
        return self.mm.count_drop_locked(dev, DropReason.NOMEM, "atomic")

    def sk_filter(self, skb: Skb, sk: Optional["Sock"], ethertype: int) -> Optional[DropReason]:
        return None

    def throttle_direct_reclaim(self, gfp: Gfp, task: TaskStruct) -> None:
        return None

    def storage_rx_mark(self, dev: NetDev) -> int:
        return self.mm.zone.mark_atomic

    # -------------------------------------------------------------- helpers
    def reserve_estimate(self, dev: NetDev) -> int:
        """Pages for ``rx_reserve`` receive skbs of ``dev`` (or the configured override)."""
        if self.reserve_pages is not None:
            return self.reserve_pages
        return estimate_skb_pages(dev.rx_reserve, dev.rx_buf_len + NET_IP_ALIGN)

    def __repr__(self) -> str:
        return f"<policy {self.name}>"
