"""Shared fixtures of the memory-manager tests: a local disk, a zone at a chosen level."""

from __future__ import annotations

import os

import pytest

from testbed.blockdev.local import LocalDisk
from testbed.mm import Gfp, MemoryManager, Use


@pytest.fixture
def disk(tmp_path):
    """A 512 MiB sparse LocalDisk, closed after the test."""
    dev = LocalDisk(os.path.join(tmp_path, "disk.img"), 512 << 20)
    yield dev
    dev.close()


def set_free(mm: MemoryManager, target: int) -> None:
    """Bring the zone to exactly ``target`` free pages by taking or giving KERNEL pages."""
    free = mm.zone.free
    if free > target:
        assert mm.alloc_pages(free - target, Gfp.MEMALLOC)
    elif free < target:
        mm.free_pages(target - free, Use.KERNEL)
    assert mm.zone.free == target


def clean_cache(mm: MemoryManager, device, pages: int, name: str = "clean"):
    """A page cache over ``device`` holding ``pages`` clean (written-back) pages."""
    from testbed.mm.page_writeback import DirtyThrottle
    from testbed.mm.pagecache import PageCache
    pc = PageCache(mm, device, DirtyThrottle(mm))
    inode = pc.create(name)
    pc.write(inode, 0, bytes(pages * 4096), throttle=False)
    with mm.lock:                   # write the pages back by hand (no flusher, no device I/O)
        requests = [req for run in pc.collect_runs_locked(inode, pages, 64)
                    for req in pc.start_writeback_locked(inode, run)]
    for req in requests:
        pc.end_writeback(req, None)     # completion: clean, on the LRU
    assert pc.nr_reclaimable == pages
    return pc
