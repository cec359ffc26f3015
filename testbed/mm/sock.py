"""``struct sock`` as far as memory goes: a receive queue charged until read.

The packet handler delivers a frame to the real kernel stack and hands its skb
to the emulated socket of the same flow with :meth:`Sock.queue_rcv`; the skb's
pages stay charged while the payload sits unread. The reader (a downloader,
the iSCSI initiator) calls :meth:`Sock.consume` after each ``recv()``: fully
read skbs are freed, oldest first. ``set_memalloc()`` is ``sk_set_memalloc()``:
the socket becomes ``SOCK_MEMALLOC`` and counts in ``sk_memalloc_socks()``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .errors import MMError
from .skbuff import Skb

if TYPE_CHECKING:
    from .manager import MemoryManager


class Sock:
    """An emulated socket. Every method may be called from any thread."""

    __slots__ = ("mm", "name", "memalloc", "closed", "rmem_pages", "_queue")

    def __init__(self, mm: "MemoryManager", name: str) -> None:
        self.mm = mm
        self.name = name
        self.memalloc = False       # sock_flag(sk, SOCK_MEMALLOC)
        self.closed = False
        self.rmem_pages = 0         # data pages of the skbs queued here
        self._queue: deque[Skb] = deque()

    def set_memalloc(self) -> None:
        """``sk_set_memalloc()``: SOCK_MEMALLOC, counted in ``sk_memalloc_socks()``."""
        mm = self.mm
        with mm.lock:
            if self.closed:
                raise MMError(f"sock {self.name}: set_memalloc on a closed socket")
            if not self.memalloc:
                self.memalloc = True
                mm.memalloc_socks += 1

    def clear_memalloc(self) -> None:
        """``sk_clear_memalloc()``."""
        mm = self.mm
        with mm.lock:
            if self.memalloc:
                self.memalloc = False
                mm.memalloc_socks -= 1

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
            self.rmem_pages += skb.pages

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
                self.rmem_pages -= skb.pages
                queue.popleft()
                mm.skb_free_locked(skb)
                if not nbytes:
                    return

    def close(self) -> None:
        """Free whatever is still queued; clear SOCK_MEMALLOC. Idempotent."""
        mm = self.mm
        with mm.lock:
            if self.memalloc:
                self.memalloc = False
                mm.memalloc_socks -= 1
            self.closed = True
            queue = self._queue
            while queue:
                mm.skb_free_locked(queue.popleft())
            self.rmem_pages = 0
            mm.socks.discard(self)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def rmem_bytes(self) -> int:
        """Unread payload bytes in the receive queue."""
        with self.mm.lock:
            return sum(skb.unread for skb in self._queue)

    def __repr__(self) -> str:
        mark = " SOCK_MEMALLOC" if self.memalloc else ""
        return f"<Sock {self.name}{mark} queued={len(self._queue)} rmem_pages={self.rmem_pages}>"
