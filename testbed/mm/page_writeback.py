"""Dirty limits and ``balance_dirty_pages()``: how writers are held back.

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
from .vmstat import Use

if TYPE_CHECKING:
    from .manager import MemoryManager

MAX_PAUSE_S = 0.2               # MAX_PAUSE = max(HZ/5, 1)
MIN_PAUSE_S = 0.0005            # shorter pauses are skipped (the kernel lets them accumulate)
RATELIMIT_PAGES = 32            # ratelimit_pages: pages dirtied between checks
INIT_BW_PAGES = (100 << 20) >> 12   # INIT_BW: 100 MB/s, in pages per second
BANDWIDTH_INTERVAL_S = 0.2
DIRTIER_WINDOW_S = 1.0          # a task counts as a dirtier this long after its last check


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

    def limits_locked(self) -> DirtyLimits:
        mm = self.mm
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
        if task.nr_dirtied >= RATELIMIT_PAGES:
            pages, task.nr_dirtied = task.nr_dirtied, 0
            self.balance_dirty_pages(task, pages)

    def balance_dirty_pages(self, task: TaskStruct, pages_dirtied: int) -> None:
        """Pause ``task`` as the dirty limits say; loops while over the hard limit."""
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
