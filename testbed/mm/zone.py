"""One zone of emulated 4 KiB pages and its watermarks.

The storage client's memory is one ``ZONE_NORMAL`` of ``managed_pages`` pages;
only the number of free pages is kept (no page structs), so taking and giving
back pages is an integer update under the memory manager's lock.

Watermarks are computed as ``setup_per_zone_wmarks()`` does for a lone zone:

* ``min_free_kbytes`` defaults to ``clamp(int_sqrt(lowmem_kbytes * 16), 128,
  262144)`` (``calculate_min_free_kbytes``: 1 GiB gives 4096 KiB, 2 GiB 5792,
  4 GiB 8192, 16 GiB 16384);
* ``WMARK_MIN`` is ``(min_free_kbytes + var_free_kbytes) >> (PAGE_SHIFT - 10)``
  pages, where ``var_free_kbytes`` holds what ``adjust_memalloc_reserve()``
  added (Phillips' v6: the sysctl no longer overwrites in-kernel adjustments);
* ``d = max(min / 4, managed * watermark_scale_factor / 10000)``,
  ``WMARK_LOW = min + d``, ``WMARK_HIGH = min + 2 d``.

Two derived marks serve the slow path: ``mark_high`` (``__GFP_HIGH``: half of
min) and ``mark_atomic`` (``GFP_ATOMIC``: 3/8 of min).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import MMError
from .gfp import AllocFlags, slowpath_mark

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

MIN_FREE_KBYTES_FLOOR = 128
MIN_FREE_KBYTES_CEILING = 262144


def int_sqrt(x: int) -> int:
    """The kernel's ``int_sqrt``: the floor of the square root."""
    return math.isqrt(x)


def calculate_min_free_kbytes(lowmem_kbytes: int) -> int:
    """``min_free_kbytes`` for a machine with ``lowmem_kbytes`` of low memory."""
    value = int_sqrt(lowmem_kbytes * 16)
    return max(MIN_FREE_KBYTES_FLOOR, min(value, MIN_FREE_KBYTES_CEILING))


@dataclass(frozen=True)
class Watermarks:
    """A zone's watermarks, in pages."""

    min: int
    low: int
    high: int


def compute_watermarks(managed_pages: int, min_free_kbytes: int,
                       watermark_scale_factor: int) -> Watermarks:
    """``__setup_per_zone_wmarks()`` for a single lowmem zone."""
    wmin = min_free_kbytes >> (PAGE_SHIFT - 10)
    delta = max(wmin >> 2, managed_pages * watermark_scale_factor // 10000)
    return Watermarks(min=wmin, low=wmin + delta, high=wmin + 2 * delta)


class Zone:
    """Free-page count and watermarks of the one zone. Callers hold the mm lock."""

    def __init__(self, managed_pages: int, min_free_kbytes: int | None = None,
                 watermark_scale_factor: int = 10) -> None:
        if managed_pages <= 0:
            raise MMError(f"zone: managed_pages must be > 0 (got {managed_pages})")
        self.managed_pages = managed_pages
        self.free = managed_pages
        if min_free_kbytes is None:
            min_free_kbytes = calculate_min_free_kbytes(managed_pages << (PAGE_SHIFT - 10))
        self.min_free_kbytes = min_free_kbytes
        self.var_free_kbytes = 0
        self.watermark_scale_factor = watermark_scale_factor
        self.wmark_min = self.wmark_low = self.wmark_high = 0
        self.mark_high = self.mark_atomic = 0
        self.setup_per_zone_wmarks()

    def setup_per_zone_wmarks(self) -> None:
        """Recompute the watermarks after a change of the reserve."""
        wm = compute_watermarks(self.managed_pages, self.min_free_kbytes + self.var_free_kbytes,
                                self.watermark_scale_factor)
        if wm.high >= self.managed_pages:
            raise MMError(f"zone: high watermark {wm.high} pages is not below the zone's "
                          f"{self.managed_pages} pages (min_free_kbytes too large)")
        self.wmark_min, self.wmark_low, self.wmark_high = wm.min, wm.low, wm.high
        self.mark_high = slowpath_mark(wm.min, AllocFlags.HIGH)
        self.mark_atomic = slowpath_mark(wm.min, AllocFlags.HIGH | AllocFlags.HARDER)

    @property
    def watermarks(self) -> Watermarks:
        return Watermarks(self.wmark_min, self.wmark_low, self.wmark_high)

    def watermark_ok(self, nr_pages: int, mark: int) -> bool:
        """``__zone_watermark_ok``: may ``nr_pages`` go, leaving at least ``mark`` free?"""
        return self.free - nr_pages >= mark
