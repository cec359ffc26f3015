"""Dirty limits and balance_dirty_pages() of 3.2 on: throttling between the limits.

2.6.13's get_dirty_limits() and balance_dirty_pages() are tested in test_era.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from testbed.mm import MemoryManager
from testbed.mm.flusher import Flusher
from testbed.mm.page_writeback import (MAX_PAUSE_S, DirtyLimits, DirtyThrottle, dirty_limits,
                                       dirty_pause, pos_ratio)
from testbed.mm.pagecache import PageCache

from .test_throttle import wait_for


def test_limits_are_ratios_of_dirtyable_memory():
    lim = dirty_limits(10000, 10, 20)
    assert (lim.bg_thresh, lim.thresh, lim.freerun, lim.setpoint) == (1000, 2000, 1500, 1750.0)
    assert dirty_limits(10000, 30, 20).bg_thresh == 1000         # bg >= thresh: thresh / 2


def test_machine_limits_use_free_plus_file_minus_totalreserve():
    mm = MemoryManager(16384, policy="gorman-3.6")      # 3.2's limits (2.6.13's: test_era)
    lim = DirtyThrottle(mm).limits()
    assert lim.dirtyable == 16384 - mm.zone.wmark_high
    assert lim.thresh == lim.dirtyable * 20 // 100 and lim.bg_thresh == lim.dirtyable * 10 // 100


def test_pos_ratio_is_two_one_zero_at_freerun_setpoint_limit():
    lim = DirtyLimits(10000, 1000, 2000)
    assert pos_ratio(1500, lim) == pytest.approx(2.0)
    assert pos_ratio(1750, lim) == pytest.approx(1.0)
    assert pos_ratio(2000, lim) == 0.0
    ratios = [pos_ratio(d, lim) for d in range(1500, 2001, 50)]
    assert ratios == sorted(ratios, reverse=True)


def test_pause_grows_between_the_limits_and_is_capped():
    lim = DirtyLimits(10000, 1000, 2000)
    bw = 2000.0                     # pages per second
    assert dirty_pause(1400, lim, bw, 1, 32) == 0.0               # under freerun: no pause
    assert dirty_pause(1500, lim, bw, 1, 32) == 0.0               # at freerun: none either
    pauses = [dirty_pause(d, lim, bw, 1, 32) for d in range(1510, 2000, 40)]
    assert all(0 < p <= MAX_PAUSE_S for p in pauses)
    assert pauses == sorted(pauses)
    assert dirty_pause(1750, lim, bw, 1, 32) == pytest.approx(32 / 2000)    # pos_ratio 1
    assert dirty_pause(1750, lim, bw, 4, 32) == pytest.approx(4 * 32 / 2000)  # shared by 4 dirtiers
    assert dirty_pause(2000, lim, bw, 1, 32) == MAX_PAUSE_S       # at the limit
    assert dirty_pause(1999, lim, 1.0, 1, 32) == MAX_PAUSE_S      # a slow device: capped at 200 ms


class WriterThread(threading.Thread):
    def __init__(self, pc, inode, nbytes):
        super().__init__(daemon=True)
        self.pc, self.inode, self.nbytes = pc, inode, nbytes
        self.written = 0
        self.error = None

    def run(self):
        try:
            chunk = bytes(65536)
            while self.written < self.nbytes:
                self.pc.write(self.inode, self.written, chunk)
                self.written += len(chunk)
        except Exception as exc:
            self.error = exc


def test_a_writer_is_held_between_freerun_and_the_limit(disk):
    mm = MemoryManager(16384, policy="gorman-3.6")      # IO-less throttling is 3.2's
    throttle = DirtyThrottle(mm)
    pc = PageCache(mm, disk, throttle)
    flusher = Flusher(mm, pc, throttle, writeback_interval_s=0.1, expire_s=30)
    disk.stall()
    flusher.start()
    lim = throttle.limits()
    writer = WriterThread(pc, pc.create("f"), 24 << 20)   # twice the hard limit
    try:
        writer.start()
        wait_for(lambda: mm.vm.nr_throttled_dirty == 1 and mm.vm.nr_dirty + mm.vm.nr_writeback >= lim.thresh)
        time.sleep(0.5)
        dirty = mm.vm.nr_dirty + mm.vm.nr_writeback
        assert lim.freerun < dirty <= lim.thresh + 64               # held at the limit
        assert writer.is_alive() and mm.vm.dirty_throttle_pauses > 0
        assert mm.vm.nr_writeback > 0                               # background writeback started
        disk.resume()
        writer.join(30)
        assert not writer.is_alive() and writer.error is None
    finally:
        disk.resume()
        mm.shutdown()
        flusher.join(5)
        writer.join(5)
    assert mm.check_invariants() == []


def test_no_throttling_below_freerun(disk):
    mm = MemoryManager(16384, policy="gorman-3.6")
    throttle = DirtyThrottle(mm)
    pc = PageCache(mm, disk, throttle)
    disk.stall()                                   # nothing is ever written back
    inode = pc.create("f")
    pc.write(inode, 0, bytes(4 << 20))             # 1024 pages < freerun (~2400)
    assert mm.vm.dirty_throttle_pauses == 0 and mm.vm.nr_dirty == 1024
    disk.resume()


def test_mmap_style_writes_are_not_throttled(disk):
    mm = MemoryManager(16384, policy="none")
    throttle = DirtyThrottle(mm)
    pc = PageCache(mm, disk, throttle)
    inode = pc.create("f")
    pc.write(inode, 0, bytes(40 << 20), throttle=False)   # far over the limit
    assert mm.vm.nr_dirty == 10240 and mm.vm.dirty_throttle_pauses == 0
