"""The page cache over a block device: files, pages with real bytes, LRU, writeback.

A file (:class:`Inode`) is a sequence of 4 KiB pages; its place on the block
device is a list of extents of ``EXTENT_PAGES`` pages (1 MiB) handed out by a
bump allocator as the file grows, so writeback of consecutive pages is a
contiguous device write. A cached page (:class:`Page`) holds the bytes the
workload wrote (immutable ``bytes``, replaced on each write, so a writeback
in flight keeps the version it was submitted with) and its flags:

``PG_dirty``      changed since it was last written back (``nr_dirty`` counts them)
``PG_writeback``  a device write of it is in flight (``nr_writeback``)
``PG_reclaim``    that write was started by reclaim: once clean, the page goes to
                  the LRU's cold end (``rotate_reclaimable_page``)
``PTE_DIRTY``     stored to through a shared mapping in a kernel that did not account
                  it (2.6.13): the dirt is only in the page table entry - not counted,
                  not seen by the flusher - until reclaim unmaps the page or the
                  mapping is synced or unmapped (:meth:`PageCache.munmap`); then it
                  becomes ``PG_dirty`` (the kernel's pte dirty bit, not a page flag)

A store through a mapping is :meth:`PageCache.store_mapped`: from 2.6.19 on
(``mm.era.mmap_dirty_throttled``) it dirties the page at once and goes through
``balance_dirty_pages`` like ``write()``.

Clean pages not under writeback sit on the LRU (oldest first) and are all that
reclaim may free; dirty pages are freed only after their writeback completes
and marks them clean. Reclaim (:mod:`testbed.mm.vmscan`) may also start writeback
itself (:meth:`PageCache.pageout`). Writeback requests wait for a free slot in the
device's request queue (``queue_depth`` requests, ``max_request_pages`` pages
each: the flusher sets both). Every structure here is guarded by the mm lock.

A page's content is *acknowledged* once a writeback of its current content
completed (``Inode.acked``); :meth:`PageCache.acked_pages` lists them for the
read-back verification.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from itertools import islice
from typing import TYPE_CHECKING, Iterator, Optional

from ..blockdev import BlockDevice, Buffer
from ..errors import TimeoutExpired
from .errors import MMError, NoSpace
from .gfp import GFP_KERNEL, Gfp
from .task import current
from .vmstat import Use
from .zone import PAGE_SIZE

if TYPE_CHECKING:
    from .manager import MemoryManager
    from .page_writeback import DirtyThrottle

PG_dirty = 0x1
PG_writeback = 0x2
PTE_DIRTY = 0x4
PG_reclaim = 0x8
EXTENT_PAGES = 256
ZERO_PAGE = bytes(PAGE_SIZE)
READ_TIMEOUT_S = 60.0
SLOT_POLL_S = 0.1


class Page:
    """One cached page of a file."""

    __slots__ = ("inode", "index", "data", "flags")

    def __init__(self, inode: "Inode", index: int, data: bytes) -> None:
        self.inode = inode
        self.index = index
        self.data = data
        self.flags = 0

    def __repr__(self) -> str:
        return f"<Page {self.inode.name}:{self.index} flags={self.flags}>"


class Inode:
    """A file: its cached pages, its dirty set, its extents on the device."""

    def __init__(self, ino: int, name: str) -> None:
        self.ino = ino
        self.name = name
        self.size = 0
        self.pages: dict[int, Page] = {}
        self.dirty: set[int] = set()            # indices of PG_dirty pages
        self.dirtied_when: Optional[float] = None
        self.writeback_index = 0                # where the next writeback pass starts
        self.extents: list[int] = []            # first device page of each extent
        self.acked = bytearray()                # per page: 1 = current content on the device
        self.mapped = False                     # mapped shared by a workload (nr_mapped)

    def device_page(self, index: int) -> int:
        return self.extents[index // EXTENT_PAGES] + index % EXTENT_PAGES

    def __repr__(self) -> str:
        return f"<Inode {self.ino} {self.name} size={self.size} cached={len(self.pages)} dirty={len(self.dirty)}>"


class WritebackRequest:
    """One device write of consecutive pages of one file (a bio)."""

    __slots__ = ("inode", "pages", "offset", "data")

    def __init__(self, inode: Inode, pages: list[Page]) -> None:
        self.inode = inode
        self.pages = pages
        self.offset = inode.device_page(pages[0].index) * PAGE_SIZE
        self.data = b"".join(p.data for p in pages)


class PageCache:
    """Files cached in the emulated memory and written back through a BlockDevice."""

    def __init__(self, mm: "MemoryManager", device: BlockDevice, throttle: "DirtyThrottle",
                 gfp: Gfp = GFP_KERNEL) -> None:
        bs = device.block_size
        if bs <= 0 or PAGE_SIZE % bs:
            raise MMError(f"page cache: device block size {bs} does not divide the "
                          f"{PAGE_SIZE}-byte page")
        self.mm = mm
        self.device = device
        self.throttle = throttle
        self.gfp = gfp                          # mapping_gfp_mask()
        self.inodes: dict[str, Inode] = {}
        self.lru: "OrderedDict[Page, None]" = OrderedDict()
        self.device_pages = device.capacity // PAGE_SIZE
        self.next_device_page = 0
        self.nr_inflight = 0                    # writeback requests at the device
        self.nr_allocating = 0                  # writers between alloc_pages and insertion
        self.nr_pages = 0                       # cached pages (the LRU lists' length)
        self.dirty_lru: "OrderedDict[Page, None]" = OrderedDict()  # PG_dirty, in dirtying order
        self.pte_dirty: "OrderedDict[Page, None]" = OrderedDict()  # PTE_DIRTY, oldest first
        self.queue_depth = 8                    # requests in flight at most (nr_requests)
        self.max_request_pages = 32             # pages per request (max_sectors)
        self.last_progress = time.monotonic()   # when a writeback last completed
        mm.shrinker = self

    # ---------------------------------------------------------------- files
    def create(self, name: str) -> Inode:
        """A new, empty file called ``name``."""
        with self.mm.lock:
            if name in self.inodes:
                raise MMError(f"page cache: file {name!r} exists")
            inode = self.inodes[name] = Inode(len(self.inodes) + 1, name)
            return inode

    def write(self, inode: Inode, offset: int, data: Buffer, throttle: bool = True) -> None:
        """``generic_perform_write``: copy ``data`` into the cache at ``offset``, dirtying pages.

        Allocates missing pages with the mapping's gfp (may sleep in reclaim);
        with ``throttle`` every dirtied page goes through
        ``balance_dirty_pages_ratelimited()``. The task writes to this device
        meanwhile (``current->backing_dev_info``).
        """
        task = current()
        saved, task.backing_dev_info = task.backing_dev_info, self
        try:
            self._store(inode, offset, data, throttle, mapped=False)
        finally:
            task.backing_dev_info = saved

    def store_mapped(self, inode: Inode, offset: int, data: Buffer) -> None:
        """Store ``data`` through a shared mapping of ``inode`` (page faults, then stores).

        From 2.6.19 (``mm.era.mmap_dirty_throttled``) the write fault dirties the page
        and throttles (``set_page_dirty_balance``); before, the dirt stays in the page
        table (``PTE_DIRTY``) and nothing throttles the task.
        """
        throttled = self.mm.era.mmap_dirty_throttled
        with self.mm.lock:
            inode.mapped = True
        self._store(inode, offset, data, throttled, mapped=not throttled)

    def _store(self, inode: Inode, offset: int, data: Buffer, throttle: bool, mapped: bool) -> None:
        if offset < 0:
            raise MMError(f"page cache: write to {inode.name} at negative offset {offset}")
        view = memoryview(data).cast("B")
        pos, total = 0, len(view)
        while pos < total:
            index, in_page = divmod(offset + pos, PAGE_SIZE)
            n = min(PAGE_SIZE - in_page, total - pos)
            self._write_page(inode, index, in_page, view[pos:pos + n], mapped)
            pos += n
            if throttle:
                self.throttle.balance_dirty_pages_ratelimited()

    def _write_page(self, inode: Inode, index: int, in_page: int, src: memoryview,
                    mapped: bool) -> None:
        mm = self.mm
        end = index * PAGE_SIZE + in_page + len(src)
        with mm.lock:
            page = inode.pages.get(index)
            if page is not None:
                self._copy_locked(page, in_page, src, end, mapped)
                return
            # A partial write over a page that is only on the device needs its bytes.
            need_read = len(src) < PAGE_SIZE and index < len(inode.acked) and inode.acked[index]
            self.nr_allocating += 1     # a FILE page charged, not yet in the cache
        try:
            data = self._read_page(inode, index) if need_read else ZERO_PAGE
            if not mm.alloc_pages(1, self.gfp, Use.FILE):
                raise MMError(f"page cache: no page for {inode.name}:{index} (gfp {self.gfp!r})")
            with mm.lock:
                page = inode.pages.get(index)
                if page is None:
                    try:
                        self._ensure_extent_locked(inode, index)
                    except NoSpace:
                        mm.give_locked(1, Use.FILE)
                        raise
                    page = inode.pages[index] = Page(inode, index, data)
                    self.nr_pages += 1
                else:
                    mm.give_locked(1, Use.FILE)     # another writer cached it meanwhile
                self._copy_locked(page, in_page, src, end, mapped)
        finally:
            with mm.lock:
                self.nr_allocating -= 1

    def _copy_locked(self, page: Page, in_page: int, src: memoryview, end: int,
                     mapped: bool) -> None:
        if in_page == 0 and len(src) == PAGE_SIZE:
            page.data = bytes(src)
        else:
            buf = bytearray(page.data)
            buf[in_page:in_page + len(src)] = src
            page.data = bytes(buf)
        inode = page.inode
        if end > inode.size:
            inode.size = end
        if mapped:
            self._pte_mkdirty_locked(page)
        else:
            self.set_page_dirty_locked(page)

    def _changed_locked(self, page: Page) -> None:
        """The page's content is no longer what the device holds."""
        acked = page.inode.acked
        if page.index >= len(acked):
            acked.extend(bytes(page.index + 1 - len(acked)))
        acked[page.index] = 0

    def set_page_dirty_locked(self, page: Page) -> None:
        """``set_page_dirty`` + ``account_page_dirtied``."""
        if page.flags & PTE_DIRTY:              # the pte's dirt moves to the page
            page.flags &= ~PTE_DIRTY
            self.pte_dirty.pop(page, None)
        if page.flags & PG_dirty:
            return
        page.flags |= PG_dirty
        if not page.flags & PG_writeback:
            self.lru.pop(page, None)
        self.dirty_lru[page] = None
        inode = page.inode
        inode.dirty.add(page.index)
        if inode.dirtied_when is None:
            inode.dirtied_when = time.monotonic()
        self._changed_locked(page)
        vm = self.mm.vm
        vm.nr_dirty += 1
        vm.nr_dirtied += 1

    def _pte_mkdirty_locked(self, page: Page) -> None:
        """A store through a mapping the kernel does not account (``pte_mkdirty`` only)."""
        self._changed_locked(page)
        if page.flags & (PG_dirty | PTE_DIRTY):
            return                              # already dirty: this content goes out with it
        page.flags |= PTE_DIRTY
        if not page.flags & PG_writeback:
            self.lru.pop(page, None)
        self.pte_dirty[page] = None

    def munmap(self, inode: Inode) -> None:
        """``munmap``/exit (``zap_pte_range``): the mapping's pte dirt moves to its pages."""
        with self.mm.lock:
            for page in [p for p in self.pte_dirty if p.inode is inode]:
                self.set_page_dirty_locked(page)
            inode.mapped = False

    def _ensure_extent_locked(self, inode: Inode, index: int) -> None:
        while index // EXTENT_PAGES >= len(inode.extents):
            if self.next_device_page + EXTENT_PAGES > self.device_pages:
                raise NoSpace(f"page cache: the device ({self.device_pages} pages) has no room "
                              f"for another extent of {inode.name}")
            inode.extents.append(self.next_device_page)
            self.next_device_page += EXTENT_PAGES

    def _read_page(self, inode: Inode, index: int) -> bytes:
        """Read a written-back page from the device (a partial write needs its old bytes)."""
        done = threading.Event()
        result: list = []

        def cb(data: Optional[bytes], exc: Optional[BaseException]) -> None:
            result.extend((data, exc))
            done.set()

        self.device.submit_read(inode.device_page(index) * PAGE_SIZE, PAGE_SIZE, cb)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while not done.wait(0.1):
            self.mm.check_stopping()
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"page cache: read of {inode.name}:{index} took over {READ_TIMEOUT_S}s")
        if result[1] is not None:
            raise result[1]
        return bytes(result[0])

    # -------------------------------------------------------------- reclaim
    @property
    def nr_reclaimable(self) -> int:
        return len(self.lru)

    @property
    def nr_lru_pages(self) -> int:
        return self.nr_pages

    @property
    def nr_mapped(self) -> int:
        """Cached pages of mapped files (2.6.13's ``nr_mapped``: no anonymous memory here)."""
        return sum(len(inode.pages) for inode in self.inodes.values() if inode.mapped)

    def shrink_locked(self, nr_to_reclaim: int) -> tuple[int, int]:
        """Free up to ``nr_to_reclaim`` clean pages from the LRU's cold end; (scanned, reclaimed).

        The rest of the pass scans dirty pages: those dirtied through a mapping get
        their dirt moved to the page (``try_to_unmap``: ``set_page_dirty``).
        """
        lru = self.lru
        reclaimed = 0
        while reclaimed < nr_to_reclaim and lru:
            page, _ = lru.popitem(last=False)
            del page.inode.pages[page.index]
            reclaimed += 1
        if reclaimed:
            self.nr_pages -= reclaimed
            self.mm.give_locked(reclaimed, Use.FILE)
        budget = nr_to_reclaim - reclaimed
        for page in list(islice(self.pte_dirty, budget)):
            self.set_page_dirty_locked(page)
        vm = self.mm.vm
        unreclaimable = min(budget, vm.nr_dirty + vm.nr_writeback)
        return reclaimed + unreclaimable, reclaimed

    def isolate_dirty_locked(self, nr: int) -> list[Page]:
        """Up to ``nr`` dirty pages not under writeback, oldest-dirtied first."""
        pages: list[Page] = []
        for page in self.dirty_lru:
            if len(pages) >= nr:
                break
            if page.flags == PG_dirty:
                pages.append(page)
        return pages

    def pageout(self, pages: list[Page]) -> None:
        """``pageout()`` from reclaim, in the caller's (``PF_MEMALLOC``) context.

        Pages are submitted in device order, adjacent ones as one request (the
        elevator merges the single-page writes of ``shrink_list``); each is
        ``PG_reclaim``. Waits for a free slot like any writer (``get_request_wait``).
        """
        by_inode: dict[Inode, list[int]] = {}
        for page in pages:
            by_inode.setdefault(page.inode, []).append(page.index)
        for inode, indices in by_inode.items():
            for run in self._runs(inode, sorted(indices), self.max_request_pages):
                self.wait_for_slot()
                with self.mm.lock:
                    requests = self.start_writeback_locked(inode, run)
                    for req in requests:
                        for page in req.pages:
                            page.flags |= PG_reclaim
                        self.mm.vm.nr_vmscan_write += len(req.pages)
                for req in requests:
                    self.submit(req)

    def congested(self) -> bool:
        """``bdi_write_congested()``: the request queue is full."""
        return self.nr_inflight >= self.queue_depth

    def wait_for_slot(self) -> None:
        """Sleep until fewer than ``queue_depth`` requests are in flight (bounded steps)."""
        mm = self.mm
        with mm.congestion:
            while self.nr_inflight >= self.queue_depth:
                mm.check_stopping()
                mm.congestion.wait(SLOT_POLL_S)

    def submit(self, req: "WritebackRequest") -> None:
        """Hand ``req`` to the device in the current task's context.

        The transmit skbs of a network device's write are allocated by the task that
        sends it; :meth:`~testbed.mm.manager.MemoryManager.memalloc_tx_credit` carries a
        ``PF_MEMALLOC`` sender's context to them.
        """
        self.mm.memalloc_tx_credit(len(req.data))

        def done(exc: Optional[BaseException]) -> None:
            self.end_writeback(req, exc)

        try:
            self.device.submit_write(req.offset, req.data, done)
        except Exception as exc:            # refused at once (closed, out of range)
            self.end_writeback(req, exc)

    # ------------------------------------------------------------ writeback
    def dirty_inodes_locked(self, dirtied_before: Optional[float] = None) -> list[Inode]:
        """Dirty files, oldest-dirtied first (``b_dirty``), optionally only expired ones."""
        inodes = [i for i in self.inodes.values() if i.dirty and (
            dirtied_before is None or (i.dirtied_when is not None and i.dirtied_when <= dirtied_before))]
        inodes.sort(key=lambda i: i.dirtied_when or 0.0)
        return inodes

    def collect_runs_locked(self, inode: Inode, max_pages: int, batch_pages: int) -> list[list[int]]:
        """Up to ``max_pages`` dirty indices from ``writeback_index`` on (cyclic), in device runs."""
        dirty = sorted(inode.dirty)
        start = inode.writeback_index
        ahead = [i for i in dirty if i >= start]
        indices = (ahead + [i for i in dirty if i < start])[:max_pages]
        if indices:
            inode.writeback_index = indices[-1] + 1
        return self._runs(inode, indices, batch_pages)

    @staticmethod
    def _runs(inode: Inode, indices: list[int], batch_pages: int) -> list[list[int]]:
        """Cut ``indices`` into runs of consecutive pages, contiguous on the device."""
        runs: list[list[int]] = []
        for i in indices:
            run = runs[-1] if runs else None
            if (run is not None and len(run) < batch_pages and i == run[-1] + 1
                    and inode.device_page(i) == inode.device_page(run[-1]) + 1):
                run.append(i)
            else:
                runs.append([i])
        return runs

    def start_writeback_locked(self, inode: Inode, run: list[int]) -> list[WritebackRequest]:
        """Move the run's dirty pages to writeback (skipping pages already in flight)."""
        vm = self.mm.vm
        requests: list[WritebackRequest] = []
        pages: list[Page] = []
        for index in run:
            page = inode.pages.get(index)
            if page is None or page.flags != PG_dirty:      # clean, or redirtied while in flight
                if pages:
                    requests.append(WritebackRequest(inode, pages))
                    pages = []
                continue
            page.flags = PG_writeback
            inode.dirty.discard(index)
            self.dirty_lru.pop(page, None)
            pages.append(page)
        if pages:
            requests.append(WritebackRequest(inode, pages))
        n = sum(len(r.pages) for r in requests)
        vm.nr_dirty -= n
        vm.nr_writeback += n
        self.nr_inflight += len(requests)
        if not inode.dirty:
            inode.dirtied_when = None
        return requests

    def end_writeback(self, req: WritebackRequest, exc: Optional[BaseException]) -> None:
        """Completion (on the device's thread): pages clean and reclaimable, or redirtied."""
        mm = self.mm
        with mm.lock:
            vm = mm.vm
            inode = req.inode
            for page in req.pages:
                reclaim = page.flags & PG_reclaim
                page.flags &= ~(PG_writeback | PG_reclaim)
                if page.flags & PG_dirty:
                    continue                        # written again meanwhile: stays dirty
                if exc is not None:
                    self.set_page_dirty_locked(page)
                    continue
                if page.flags & PTE_DIRTY:
                    continue                        # stored to through a mapping meanwhile
                inode.acked[page.index] = 1
                self.lru[page] = None
                if reclaim:                         # rotate_reclaimable_page()
                    self.lru.move_to_end(page, last=False)
            n = len(req.pages)
            vm.nr_writeback -= n
            self.nr_inflight -= 1
            if exc is None:
                vm.nr_written += n
                vm.writeback_bytes += n * PAGE_SIZE
                self.last_progress = time.monotonic()
            else:
                vm.writeback_errors += 1
            mm.writeback_done_locked()

    # --------------------------------------------------------- verification
    def acked_pages(self, inode: Inode) -> Iterator[tuple[int, int, int]]:
        """(first index, device offset, page count) runs of acknowledged pages of ``inode``."""
        with self.mm.lock:
            acked = bytes(inode.acked)
        index, n = 0, len(acked)
        while index < n:
            if not acked[index]:
                index += 1
                continue
            first = index
            while (index + 1 < n and acked[index + 1]
                   and inode.device_page(index + 1) == inode.device_page(index) + 1):
                index += 1
            yield first, inode.device_page(first) * PAGE_SIZE, index - first + 1
            index += 1

    def check_locked(self) -> list[str]:
        """Consistency of the cache with the counters (for the tests)."""
        problems = []
        vm = self.mm.vm
        pages = dirty = writeback = 0
        for inode in self.inodes.values():
            pages += len(inode.pages)
            for index, page in inode.pages.items():
                if page.flags & PG_dirty:
                    dirty += 1
                    if index not in inode.dirty or page not in self.dirty_lru:
                        problems.append(f"{inode.name}:{index} dirty but not in the dirty set")
                if page.flags & PG_writeback:
                    writeback += 1
                if not page.flags and page not in self.lru:
                    problems.append(f"{inode.name}:{index} clean but not on the LRU")
                if bool(page.flags & PTE_DIRTY) != (page in self.pte_dirty):
                    problems.append(f"{inode.name}:{index} pte dirt and the pte_dirty list disagree")
            for index in inode.dirty:
                page = inode.pages.get(index)
                if page is None or not page.flags & PG_dirty:
                    problems.append(f"{inode.name}:{index} in the dirty set but not a dirty page")
        for page in self.lru:
            if page.flags:
                problems.append(f"{page!r} on the LRU but not clean")
        if pages != self.nr_pages:
            problems.append(f"{pages} cached pages but nr_pages={self.nr_pages}")
        if len(self.dirty_lru) != dirty:
            problems.append(f"{dirty} dirty pages but {len(self.dirty_lru)} on the dirty list")
        charged = self.mm.used[Use.FILE]
        if not pages <= charged <= pages + self.nr_allocating:
            problems.append(f"{pages} cached pages (+{self.nr_allocating} being added) but "
                            f"{charged} FILE pages charged")
        if dirty != vm.nr_dirty:
            problems.append(f"{dirty} dirty pages but nr_dirty={vm.nr_dirty}")
        if writeback != vm.nr_writeback:
            problems.append(f"{writeback} pages under writeback but nr_writeback={vm.nr_writeback}")
        return problems

