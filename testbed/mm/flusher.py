"""The flusher thread (pdflush / ``bdi_writeback_thread``): writes dirty pages back.

It is a kernel thread. Neither 2.6.13's pdflush (``PF_FLUSHER``) nor 3.6's bdi
flusher (``PF_SWAPWRITE``) ran with ``PF_MEMALLOC``: what it allocates on the way
to the device (PDU buffers, transmit skbs) obeys the watermarks, unless the era
says otherwise (``mm.era.flusher_pf_memalloc``). Each round picks one kind of
work, as ``wb_do_writeback()`` does:

``sync``        everything dirty, whatever its age (``Machine`` asks for it at the end);
``reclaim``     at least the pages reclaim asked for (``wakeup_pdflush(nr)`` /
                ``wakeup_flusher_threads(nr)``), whatever the thresholds;
``background``  while ``nr_dirty`` exceeds the background threshold, oldest files first;
``kupdate``     every ``dirty_writeback`` interval: files dirtied more than
                ``dirty_expire`` ago.

For a file it takes up to ``MAX_WRITEBACK_PAGES`` dirty pages from its
``writeback_index`` on, cuts them into runs of consecutive pages (at most
``batch_pages`` each: one device request), and submits each run once fewer
than ``inflight`` requests are at the device (the page cache's request queue,
whose depth and request size the flusher sets). Completion (on the device's
thread) marks the pages clean, or dirty again after an error; a failed round
backs off for ``ERROR_BACKOFF_S``. Every wait is bounded and watches for the
machine stopping.

:meth:`Flusher.writeback_inodes` is the same writing done in the caller's
context: 2.6.13's ``balance_dirty_pages()`` makes the dirtying task call it.
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
    from .pagecache import Inode, PageCache

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
        page_cache.queue_depth = inflight
        page_cache.max_request_pages = batch_pages
        self._wake = threading.Event()
        self._sync_requested = False
        self._reclaim_pages = 0             # pages reclaim asked to have written
        self.error: Optional[BaseException] = None
        mm.flusher = self

    def wakeup(self, nr_pages: int = 0) -> None:
        """Wake the thread; with ``nr_pages``, write at least that many (reclaim asks)."""
        if nr_pages > 0:
            self._reclaim_pages = max(self._reclaim_pages, nr_pages)
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
        task.flags |= PF.KTHREAD
        mm = self.mm
        if mm.era.flusher_pf_memalloc:
            task.flags |= PF.MEMALLOC
        next_kupdate = time.monotonic() + self.writeback_interval_s
        try:
            while not mm.stopping:
                if self._sync_requested:
                    self._writeback(WbReason.SYNC)
                    if self.is_clean():
                        self._sync_requested = False
                if self._reclaim_pages:
                    nr, self._reclaim_pages = self._reclaim_pages, 0
                    self.writeback_inodes(nr)
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
                errors = mm.vm.writeback_errors
            started = self._write_inode(inode, MAX_WRITEBACK_PAGES)
            with mm.lock:
                failed = mm.vm.writeback_errors != errors
            if failed:
                mm.wait_stopping(ERROR_BACKOFF_S)
            elif not started:
                mm.congestion_wait()        # all its dirty pages are in flight already

    def writeback_inodes(self, nr_to_write: int) -> int:
        """``writeback_inodes()``: start writeback of up to ``nr_to_write`` pages, oldest
        files first, in the calling task's context; the pages started."""
        mm = self.mm
        written = 0
        with mm.lock:
            inodes = self.pc.dirty_inodes_locked()
        for inode in inodes:
            if written >= nr_to_write:
                break
            written += self._write_inode(inode, nr_to_write - written)
        return written

    def _write_inode(self, inode: "Inode", max_pages: int) -> int:
        """Write back up to ``max_pages`` dirty pages of ``inode``; the pages started."""
        mm, pc = self.mm, self.pc
        with mm.lock:
            runs = pc.collect_runs_locked(inode, max_pages, self.batch_pages)
        started = 0
        for run in runs:
            pc.wait_for_slot()
            with mm.lock:
                requests = pc.start_writeback_locked(inode, run)
            for req in requests:
                pc.submit(req)
                started += len(req.pages)
        return started
