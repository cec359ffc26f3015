"""Workloads of the storage client: threads that fill the page cache.

``Writer``       writes ``total_mb`` over ``files`` files, ``chunk_kb`` per call, at
                 ``rate_mbps`` MiB/s (0: flat out); every dirtied page goes through
                 ``balance_dirty_pages()``, so the dirty limits hold it back.
``MmapWriter``   the same bytes stored through shared mappings of its files
                 (:meth:`~testbed.mm.pagecache.PageCache.store_mapped`): 2005 kernels
                 neither counted nor throttled that dirt - it only stalls when a page
                 fault cannot get a page, and fills memory with pages whose dirt only
                 reclaim or its exit (``munmap``) reveals; from 2.6.19 the write fault
                 dirties the page and ``balance_dirty_pages()`` throttles it.
``Downloader``   connects to a bulk server (given at run time), reads, calls
                 ``mm_sock.consume(n)`` after each ``recv`` and writes what it read
                 into page-cache files - so its socket queue and its dirty pages
                 draw on the same memory, and the dirty limits throttle its reading.
                 ``socket_hook(sock, mm_sock, server)`` runs after bind and before
                 connect, so the storage client can register the flow (local
                 address from ``sock``, remote ``server``) with the packet handler.

Writers' bytes are :mod:`testbed.mm.pattern` pages (verifiable without a copy);
a downloader keeps a CRC-32 per page of what it wrote. ``verify_page`` checks
one page read back from the device.

Each workload is a user process to the OOM killer (:mod:`testbed.mm.oom_kill`):
it reports its address space (``total_vm_pages``) and resident pages
(``rss_pages``) - its buffers and, for an mmap writer, its mapping - and when
killed (:meth:`Workload.oom_kill`) it stops, releases what it holds and exits
(``killed`` is then True).
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
import zlib
from array import array
from typing import Callable, ClassVar, Optional

from .config import WorkloadConfig
from .errors import MachineStopped, MMError
from .manager import MemoryManager
from .pagecache import Inode, PageCache
from .pattern import file_id, pattern_bytes
from .sock import Sock
from .task import TaskKilled, TaskStruct, current
from .zone import PAGE_SIZE

log = logging.getLogger(__name__)

SocketHook = Callable[[socket.socket, Sock, tuple[str, int]], None]
CONNECT_TIMEOUT_S = 30.0
RECV_POLL_S = 0.2
RECV_SIZE = 65536


class Workload(threading.Thread):
    """A thread writing into the page cache. Subclasses implement ``body``."""

    kind: ClassVar[str] = "workload"

    def __init__(self, index: int, config: WorkloadConfig, mm: MemoryManager, page_cache: PageCache) -> None:
        super().__init__(name=f"{config.kind}{index}", daemon=True)
        self.index = index
        self.config = config
        self.mm = mm
        self.pc = page_cache
        self.files: list[Inode] = []
        self.bytes_written = 0
        self.done = False
        self.killed = False                     # the OOM killer ended it
        self.task: Optional[TaskStruct] = None  # set when the thread runs
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        self.task = current()
        try:
            if self.config.start_after_s and self.mm.wait_stopping(self.config.start_after_s):
                return
            self.mm.check_stopping()
            self.body()
            self.done = True
        except TaskKilled:
            self.killed = True
        except MachineStopped:
            pass
        except Exception as exc:
            log.warning("%s failed: %s", self.name, exc)
            self.error = exc
        finally:
            self.exit_mm()

    def exit_mm(self) -> None:
        """What the process's exit does to the memory manager (``exit_mmap``)."""

    # ------------------------------------------------------- as a process
    @property
    def ended(self) -> bool:
        """Done, or killed and exited."""
        return self.done or (self.killed and not self.is_alive())

    def oom_alive(self) -> bool:
        return self.task is not None and self.is_alive()

    def oom_dying(self) -> bool:
        return self.task is not None and self.task.oom_killed and self.is_alive()

    def buffer_pages(self) -> int:
        """Pages of its own buffers (the bytes it writes per call)."""
        return self.config.chunk_kb // 4

    def total_vm_pages(self) -> int:
        return self.buffer_pages()

    def rss_pages(self) -> int:
        return self.buffer_pages()

    def oom_kill(self) -> int:
        """SIGKILL from the OOM killer: the task dies at its next wait; pages freed."""
        if self.task is not None:
            self.task.oom_killed = True
        freed = self.release()
        self.stop()
        return freed

    def release(self) -> int:
        """Free what the process holds in the emulated memory at once; the pages freed."""
        return 0

    def oom_freeable_pages(self) -> int:
        """The pages :meth:`release` would free now (nothing: a writer's pages are file
        pages, which its death leaves dirty)."""
        return 0

    def body(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Interrupt blocking I/O of the workload (the mm's stop flag does the rest)."""

    def _pace(self, started: float, written: int) -> None:
        rate = self.config.rate_mbps
        if rate > 0:
            delay = started + written / (rate * (1 << 20)) - time.monotonic()
            if delay > 0 and self.mm.wait_stopping(delay):
                self.mm.check_stopping()
        else:
            self.mm.check_stopping()

    def expected_crc(self, inode: Inode, index: int) -> int:
        """CRC-32 of the valid bytes page ``index`` of ``inode`` must hold."""
        raise NotImplementedError

    @staticmethod
    def _valid(inode: Inode, index: int) -> int:
        return min(PAGE_SIZE, inode.size - index * PAGE_SIZE)


class Writer(Workload):
    """``write()`` calls of pattern data, throttled by balance_dirty_pages()."""

    kind = "writer"

    def _store(self, inode: Inode, offset: int, data: bytes) -> None:
        self.pc.write(inode, offset, data)

    def body(self) -> None:
        cfg = self.config
        total, nfiles = cfg.total_bytes, cfg.files
        sizes = [total // nfiles + (1 if k < total % nfiles else 0) for k in range(nfiles)]
        self.files = [self.pc.create(f"{self.name}-{k}") for k in range(nfiles)]
        fids = [file_id(f.name) for f in self.files]
        offsets = [0] * nfiles
        chunk = cfg.chunk_kb * 1024
        started = time.monotonic()
        while self.bytes_written < total:
            for k, inode in enumerate(self.files):
                length = min(chunk, sizes[k] - offsets[k])
                if length <= 0:
                    continue
                data = pattern_bytes(cfg.seed, fids[k], offsets[k], length)
                self._store(inode, offsets[k], data)
                offsets[k] += length
                self.bytes_written += length
                self._pace(started, self.bytes_written)

    def expected_crc(self, inode: Inode, index: int) -> int:
        n = self._valid(inode, index)
        return zlib.crc32(pattern_bytes(self.config.seed, file_id(inode.name), index * PAGE_SIZE, n))


class MmapWriter(Writer):
    """Stores into shared mappings of its files: throttled only from 2.6.19 on."""

    kind = "mmap_writer"

    def _store(self, inode: Inode, offset: int, data: bytes) -> None:
        self.pc.store_mapped(inode, offset, data)

    def mapping_pages(self) -> int:
        """Its mappings: the whole files (``mm->total_vm`` counts them resident or not)."""
        return -(-self.config.total_bytes // PAGE_SIZE)

    def total_vm_pages(self) -> int:
        return self.buffer_pages() + self.mapping_pages()

    def rss_pages(self) -> int:
        with self.mm.lock:
            resident = sum(len(inode.pages) for inode in self.files if inode.mapped)
        return self.buffer_pages() + resident

    def exit_mm(self) -> None:
        for inode in self.files:            # munmap: the ptes' dirt goes to the pages
            self.pc.munmap(inode)


# asm-generic/socket.h; Python's socket module does not export it (before this constant,
# the AttributeError fell back to SO_RCVBUF, capped at the host's rmem_max)
SO_RCVBUFFORCE = 33


def set_rcvbuf(sock: socket.socket, nbytes: int) -> None:
    """Ask for a receive buffer of ``nbytes`` (the kernel doubles it for overhead).

    ``SO_RCVBUFFORCE`` passes ``net.core.rmem_max`` as root; without root the plain
    option is capped there. A large buffer lets a reader that stops reading hold much
    received data: the "music downloaded by your children" of the seed article.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, nbytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)


class Downloader(Workload):
    """Reads a TCP stream and writes it into page-cache files."""

    kind = "downloader"

    def __init__(self, index: int, config: WorkloadConfig, mm: MemoryManager, page_cache: PageCache,
                 server: Optional[tuple[str, int]] = None, socket_hook: Optional[SocketHook] = None) -> None:
        super().__init__(index, config, mm, page_cache)
        self.server = server
        self.socket_hook = socket_hook
        self.bytes_received = 0
        self.eof = False
        self.crcs: list[array] = []         # per file: CRC-32 of each page written
        self.mm_sock: Optional[Sock] = None
        self._sock: Optional[socket.socket] = None
        self._pending = bytearray()         # read, not yet written to the files

    def total_vm_pages(self) -> int:
        return RECV_SIZE // PAGE_SIZE + -(-len(self._pending) // PAGE_SIZE)

    def rss_pages(self) -> int:
        return self.total_vm_pages()

    def release(self) -> int:
        """Its socket's receive queue (closing frees the skbs: ``exit_files``)."""
        sk = self.mm_sock
        return sk.close() if sk is not None else 0

    def oom_freeable_pages(self) -> int:
        sk = self.mm_sock
        return sk.rmem_pages if sk is not None and not sk.closed else 0

    def stop(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def body(self) -> None:
        if self.server is None:
            raise MMError(f"{self.name}: no server address was given for this downloader")
        cfg = self.config
        total = cfg.total_bytes
        per_file = -(-total // cfg.files)
        self.mm_sock = self.mm.sock_create(self.name)
        family = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
        sock = self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if cfg.rcvbuf_kb:
                set_rcvbuf(sock, cfg.rcvbuf_kb * 1024)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            if self.socket_hook is not None:
                self.socket_hook(sock, self.mm_sock, self.server)
            self._connect(sock)
            if cfg.request:
                sock.sendall(cfg.request.encode())
            sock.settimeout(RECV_POLL_S)
            pending = self._pending
            while self.bytes_received < total:
                try:
                    data = sock.recv(min(RECV_SIZE, total - self.bytes_received))
                except socket.timeout:
                    self.mm.check_stopping()
                    continue
                except OSError:
                    # stop() or the OOM killer shut the socket down under a recv that
                    # was waiting: a reset (ECONNRESET) is then theirs, not the network's
                    self.mm.check_stopping()
                    raise
                if not data:
                    self.mm.check_stopping()        # stop() or the OOM killer shut it down
                    self.eof = True
                    break
                self.mm_sock.consume(len(data))
                self.bytes_received += len(data)
                pending += data
                self._write_out(pending, per_file, final=False)
            self._write_out(pending, per_file, final=True)
        finally:
            self._sock = None
            sock.close()
            self.mm_sock.close()

    def _connect(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        err = sock.connect_ex(self.server)
        if err not in (0, errno.EINPROGRESS):
            raise MMError(f"{self.name}: connect to {self.server[0]}:{self.server[1]}: {errno.errorcode.get(err, err)}")
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not select.select([], [sock], [], RECV_POLL_S)[1]:
            self.mm.check_stopping()
            if time.monotonic() > deadline:
                raise MMError(f"{self.name}: connect to {self.server[0]}:{self.server[1]} "
                              f"timed out after {CONNECT_TIMEOUT_S}s")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise MMError(f"{self.name}: connect to {self.server[0]}:{self.server[1]}: {errno.errorcode.get(err, err)}")
        sock.setblocking(True)

    def _write_out(self, pending: bytearray, per_file: int, final: bool) -> None:
        """Write whole chunks of ``pending`` (and, when ``final``, the rest) into the files."""
        chunk = self.config.chunk_kb * 1024
        while pending:
            file_no, offset = divmod(self.bytes_written, per_file)
            room = per_file - offset
            n = min(len(pending), room, chunk)
            if n < chunk and n < room and not final:
                return
            if file_no == len(self.files):
                self.files.append(self.pc.create(f"{self.name}-{file_no}"))
                self.crcs.append(array("L"))
            data = bytes(pending[:n])
            # The checksums first: a write interrupted half-way (the machine stopped) may
            # already have put some of these pages in the cache, to be written back.
            crcs = self.crcs[file_no]
            for start in range(0, n, PAGE_SIZE):
                crcs.append(zlib.crc32(data[start:start + PAGE_SIZE]))
            self.pc.write(self.files[file_no], offset, data)
            del pending[:n]
            self.bytes_written += n

    def expected_crc(self, inode: Inode, index: int) -> int:
        crcs = self.crcs[self.files.index(inode)]
        return crcs[index] if index < len(crcs) else -1     # -1 matches no page


WORKLOAD_CLASSES: dict[str, type[Workload]] = {cls.kind: cls for cls in (Writer, MmapWriter, Downloader)}
