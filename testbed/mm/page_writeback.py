"""Dirty limits and ``balance_dirty_pages()``: how writers are held back, per era.

**2.6.13** (``mm.era.dirty_throttle == "2.6.13"``, mm/page-writeback.c):

* ``get_dirty_limits()``: ratios of ``total_pages`` - the zone's pages above its
  high watermark, counted once at boot (``nr_free_pagecache_pages()``) - with the
  unmapped cap: ``dirty_ratio`` is cut to half of ``100 - nr_mapped * 100 /
  total_pages`` (but not below 5), and ``background_ratio`` to half of
  ``dirty_ratio`` if it is not below it;
* ``balance_dirty_pages()``, every ``ratelimit_pages`` pages a task dirties
  (``total_pages / (NR_CPUS * 32)`` within 16..1024; 8 while the limit is
  exceeded): while ``nr_dirty + nr_writeback`` is over the limit, the task itself
  writes back up to ``sync_writeback_pages()`` (1.5 x ``ratelimit_pages``) pages
  with ``writeback_inodes()``, stops once it wrote that many or the limit holds,
  and otherwise waits in ``blk_congestion_wait(WRITE, HZ/10)``; then, over the
  background threshold, it wakes pdflush.

**3.2 on** (3.6's), the IO-less throttling below.

Limits (``global_dirty_limits``), in pages of *dirtyable* memory = free pages +
page-cache pages - ``totalreserve_pages`` (the high watermark):

* ``bg_thresh = dirty_background_ratio %`` of it - the flusher writes in the
  background above this (if bg >= thresh, bg = thresh / 2);
* ``thresh = dirty_ratio %`` of it - the hard limit.

``balance_dirty_pages()`` runs every ``RATELIMIT_PAGES`` (32) pages a task
dirties. With ``dirty = nr_dirty + nr_writeback``:

* at or below ``freerun = (thresh + bg) / 2`` the task is not throttled;
* above it, the task pauses for ``pages_dirtied / task_ratelimit``, where
  ``task_ratelimit = write_bandwidth * pos_ratio / nr_dirtiers`` and
  ``pos_ratio = 1 + ((setpoint - dirty) / (limit - setpoint))^3`` with
  ``setpoint = (freerun + limit) / 2``: 2 at freerun, 1 at the setpoint, 0 at
  the limit. A pause is at most ``MAX_PAUSE`` (200 ms);
* at or over the limit it pauses ``MAX_PAUSE`` again and again until dirty
  memory falls below the limit.

``write_bandwidth`` is estimated every 200 ms from completed writeback (the
kernel's ``wb_update_bandwidth``), starting at 100 MB/s; a stalled device
drives it, and with it every writer, towards the longest pauses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .task import TaskStruct, current
from .vmscan import RECLAIM_NAP_S
from .vmstat import Use
from .zone import PAGE_SIZE, compute_watermarks

if TYPE_CHECKING:
    from .manager import MemoryManager

MAX_PAUSE_S = 0.2               # MAX_PAUSE = max(HZ/5, 1)
MIN_PAUSE_S = 0.0005            # shorter pauses are skipped (the kernel lets them accumulate)
RATELIMIT_PAGES = 32            # ratelimit_pages: pages dirtied between checks
INIT_BW_PAGES = (100 << 20) >> 12   # INIT_BW: 100 MB/s, in pages per second
BANDWIDTH_INTERVAL_S = 0.2
DIRTIER_WINDOW_S = 1.0          # a task counts as a dirtier this long after its last check
NR_CPUS = 1                     # the emulated client's CPUs (2.6.13's ratelimit_pages divides by them)
DIRTY_EXCEEDED_RATELIMIT = 8    # 2.6.13: pages between checks while the limit is exceeded
MIN_DIRTY_RATIO = 5             # 2.6.13: the unmapped cap stops here


@dataclass(frozen=True)
class DirtyLimits:
    """The thresholds, in pages, for one moment's dirtyable memory."""

    dirtyable: int
    bg_thresh: int
    thresh: int

    @property
    def freerun(self) -> int:
        return (self.thresh + self.bg_thresh) // 2

    @property
    def setpoint(self) -> float:
        return (self.freerun + self.thresh) / 2


