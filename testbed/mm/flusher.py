"""The flusher thread (``wb_workfn``): writes dirty pages back, with PF_MEMALLOC.

It runs as a kernel thread with ``PF_MEMALLOC`` set, so whatever it allocates
on the way to the device may use the reserves. Each round picks one kind of
work, as ``wb_do_writeback()`` does:

``sync``        everything dirty, whatever its age (``Machine`` asks for it at the end);
``background``  while ``nr_dirty`` exceeds the background threshold, oldest files first;
``kupdate``     every ``dirty_writeback`` interval: files dirtied more than
                ``dirty_expire`` ago.

For a file it takes up to ``MAX_WRITEBACK_PAGES`` dirty pages from its
``writeback_index`` on, cuts them into runs of consecutive pages (at most
``batch_pages`` each: one device request), and submits each run once fewer
than ``inflight`` requests are at the device. Completion (on the device's
thread) marks the pages clean, or dirty again after an error; a failed round
backs off for ``ERROR_BACKOFF_S``. Every wait is bounded and watches for the
machine stopping.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum
from typing import TYPE_CHECKING, Optional

from .errors import MachineStopped
from .task import PF, current

if TYPE_CHECKING:
    from .manager import MemoryManager
    from .page_writeback import DirtyThrottle
    from .pagecache import Inode, PageCache, WritebackRequest

log = logging.getLogger(__name__)

MAX_WRITEBACK_PAGES = 1024
ERROR_BACKOFF_S = 0.1
IDLE_POLL_S = 0.1


class WbReason(Enum):
    SYNC = "sync"
    BACKGROUND = "background"
    KUPDATE = "kupdate"


class Flusher(threading.Thread):
    """One ``bdi`` writeback thread for the page cache's device."""

    def __init__(self, mm: "MemoryManager", page_cache: "PageCache", throttle: "DirtyThrottle", *,
                 writeback_interval_s: float = 0.5, expire_s: float = 3.0,
                 inflight: int = 8, batch_pages: int = 32) -> None:
        super().__init__(name="flush", daemon=True)
        self.mm = mm
        self.pc = page_cache
        self.throttle = throttle
        self.writeback_interval_s = writeback_interval_s
        self.expire_s = expire_s
        self.inflight = inflight
        self.batch_pages = batch_pages
        self._wake = threading.Event()
        self._sync_requested = False
        self.error: Optional[BaseException] = None
        mm.flusher = self

    def wakeup(self) -> None:
        self._wake.set()

    def request_sync(self) -> None:
        """Write everything dirty back, whatever its age."""
        self._sync_requested = True
        self._wake.set()

    def is_clean(self) -> bool:
        """Nothing dirty, nothing in flight."""
        with self.mm.lock:
            return not self.mm.vm.nr_dirty and not self.mm.vm.nr_writeback

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        task = current()
        task.flags |= PF.MEMALLOC | PF.KTHREAD
        mm = self.mm
        next_kupdate = time.monotonic() + self.writeback_interval_s
        try:
            while not mm.stopping:
                if self._sync_requested:
                    self._writeback(WbReason.SYNC)
                    if self.is_clean():
                        self._sync_requested = False
                with mm.lock:
                    background = self.throttle.over_bground_thresh_locked()
                if background:
                    self._writeback(WbReason.BACKGROUND)
                now = time.monotonic()
                if now >= next_kupdate:
                    self._writeback(WbReason.KUPDATE)
                    next_kupdate = time.monotonic() + self.writeback_interval_s
                timeout = min(IDLE_POLL_S, max(0.0, next_kupdate - time.monotonic()))
                if self._wake.wait(timeout):
                    self._wake.clear()
        except MachineStopped:
            pass
        except BaseException as exc:       # a bug: keep it for Machine.wait() to report
            log.exception("flusher died")
            self.error = exc

    def _pick_locked(self, reason: WbReason) -> Optional["Inode"]:
        vm = self.mm.vm
        if not vm.nr_dirty:
            return None
        if reason is WbReason.BACKGROUND and not self.throttle.over_bground_thresh_locked():
            return None
        before = time.monotonic() - self.expire_s if reason is WbReason.KUPDATE else None
        inodes = self.pc.dirty_inodes_locked(before)
        return inodes[0] if inodes else None

    def _writeback(self, reason: WbReason) -> None:
        """``wb_writeback()``: one file at a time until the reason's condition is met."""
        mm = self.mm
        while not mm.stopping:
            with mm.lock:
                inode = self._pick_locked(reason)
                if inode is None:
                    return
                runs = self.pc.collect_runs_locked(inode, MAX_WRITEBACK_PAGES, self.batch_pages)
                errors = mm.vm.writeback_errors
            started = 0
            for run in runs:
                self._wait_for_slot()
                with mm.lock:
                    requests = self.pc.start_writeback_locked(inode, run)
                for req in requests:
                    self._submit(req)
                started += len(requests)
            with mm.lock:
                failed = mm.vm.writeback_errors != errors
            if failed:
                mm.wait_stopping(ERROR_BACKOFF_S)
            elif not started:
                mm.congestion_wait()        # all its dirty pages are in flight already

    def _wait_for_slot(self) -> None:
        mm = self.mm
        with mm.congestion:
            while self.pc.nr_inflight >= self.inflight:
                mm.check_stopping()
                mm.congestion.wait(IDLE_POLL_S)

    def _submit(self, req: "WritebackRequest") -> None:
        pc = self.pc

        def done(exc: Optional[BaseException]) -> None:
            pc.end_writeback(req, exc)

        try:
            pc.device.submit_write(req.offset, req.data, done)
        except Exception as exc:            # refused at once (closed, out of range)
            pc.end_writeback(req, exc)
