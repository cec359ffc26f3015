"""Watermarks: the kernel's formulas, figure for figure."""

from __future__ import annotations

import pytest

from testbed.mm import MemoryManager, MMError, calculate_min_free_kbytes, compute_watermarks
from testbed.mm.zone import Zone

GIB_KB = 1 << 20


@pytest.mark.parametrize("lowmem_kb, expected", [
    (1 * GIB_KB, 4096), (2 * GIB_KB, 5792), (4 * GIB_KB, 8192), (16 * GIB_KB, 16384),
])
def test_min_free_kbytes_matches_the_kernel_table(lowmem_kb, expected):
    assert calculate_min_free_kbytes(lowmem_kb) == expected


@pytest.mark.parametrize("lowmem_kb, expected", [
    (1024, 128),                # floor
    (64 * 1024, 1024),          # 64 MiB: int_sqrt(1048576)
    (8 * 1024 * GIB_KB, 262144),  # ceiling (8 TiB)
])
def test_min_free_kbytes_is_clamped(lowmem_kb, expected):
    assert calculate_min_free_kbytes(lowmem_kb) == expected


@pytest.mark.parametrize("memory_mb, wmin, delta", [
    (64, 256, 64),              # min/4 = 64 > 16384*10/10000 = 16
    (1024, 1024, 262),          # 262144 pages: 262 > 256
    (2048, 1448, 524),          # 5792 KiB -> 1448 pages; 524288/1000 = 524 > 362
    (4096, 2048, 1048),
    (16384, 4096, 4194),
])
def test_watermarks_follow_setup_per_zone_wmarks(memory_mb, wmin, delta):
    pages = memory_mb * 256
    zone = Zone(pages)
    assert (zone.wmark_min, zone.wmark_low, zone.wmark_high) == (wmin, wmin + delta, wmin + 2 * delta)
    wm = compute_watermarks(pages, calculate_min_free_kbytes(pages * 4), 10)
    assert (wm.min, wm.low, wm.high) == (wmin, wmin + delta, wmin + 2 * delta)


def test_overrides_and_scale_factor():
    zone = Zone(16384, min_free_kbytes=2048, watermark_scale_factor=100)
    # min 512 pages; delta = max(128, 16384*100/10000 = 163) = 163
    assert (zone.wmark_min, zone.wmark_low, zone.wmark_high) == (512, 675, 838)


def test_atomic_and_high_marks():
    zone = Zone(16384)          # min 256
    assert zone.mark_high == 128                # __GFP_HIGH: half of min
    assert zone.mark_atomic == 96               # GFP_ATOMIC: 3/8 of min


def test_adjust_memalloc_reserve_moves_all_watermarks():
    mm = MemoryManager(16384, policy="none")
    mm.adjust_memalloc_reserve(53)              # 212 KiB
    assert mm.zone.min_free_kbytes + mm.zone.var_free_kbytes == 1024 + 212
    assert mm.zone.wmark_min == 309
    assert mm.zone.wmark_low == 309 + 77 and mm.zone.wmark_high == 309 + 154
    mm.adjust_memalloc_reserve(-53)
    assert (mm.zone.wmark_min, mm.zone.wmark_low, mm.zone.wmark_high) == (256, 320, 384)


def test_adjust_memalloc_reserve_refuses_to_go_negative():
    mm = MemoryManager(16384, policy="none")
    with pytest.raises(MMError, match="negative"):
        mm.adjust_memalloc_reserve(-1)
    assert mm.zone.wmark_min == 256


def test_a_reserve_larger_than_memory_is_refused_and_leaves_the_zone_alone():
    mm = MemoryManager(4096, policy="none")
    with pytest.raises(MMError, match="high watermark"):
        mm.adjust_memalloc_reserve(4096)
    assert mm.zone.wmark_min == calculate_min_free_kbytes(4096 * 4) // 4