def dirty_limits(dirtyable: int, dirty_background_ratio: int, dirty_ratio: int) -> DirtyLimits:
    """``domain_dirty_limits()`` for ratios given in percent."""
    dirtyable = max(dirtyable, 0)
    thresh = max(dirty_ratio * dirtyable // 100, 1)
    bg = dirty_background_ratio * dirtyable // 100
    if bg >= thresh:
        bg = thresh // 2
    return DirtyLimits(dirtyable, bg, thresh)


def get_dirty_limits(total_pages: int, nr_mapped: int, dirty_background_ratio: int,
                     vm_dirty_ratio: int) -> DirtyLimits:
    """2.6.13 ``get_dirty_limits()``: ratios of ``total_pages``, cut when much is mapped."""
    unmapped_ratio = 100 - (nr_mapped * 100) // total_pages
    dirty_ratio = vm_dirty_ratio
    if dirty_ratio > unmapped_ratio // 2:
        dirty_ratio = unmapped_ratio // 2
    if dirty_ratio < MIN_DIRTY_RATIO:
        dirty_ratio = MIN_DIRTY_RATIO
    background_ratio = dirty_background_ratio
    if background_ratio >= dirty_ratio:
        background_ratio = dirty_ratio // 2
    return DirtyLimits(total_pages, background_ratio * total_pages // 100,
                       dirty_ratio * total_pages // 100)


def ratelimit_pages_2_6_13(total_pages: int) -> int:
    """2.6.13 ``set_ratelimit()``: 3% (1/32) of memory per CPU, within 16 pages .. 4 MiB."""
    return max(16, min(total_pages // (NR_CPUS * 32), (4096 * 1024) // PAGE_SIZE))


def pos_ratio(dirty: int, limits: DirtyLimits) -> float:
    """The position control: 2 at freerun, 1 at the setpoint, 0 at (and over) the limit."""
    limit = limits.thresh
    if dirty >= limit:
        return 0.0
    setpoint = limits.setpoint
    span = limit - setpoint
    if span <= 0:
        return 1.0
    x = (setpoint - dirty) / span
    return max(0.0, min(2.0, 1.0 + x * x * x))


def dirty_pause(dirty: int, limits: DirtyLimits, write_bandwidth: float, nr_dirtiers: int,
                pages_dirtied: int) -> float:
    """Seconds a task that dirtied ``pages_dirtied`` pages sleeps; 0 in the freerun zone."""
    if dirty <= limits.freerun:
        return 0.0
    ratio = pos_ratio(dirty, limits)
    if ratio <= 0.0:
        return MAX_PAUSE_S
    task_ratelimit = max(write_bandwidth * ratio / max(nr_dirtiers, 1), 1.0)
    return min(pages_dirtied / task_ratelimit, MAX_PAUSE_S)


class DirtyThrottle:
    """Dirty accounting policy of the machine: limits, bandwidth, throttling."""

    def __init__(self, mm: "MemoryManager", dirty_background_ratio: int = 10,
                 dirty_ratio: int = 20) -> None:
        self.mm = mm
        self.dirty_background_ratio = dirty_background_ratio
        self.dirty_ratio = dirty_ratio
        self.write_bandwidth = float(INIT_BW_PAGES)     # pages per second
        self._bw_time = time.monotonic()
        self._bw_written = 0
        self._dirtiers: dict[TaskStruct, float] = {}
        # 2.6.13: total_pages = nr_free_pagecache_pages() at boot, before any
        # adjust_memalloc_reserve() moved the watermarks; and its ratelimit.
        zone = mm.zone
        boot = compute_watermarks(zone.managed_pages, zone.min_free_kbytes, zone.watermark_scale_factor)
        self.total_pages = max(zone.managed_pages - boot.high, 1)
        self.ratelimit_pages = ratelimit_pages_2_6_13(self.total_pages)
        self.dirty_exceeded = False

    def limits_locked(self) -> DirtyLimits:
        mm = self.mm
        if mm.era.dirty_throttle == "2.6.13":
            nr_mapped = mm.shrinker.nr_mapped if mm.shrinker is not None else 0
            return get_dirty_limits(self.total_pages, nr_mapped, self.dirty_background_ratio,
                                    self.dirty_ratio)
        zone = mm.zone
        dirtyable = zone.free + mm.used[Use.FILE] - zone.wmark_high
        return dirty_limits(dirtyable, self.dirty_background_ratio, self.dirty_ratio)

    def limits(self) -> DirtyLimits:
        with self.mm.lock:
            return self.limits_locked()

    def over_bground_thresh_locked(self) -> bool:
        return self.mm.vm.nr_dirty > self.limits_locked().bg_thresh

    def balance_dirty_pages_ratelimited(self) -> None:
        """Called after each page the current task dirties."""
        task = current()
        task.nr_dirtied += 1
        if task.nr_dirtied >= self._ratelimit():
            pages, task.nr_dirtied = task.nr_dirtied, 0
            self.balance_dirty_pages(task, pages)

    def _ratelimit(self) -> int:
        if self.mm.era.dirty_throttle == "2.6.13":
            return DIRTY_EXCEEDED_RATELIMIT if self.dirty_exceeded else self.ratelimit_pages
        return RATELIMIT_PAGES

    def balance_dirty_pages(self, task: TaskStruct, pages_dirtied: int) -> None:
        """Hold ``task`` back as its era's ``balance_dirty_pages()`` did."""
        if self.mm.era.dirty_throttle == "2.6.13":
            self._balance_dirty_pages_2_6_13()
        else:
            self._balance_dirty_pages_iless(task, pages_dirtied)

    def _balance_dirty_pages_2_6_13(self) -> None:
        """Over the limit, write back ``sync_writeback_pages()`` pages yourself, else nap."""
        mm = self.mm
        vm = mm.vm
        write_chunk = self.ratelimit_pages + self.ratelimit_pages // 2
        pages_written = 0
        throttled = False
        try:
            while True:
                with mm.lock:
                    if self._under_limit_locked():
                        break
                    self.dirty_exceeded = True
                    if not throttled:
                        throttled = True
                        vm.nr_throttled_dirty += 1
                    nr_reclaimable = vm.nr_dirty
                if nr_reclaimable and mm.flusher is not None:
                    written = mm.flusher.writeback_inodes(write_chunk)
                    with mm.lock:
                        if self._under_limit_locked():
                            break
                    pages_written += written
                    if pages_written >= write_chunk:
                        break                   # "We've done our duty"
                self._pause(RECLAIM_NAP_S)      # blk_congestion_wait(WRITE, HZ/10)
        finally:
            with mm.lock:
                if throttled:
                    vm.nr_throttled_dirty -= 1
                if self._under_limit_locked():
                    self.dirty_exceeded = False
                background = vm.nr_dirty > self.limits_locked().bg_thresh
        if background and mm.flusher is not None:
            mm.flusher.wakeup()                 # pdflush_operation(background_writeout)

    def _under_limit_locked(self) -> bool:
        vm = self.mm.vm
        return vm.nr_dirty + vm.nr_writeback <= self.limits_locked().thresh

    def _pause(self, seconds: float) -> None:
        """A throttling sleep, cut short by a completed writeback; counted."""
        mm = self.mm
        started = time.monotonic()
        mm.congestion_wait(seconds)
        with mm.lock:
            mm.vm.dirty_throttle_pauses += 1
            mm.vm.dirty_throttle_seconds += time.monotonic() - started
        mm.check_stopping()

    def _balance_dirty_pages_iless(self, task: TaskStruct, pages_dirtied: int) -> None:
        """3.2 on: pause ``task`` as the dirty limits say; loops while over the hard limit."""
        mm = self.mm
        while True:
            with mm.lock:
                now = time.monotonic()
                self._update_bandwidth_locked(now)
                limits = self.limits_locked()
                vm = mm.vm
                dirty = vm.nr_dirty + vm.nr_writeback
                if vm.nr_dirty > limits.bg_thresh and mm.flusher is not None:
                    mm.flusher.wakeup()             # wb_start_background_writeback()
                pause = dirty_pause(dirty, limits, self.write_bandwidth,
                                    self._nr_dirtiers_locked(task, now), pages_dirtied)
                if pause < MIN_PAUSE_S:
                    return
                vm.nr_throttled_dirty += 1
                vm.dirty_throttle_pauses += 1
            try:
                if mm.wait_stopping(pause):
                    mm.check_stopping()
            finally:
                with mm.lock:
                    vm.nr_throttled_dirty -= 1
                    vm.dirty_throttle_seconds += pause
            if dirty < limits.thresh:
                return

    def _nr_dirtiers_locked(self, task: TaskStruct, now: float) -> int:
        dirtiers = self._dirtiers
        dirtiers[task] = now
        if len(dirtiers) > 1:
            for t in [t for t, seen in dirtiers.items() if now - seen > DIRTIER_WINDOW_S]:
                del dirtiers[t]
        return len(dirtiers)

    def _update_bandwidth_locked(self, now: float) -> None:
        elapsed = now - self._bw_time
        if elapsed < BANDWIDTH_INTERVAL_S:
            return
        vm = self.mm.vm
        written = vm.nr_written - self._bw_written
        if written or vm.nr_writeback:
            self.write_bandwidth = (3 * self.write_bandwidth + written / elapsed) / 4
        self._bw_time = now
        self._bw_written = vm.nr_written
