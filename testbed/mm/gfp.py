"""gfp flags, allocation flags and the watermark each allocation may use.

A ``gfp_t`` says what the caller allows the allocator to do. Python mangles
names that start with two underscores inside class bodies, so the kernel's
``__GFP_<NAME>`` bits are the members of one IntFlag, :class:`Gfp`, and
``Gfp.<NAME>`` *is* ``__GFP_<NAME>`` (``Gfp.MEMALLOC`` is ``__GFP_MEMALLOC``).
The bit values are the kernel's (include/linux/gfp_types.h); ``__GFP_MEMALLOC``
was ``0x20000`` already in Phillips' 2005 patch. The composite masks keep their
kernel names: ``GFP_ATOMIC``, ``GFP_KERNEL``, ``GFP_NOIO``, ``GFP_NOFS``,
``GFP_NOWAIT``.

How a request becomes a watermark (mm/page_alloc.c, one zone):

* fast path: the free pages left after the allocation must be at least
  ``WMARK_LOW``;
* slow path (after waking kswapd): ``WMARK_MIN``, lowered by half for
  ``__GFP_HIGH`` (``ALLOC_HIGH``) and by a further quarter for callers that
  cannot sleep (``ALLOC_HARDER``): ``GFP_ATOMIC`` may go down to 3/8 of min;
* ``ALLOC_NO_WATERMARKS`` (``__gfp_pfmemalloc_flags``): ``__GFP_NOMEMALLOC``
  forbids it; ``__GFP_MEMALLOC`` grants it; so does ``PF_MEMALLOC`` of the
  current task outside interrupt context. It may take the zone to zero.
"""

from __future__ import annotations

from enum import IntFlag


class Gfp(IntFlag):
    """The ``__GFP_*`` bits: ``Gfp.HIGH`` is ``__GFP_HIGH`` and so on."""

    HIGH = 0x20             # __GFP_HIGH: may use half of the min reserve (ALLOC_HIGH)
    IO = 0x40               # __GFP_IO: reclaim may start physical I/O
    FS = 0x80               # __GFP_FS: reclaim may call into the filesystem
    DIRECT_RECLAIM = 0x400  # __GFP_DIRECT_RECLAIM: the caller may sleep and reclaim
    KSWAPD_RECLAIM = 0x800  # __GFP_KSWAPD_RECLAIM: wake kswapd when below low
    NOWARN = 0x2000         # __GFP_NOWARN: a failure is not reported
    NORETRY = 0x10000       # __GFP_NORETRY: one reclaim attempt, then fail
    MEMALLOC = 0x20000      # __GFP_MEMALLOC: ALLOC_NO_WATERMARKS (the reserves)
    NOMEMALLOC = 0x80000    # __GFP_NOMEMALLOC: never the reserves, whatever else says so

    RECLAIM = DIRECT_RECLAIM | KSWAPD_RECLAIM  # __GFP_RECLAIM


GFP_ATOMIC = Gfp.HIGH | Gfp.KSWAPD_RECLAIM
GFP_NOWAIT = Gfp.KSWAPD_RECLAIM
GFP_NOIO = Gfp.RECLAIM
GFP_NOFS = Gfp.RECLAIM | Gfp.IO
GFP_KERNEL = Gfp.RECLAIM | Gfp.IO | Gfp.FS


class AllocFlags(IntFlag):
    """The allocator's internal ``ALLOC_*`` flags (mm/internal.h)."""

    WMARK_MIN = 0x0
    WMARK_LOW = 0x1
    NO_WATERMARKS = 0x4     # ALLOC_NO_WATERMARKS
    HARDER = 0x10           # ALLOC_HARDER: atomic callers, a further quarter of min
    HIGH = 0x20             # ALLOC_HIGH: __GFP_HIGH, half of min


def gfp_to_alloc_flags(gfp: Gfp) -> AllocFlags:
    """The slow path's flags for ``gfp`` (watermark min, HIGH, HARDER)."""
    flags = AllocFlags.WMARK_MIN
    if gfp & Gfp.HIGH:
        flags |= AllocFlags.HIGH
    if not gfp & Gfp.DIRECT_RECLAIM:
        flags |= AllocFlags.HARDER
    return flags


def gfp_pfmemalloc_allowed(gfp: Gfp, task_memalloc: bool, in_interrupt: bool = False) -> bool:
    """``__gfp_pfmemalloc_flags() != 0``: may this request ignore the watermarks?"""
    if gfp & Gfp.NOMEMALLOC:
        return False
    if gfp & Gfp.MEMALLOC:
        return True
    return task_memalloc and not in_interrupt


def slowpath_mark(wmark_min: int, flags: AllocFlags) -> int:
    """The free pages that must remain after a slow-path allocation (__zone_watermark_ok)."""
    mark = wmark_min
    if flags & AllocFlags.HIGH:
        mark -= mark // 2
    if flags & AllocFlags.HARDER:
        mark -= mark // 4
    return mark


def gfp_class(gfp: Gfp, no_watermarks: bool = False) -> str:
    """The name a failure is counted under: memalloc, atomic, nowait, noio, nofs, kernel."""
    if no_watermarks:
        return "memalloc"
    if not gfp & Gfp.DIRECT_RECLAIM:
        return "atomic" if gfp & Gfp.HIGH else "nowait"
    if not gfp & Gfp.IO:
        return "noio"
    if not gfp & Gfp.FS:
        return "nofs"
    return "kernel"
