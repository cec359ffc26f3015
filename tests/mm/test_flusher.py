"""The flusher: periodic and background writeback, batches, in-flight bound.

Its flags (no PF_MEMALLOC in either era) are tested in test_era.py.
"""

from __future__ import annotations

import threading
import time

from testbed.blockdev import BlockDeviceError
from testbed.mm import MemoryManager, Use, current
from testbed.mm.flusher import Flusher
from testbed.mm.page_writeback import DirtyThrottle
from testbed.mm.pagecache import PageCache

from .test_throttle import wait_for


class Recorder:
    """A BlockDevice wrapper that records who submits and how much is in flight."""

    def __init__(self, inner, on_submit=None, fail=False):
        self.inner = inner
        self.on_submit = on_submit
        self.fail = fail
        self.lock = threading.Lock()
        self.flags = []
        self.sizes = []
        self.offsets = []
        self.inflight = 0
        self.max_inflight = 0

    block_size = property(lambda self: self.inner.block_size)
    capacity = property(lambda self: self.inner.capacity)

    def submit_write(self, offset, data, callback):
        self.flags.append(current().flags)
        if self.on_submit:
            self.on_submit()
        with self.lock:
            self.sizes.append(len(data))
            self.offsets.append(offset)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

        def done(exc):
            with self.lock:
                self.inflight -= 1
            callback(BlockDeviceError("injected failure") if self.fail else exc)

        self.inner.submit_write(offset, data, done)

    def submit_read(self, offset, length, callback):
        self.inner.submit_read(offset, length, callback)

    def flush(self, timeout=None):
        self.inner.flush(timeout)

    def close(self):
        pass


def setup(device, **kw):
    mm = MemoryManager(16384, policy="none")
    throttle = DirtyThrottle(mm)
    pc = PageCache(mm, device, throttle)
    flusher = Flusher(mm, pc, throttle, **kw)
    return mm, pc, flusher


def stop(mm, flusher):
    mm.shutdown()
    flusher.join(5)
    assert not flusher.is_alive()


def test_periodic_writeback_waits_for_expiry(disk):
    mm, pc, flusher = setup(disk, writeback_interval_s=0.1, expire_s=1.0)
    pc.write(pc.create("f"), 0, bytes(256 << 10))   # well under the background threshold
    flusher.start()
    try:
        time.sleep(0.5)
        assert mm.vm.nr_written == 0                # not yet expired
        wait_for(lambda: mm.vm.nr_written == 64, timeout=3)
        assert mm.vm.nr_dirty == 0
    finally:
        stop(mm, flusher)


def test_background_writeback_starts_over_the_background_threshold(disk):
    mm, pc, flusher = setup(disk, writeback_interval_s=0.1, expire_s=60)
    bg = flusher.throttle.limits().bg_thresh
    pc.write(pc.create("f"), 0, bytes(2 * bg * 4096), throttle=False)
    flusher.start()
    try:
        wait_for(lambda: mm.vm.nr_dirty <= flusher.throttle.limits().bg_thresh)
        time.sleep(0.3)
        assert mm.vm.nr_written > 0
        assert mm.vm.nr_dirty > 0                   # stopped at the threshold, not at zero
    finally:
        stop(mm, flusher)


def test_requests_are_contiguous_batches_with_bounded_inflight(disk):
    disk.set_latency(0.05)
    rec = Recorder(disk)
    mm, pc, flusher = setup(rec, writeback_interval_s=0.05, expire_s=0, inflight=3, batch_pages=8)
    inode = pc.create("f")
    pc.write(inode, 0, bytes(1 << 20), throttle=False)
    flusher.start()
    try:
        wait_for(lambda: flusher.is_clean(), timeout=10)
        assert rec.max_inflight <= 3 and rec.max_inflight >= 2
        assert all(size == 8 * 4096 for size in rec.sizes)
        assert sorted(rec.offsets) == [i * 8 * 4096 for i in range(32)]
    finally:
        stop(mm, flusher)


def test_dirty_pages_are_freed_only_after_writeback_completes(disk):
    mm, pc, flusher = setup(disk, writeback_interval_s=0.05, expire_s=0)
    disk.stall()
    pc.write(pc.create("f"), 0, bytes(1 << 20), throttle=False)
    flusher.start()
    try:
        wait_for(lambda: mm.vm.nr_writeback == 256)
        with mm.lock:
            assert pc.shrink_locked(256) == (256, 0)        # scanned, none freeable
        assert mm.used[Use.FILE] == 256
        disk.resume()
        wait_for(flusher.is_clean)
        with mm.lock:
            assert pc.shrink_locked(256) == (256, 256)
        assert mm.used[Use.FILE] == 0
    finally:
        disk.resume()
        stop(mm, flusher)
    assert mm.check_invariants() == []


def test_write_errors_redirty_the_pages(disk):
    rec = Recorder(disk, fail=True)
    mm, pc, flusher = setup(rec, writeback_interval_s=0.05, expire_s=0)
    inode = pc.create("f")
    pc.write(inode, 0, bytes(64 << 10), throttle=False)
    flusher.start()
    try:
        wait_for(lambda: mm.vm.writeback_errors >= 2)
        assert mm.vm.nr_written == 0 and not any(inode.acked)
        rec.fail = False
        wait_for(flusher.is_clean)
        assert all(inode.acked[:16])
    finally:
        stop(mm, flusher)
    assert mm.check_invariants() == []


def test_sync_writes_everything_at_once(disk):
    mm, pc, flusher = setup(disk, writeback_interval_s=10, expire_s=60)
    pc.write(pc.create("a"), 0, bytes(100 << 10), throttle=False)
    pc.write(pc.create("b"), 0, bytes(10 << 10) + b"x" * 100, throttle=False)
    flusher.start()
    try:
        flusher.request_sync()
        wait_for(flusher.is_clean)
        assert mm.vm.nr_written == 25 + 3
    finally:
        stop(mm, flusher)
