"""``struct sock`` as far as memory goes: a receive queue charged until read.

The packet handler delivers a frame to the real kernel stack and hands its skb
to the emulated socket of the same flow with :meth:`Sock.queue_rcv`; the skb's
pages stay charged while the payload sits unread, and the socket counts its
``truesize`` (``sk_rmem_alloc``, as ``skb_set_owner_r`` does): in 2005 less than the
page the buffer really takes, in 3.6 the fragment, head and shared info. The reader
(a downloader, the iSCSI initiator) calls :meth:`Sock.consume` after each ``recv()``:
fully read skbs are freed, oldest first. ``set_memalloc()`` is ``sk_set_memalloc()``:
the socket becomes ``SOCK_MEMALLOC`` and counts in ``sk_memalloc_socks()``; only
from 3.6 (``mm.era.sk_memalloc_tx``) does that also give the socket's own
allocations the reserves (``sk_allocation |= __GFP_MEMALLOC``). In 2005 the mark is
Phillips' receive-side flag, which his drop rule reads.

``sk_allocation`` is what the socket's transmit path allocates with (its PDU
buffers here; ``GFP_KERNEL`` unless its owner sets it, as ``sock_init_data`` does).
``memalloc_tx_bytes`` carries the context of the tasks that send on the socket: bytes
queued by a ``PF_MEMALLOC`` task, whose transmit skbs the kernel would allocate in
that task's context, from the reserves
(:meth:`~testbed.mm.manager.MemoryManager.memalloc_tx_credit`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .errors import MMError
from .gfp import GFP_KERNEL, Gfp
from .skbuff import Skb
from .zone import PAGE_SIZE

if TYPE_CHECKING:
    from .manager import MemoryManager


class Sock:
    """An emulated socket. Every method may be called from any thread."""

    __slots__ = ("mm", "name", "memalloc", "closed", "rmem_alloc", "sk_allocation",
                 "memalloc_tx_bytes", "_queue")

    def __init__(self, mm: "MemoryManager", name: str) -> None:
        self.mm = mm
        self.name = name
        self.memalloc = False       # sock_flag(sk, SOCK_MEMALLOC)
        self.closed = False
        self.rmem_alloc = 0         # sk_rmem_alloc: truesize of the skbs queued here
        self.sk_allocation = GFP_KERNEL
        self.memalloc_tx_bytes = 0  # payload bytes PF_MEMALLOC senders queued here
        self._queue: deque[Skb] = deque()

    def set_memalloc(self) -> None:
        """``sk_set_memalloc()``: SOCK_MEMALLOC, counted in ``sk_memalloc_socks()``;
        from 3.6 also ``sk_allocation |= __GFP_MEMALLOC``."""
        mm = self.mm
        with mm.lock:
            if self.closed:
                raise MMError(f"sock {self.name}: set_memalloc on a closed socket")
            if not self.memalloc:
                self.memalloc = True
                mm.memalloc_socks += 1
            if mm.era.sk_memalloc_tx:
                self.sk_allocation |= Gfp.MEMALLOC

    def clear_memalloc(self) -> None:
        """``sk_clear_memalloc()``."""
        with self.mm.lock:
            self._clear_memalloc_locked()

    def _clear_memalloc_locked(self) -> None:
        if self.memalloc:
            self.memalloc = False
            self.mm.memalloc_socks -= 1
        self.sk_allocation &= ~Gfp.MEMALLOC

    def queue_rcv(self, skb: Skb, nbytes: int) -> None:
        """The delivered ``skb`` carries ``nbytes`` of new payload for the reader.

        It stays charged until :meth:`consume` has read them. With no new payload
        (a pure ACK, a duplicate) it is freed at once; so is anything queued to a
        closed socket.
        """
        mm = self.mm
        with mm.lock:
            if nbytes <= 0 or self.closed:
                mm.skb_free_locked(skb)
                return
            skb.unread = nbytes
            self._queue.append(skb)
            self.rmem_alloc += skb.truesize

    def consume(self, nbytes: int) -> None:
        """The reader read ``nbytes``: free every skb now fully read, oldest first."""
        if nbytes <= 0:
            return
        mm = self.mm
        queue = self._queue
        with mm.lock:
            while queue:
                skb = queue[0]
                unread = skb.unread
                if unread > nbytes:
                    skb.unread = unread - nbytes
                    return
                nbytes -= unread
                self.rmem_alloc -= skb.truesize
                queue.popleft()
                mm.skb_free_locked(skb)
                if not nbytes:
                    return

    def close(self) -> int:
        """Free whatever is still queued; clear SOCK_MEMALLOC. Idempotent.

        Returns the pages that went back to the zone (what the receive queue held).
        """
        mm = self.mm
        with mm.lock:
            self._clear_memalloc_locked()
            self.closed = True
            self.memalloc_tx_bytes = 0
            queue = self._queue
            free = mm.zone.free
            while queue:
                mm.skb_free_locked(queue.popleft())
            self.rmem_alloc = 0
            mm.socks.discard(self)
            return mm.zone.free - free

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def rmem_pages(self) -> int:
        """``sk_rmem_alloc`` in pages, rounded up (the metrics' ``rmem``)."""
        return -(-self.rmem_alloc // PAGE_SIZE)

    @property
    def rmem_bytes(self) -> int:
        """Unread payload bytes in the receive queue."""
        with self.mm.lock:
            return sum(skb.unread for skb in self._queue)

    def __repr__(self) -> str:
        mark = " SOCK_MEMALLOC" if self.memalloc else ""
        return f"<Sock {self.name}{mark} queued={len(self._queue)} rmem_pages={self.rmem_pages}>"
