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
Phillips' receive-side flag, which his drop rule reads. Only ``clear_memalloc()``
(``sk_clear_memalloc()``) takes the mark and the count back: closing a socket does not
(3.6 ``net/core/sock.c`` ``__sk_free`` never calls it, so ``sk_memalloc_socks()``
stays true after the last memalloc socket is gone; era ``sk_memalloc_mark``).

TCP's global limit, ``net.ipv4.tcp_mem`` (both eras): every TCP socket charges what it
queues in whole pages against one count (``sk_prot->memory_allocated``, kept by the
memory manager as ``tcp_memory_allocated``), through a per-socket float of pages
already counted (``sk_forward_alloc``). :meth:`Sock.rmem_schedule` is
``sk_rmem_schedule()``: past ``tcp_mem[2]`` (or under pressure, past a fair share) the
segment cannot be charged and TCP drops it (``tcp_data_queue``); from 3.6 a pfmemalloc
skb is let past (``mm.era.rmem_pfmemalloc_exempt``). The limit follows the era's
``tcp_init()`` (:func:`tcp_mem_limits`). Before it drops a refused segment TCP prunes
the socket's own queue (``tcp_prune_queue``): :meth:`Sock.collapse_locked` copies it, from the
first skb that is bloated for the era's ``tcp_adv_win_scale`` or read in part, into
dense ``GFP_ATOMIC`` buffers, and the charge is tried again. Not modelled: the
out-of-order queue (the real stack in the client's namespace reorders), the window TCP
clamps under pressure (the real stack owns the window), the transmit queue's
charges (``sk_wmem_queued``), which the model does not keep. Whole pages of the float go
back to the count as soon as the reader has read (``sk_mem_reclaim``); the kernel also
returns them from its timers, which may be later.

``sk_allocation`` is what the socket's transmit path allocates with (its PDU
buffers here; ``GFP_KERNEL`` unless its owner sets it, as ``sock_init_data`` does).
``memalloc_tx_bytes`` carries the context of the tasks that send on the socket: bytes
queued by a ``PF_MEMALLOC`` task, whose transmit skbs the kernel would allocate in
that task's context, from the reserves
(:meth:`~testbed.mm.manager.MemoryManager.memalloc_tx_credit`).
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Optional

from .errors import MMError
from .gfp import GFP_KERNEL, Gfp
from .skbuff import Skb, collapse_copy, collapse_skb
from .zone import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from .era import EraProfile
    from .manager import MemoryManager
    from .skbuff import NetDev

# sysctl_tcp_rmem[0]: below it a socket may always charge (both eras: a page when
# tcp_init() sized tcp_mem for a small machine, 4 KiB on x86 from 2.6.x on)
TCP_RMEM_MIN = PAGE_SIZE
# i386 SMP: sizeof(struct tcp_bind_hashbucket), a spinlock and an hlist_head
BIND_BUCKET_BYTES = 8


def tcp_mem_limits(era: "EraProfile", total_pages: int) -> tuple[int, int, int]:
    """``sysctl_tcp_mem`` as the era's ``tcp_init()`` sets it for ``total_pages``: the
    pages TCP may hold before it leaves pressure, enters it, and refuses (see
    :data:`~testbed.mm.era.CITATIONS` ``tcp_mem``)."""
    if era.tcp_mem == "3.6":
        limit = max(total_pages // 8, 128)          # nr_free_buffer_pages() / 8
        return limit // 4 * 3, limit, limit // 4 * 3 * 2
    mib_pages = -(-total_pages // 256) * 256        # alloc_large_system_hash rounds to 1 MiB
    scale = 13 if total_pages >= 128 * 1024 else 15
    ehash_log2 = (mib_pages >> (scale - PAGE_SHIFT)).bit_length() - 1
    bhash = (1 << ehash_log2) >> 1                  # tcp_ehash_size; bhash has as many
    order = 0
    while (PAGE_SIZE << order) < bhash * BIND_BUCKET_BYTES:
        order += 1
    return 768 << order, 1024 << order, 1536 << order


def tcp_win_from_space(era: "EraProfile", space: int) -> int:
    """``tcp_win_from_space()``: the part of ``space`` bytes of truesize TCP offers as window."""
    scale = era.tcp_adv_win_scale
    return space >> -scale if scale <= 0 else space - (space >> scale)


def sk_mem_pages(nbytes: int) -> int:
    """``sk_mem_pages()`` / ``sk_stream_pages()``: bytes in whole pages, rounded up."""
    return -(-nbytes // PAGE_SIZE)


class Sock:
    """An emulated socket. Every method may be called from any thread."""

    __slots__ = ("mm", "name", "memalloc", "closed", "rmem_alloc", "sk_allocation",
                 "memalloc_tx_bytes", "_queue", "_bloated", "_torn", "forward_alloc",
                 "proto_mem")

    def __init__(self, mm: "MemoryManager", name: str) -> None:
        self.mm = mm
        self.name = name
        self.memalloc = False       # sock_flag(sk, SOCK_MEMALLOC)
        self.closed = False
        self.rmem_alloc = 0         # sk_rmem_alloc: truesize of the skbs queued here
        self.sk_allocation = GFP_KERNEL
        self.memalloc_tx_bytes = 0  # payload bytes PF_MEMALLOC senders queued here
        self.forward_alloc = 0      # sk_forward_alloc: bytes counted in tcp_mem, not yet used
        self.proto_mem = False      # charged against tcp_mem (it has scheduled TCP data)
        self._queue: deque[Skb] = deque()
        self._bloated = 0           # skbs in the queue tcp_collapse() would start at
        self._torn = False          # a collapse stopped inside an skb (its copy failed)

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

    def rmem_schedule(self, skb: Skb) -> bool:
        """``tcp_try_rmem_schedule()``: may this TCP socket charge ``skb``? False: TCP drops
        it. Refused once, the socket's queue is collapsed (:meth:`collapse_locked`) and, if that
        returned memory, the charge is asked again."""
        with self.mm.lock:
            if self._rmem_schedule_locked(skb):
                return True
            if not self.collapse_locked(skb.dev):
                return False
            return self._rmem_schedule_locked(skb)

    def _rmem_schedule_locked(self, skb: Skb) -> bool:
        """``sk_rmem_schedule()``.

        ``__sk_mem_schedule(sk, truesize, SK_MEM_RECV)``: whole pages are added to the
        count; under ``tcp_mem[0]`` pressure ends and the charge stands; past ``tcp_mem[1]``
        TCP enters pressure, past ``tcp_mem[2]`` the charge is undone. Between, a socket
        below ``tcp_rmem[0]``, or any socket while there is no pressure, or one within
        its share of ``tcp_mem[2]`` may charge.
        """
        mm = self.mm
        size = skb.truesize
        self.proto_mem = True
        if size <= self.forward_alloc:
            return True
        amt = sk_mem_pages(size)
        self.forward_alloc += amt << PAGE_SHIFT
        mm.tcp_memory_allocated += amt
        if self._mem_schedule_locked(mm.tcp_memory_allocated):
            return True
        self.forward_alloc -= amt << PAGE_SHIFT
        mm.tcp_memory_allocated -= amt
        return bool(skb.pfmemalloc and mm.era.rmem_pfmemalloc_exempt)

    # -- tcp_prune_queue() -------------------------------------------------------------

    def _is_bloated(self, skb: Skb) -> bool:
        """``tcp_win_from_space(skb->truesize) > skb->len``."""
        return tcp_win_from_space(self.mm.era, skb.truesize) > skb.payload

    def _collapse_from(self) -> Optional[int]:
        """Where ``tcp_collapse()`` starts on the receive queue: the first skb that is
        read in part (data before ``copied_seq``: only the head can be) or bloated; None:
        nothing to collapse. (The count of bloated skbs spares the walk of a queue of
        full 3.6 segments at every refused segment; an skb left half copied by a failed
        allocation is read in part too, wherever it is.)"""
        queue = self._queue
        if not queue:
            return None
        if queue[0].unread < queue[0].payload:
            return 0
        if not self._bloated and not self._torn:
            return None
        return next((i for i, skb in enumerate(queue)
                     if self._is_bloated(skb) or skb.unread < skb.payload), None)

    def _collapsed(self, nbytes: int) -> list[tuple[int, int, int]]:
        """The buffers ``nbytes`` of payload are copied into: (payload, pages, truesize)."""
        mode = self.mm.era.skb_truesize
        copy = collapse_copy(mode)
        out = []
        while nbytes > 0:
            n = min(copy, nbytes)
            out.append((n, *collapse_skb(mode, n)))
            nbytes -= n
        return out

    def collapse_gain(self) -> int:
        """Bytes of ``sk_rmem_alloc`` a collapse of the queue would give back now, every
        copy allocated (mm lock held; nothing changes): what the lockup detector counts
        for the storage socket before it calls its next segment refused, and for the
        queues that hold TCP's count before it calls the cycle closed."""
        start = self._collapse_from()
        if start is None:
            return 0
        tail = list(islice(self._queue, start, None))
        after = sum(t for _, _, t in self._collapsed(sum(skb.unread for skb in tail)))
        return max(0, sum(skb.truesize for skb in tail) - after)

    def collapse_gain_pages(self) -> int:
        """Pages of TCP's count a collapse now gives back (``sk_mem_reclaim`` after it)."""
        gain = self.collapse_gain()
        if not gain or not self.proto_mem:
            return 0
        return ((self.forward_alloc + gain) >> PAGE_SHIFT) - (self.forward_alloc >> PAGE_SHIFT)

    def collapse_locked(self, dev: "NetDev") -> bool:
        """``tcp_prune_queue()``'s ``tcp_collapse()`` of the receive queue, then
        ``sk_mem_reclaim()``: from :meth:`_collapse_from` to the end, the unread payload is
        copied into ``alloc_skb(GFP_ATOMIC)`` buffers of ``SKB_MAX_ORDER(header, 0)`` bytes
        (taken on ``dev``, the device of the refused segment), each source freed once
        copied. A failed allocation ends the collapse where it is, as in the kernel. (A
        short last copy is itself bloated: the next prune copies it again, for nothing.)
        True if the queue's charge went down (mm lock held)."""
        start = self._collapse_from()
        if start is None:
            return False
        mm = self.mm
        queue = self._queue
        rmem = self.rmem_alloc
        kept = [queue.popleft() for _ in range(start)]
        for n, pages, truesize in self._collapsed(sum(skb.unread for skb in queue)):
            nskb = mm.skb_alloc_locked(dev, n, pages, False, truesize)
            if nskb is None:
                break
            nskb.payload = nskb.unread = n
            kept.append(nskb)
            self._charge(nskb.truesize)                 # skb_set_owner_r()
            while n > 0:                                # copy, releasing collapsed skbs
                src = queue[0]
                take = min(n, src.unread)
                src.unread -= take
                n -= take
                if not src.unread:
                    queue.popleft()
                    self._charge(-src.truesize)
                    mm.skb_free_locked(src)
                    mm.vm.TCPRcvCollapsed += 1
        self._torn = bool(queue) and queue[0].unread < queue[0].payload
        queue.extendleft(reversed(kept))
        self._bloated = sum(1 for skb in queue if self._is_bloated(skb))
        if self.proto_mem:
            self._mem_reclaim_locked()
        return self.rmem_alloc < rmem

    def _charge(self, truesize: int) -> None:
        """``sk_rmem_alloc`` and, for a socket in TCP's count, ``sk_mem_charge()``."""
        self.rmem_alloc += truesize
        if self.proto_mem:
            self.forward_alloc -= truesize

    def _mem_schedule_locked(self, allocated: int, commit: bool = True) -> bool:
        """``__sk_mem_schedule()``'s verdict once the count is ``allocated`` (the charge and
        the float already added). ``commit`` False asks without entering or leaving
        pressure (the lockup detector's question, :meth:`rmem_refused_locked`)."""
        mm = self.mm
        low, pressure, high = mm.tcp_mem
        if allocated < low:
            if commit:
                mm.tcp_memory_pressure = False
            return True
        if allocated > high:
            if commit:
                mm.enter_tcp_memory_pressure_locked()
            return False
        if commit and allocated > pressure:
            mm.enter_tcp_memory_pressure_locked()
        under_pressure = mm.tcp_memory_pressure or allocated > pressure
        if self.rmem_alloc < TCP_RMEM_MIN or not under_pressure:
            return True
        sockets = 1 + sum(1 for sk in mm.socks if sk.proto_mem and sk is not self)
        return high > sockets * sk_mem_pages(self.rmem_alloc + self.forward_alloc)

    def rmem_refused_locked(self, size: int, pfmemalloc: bool) -> bool:
        """Would :meth:`rmem_schedule` refuse a segment of ``truesize`` ``size`` now (in an
        skb that is ``pfmemalloc`` or not)? The same rule, asked without charging, after
        the collapse a refusal makes (every copy allocated): nothing changes (mm lock held)."""
        if pfmemalloc and self.mm.era.rmem_pfmemalloc_exempt:
            return False
        if not self._refused_as_is(size, self.rmem_alloc, self.forward_alloc,
                                   self.mm.tcp_memory_allocated):
            return False
        gain = self.collapse_gain()
        if not gain:
            return True
        forward = self.forward_alloc + gain if self.proto_mem else self.forward_alloc
        back = forward >> PAGE_SHIFT if self.proto_mem else 0        # sk_mem_reclaim()
        return self._refused_as_is(size, self.rmem_alloc - gain, forward - (back << PAGE_SHIFT),
                                   self.mm.tcp_memory_allocated - back)

    def _refused_as_is(self, size: int, rmem: int, forward: int, allocated: int) -> bool:
        """``sk_rmem_schedule()``'s answer for a socket holding ``rmem`` with a float of
        ``forward``, TCP's count at ``allocated`` (asked without committing)."""
        if size <= forward:
            return False
        amt = sk_mem_pages(size)
        saved = self.forward_alloc, self.rmem_alloc
        self.forward_alloc, self.rmem_alloc = forward + (amt << PAGE_SHIFT), rmem
        try:                                            # the share rule reads both
            return not self._mem_schedule_locked(allocated + amt, commit=False)
        finally:
            self.forward_alloc, self.rmem_alloc = saved

    @property
    def charged_pages(self) -> int:
        """Pages this socket holds in TCP's count (``sk_rmem_alloc`` + ``sk_forward_alloc``,
        whole pages by construction); 0 for a socket that never charged."""
        return (self.rmem_alloc + self.forward_alloc) >> PAGE_SHIFT if self.proto_mem else 0

    def _mem_reclaim_locked(self) -> None:
        """``sk_mem_reclaim()``: whole pages of the float go back to the count."""
        if self.forward_alloc >= PAGE_SIZE:
            mm = self.mm
            mm.tcp_memory_allocated -= self.forward_alloc >> PAGE_SHIFT
            self.forward_alloc &= PAGE_SIZE - 1
            if mm.tcp_memory_pressure and mm.tcp_memory_allocated < mm.tcp_mem[0]:
                mm.tcp_memory_pressure = False

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
            skb.payload = skb.unread = nbytes
            self._queue.append(skb)
            self._bloated += self._is_bloated(skb)
            self._charge(skb.truesize)                  # skb_set_owner_r()

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
                    break
                nbytes -= unread
                self._charge(-skb.truesize)             # sk_mem_uncharge()
                if self._bloated:                       # none in a queue of full 3.6 segments
                    self._bloated -= self._is_bloated(skb)
                queue.popleft()
                mm.skb_free_locked(skb)
                if not nbytes:
                    break
            if self.proto_mem:
                self._mem_reclaim_locked()

    def close(self) -> int:
        """Free whatever is still queued. Idempotent.

        The mark stays and so does its count in ``sk_memalloc_socks()``: 3.6's
        ``__sk_free`` does not call ``sk_clear_memalloc()`` (nbd never clears it, nor
        does iscsi_tcp's release), so the ``memalloc_socks`` static key stays raised
        once a memalloc socket has existed (era ``sk_memalloc_mark``).
        Returns the pages that went back to the zone (what the receive queue held).
        """
        mm = self.mm
        with mm.lock:
            self.closed = True
            self.memalloc_tx_bytes = 0
            queue = self._queue
            free = mm.zone.free
            while queue:
                mm.skb_free_locked(queue.popleft())
            self._bloated, self._torn = 0, False
            if self.proto_mem:                      # sk_stream_kill_queues(): all back
                self.forward_alloc += self.rmem_alloc
                self._mem_reclaim_locked()
            self.rmem_alloc = 0
            mm.socks.discard(self)
            return mm.zone.free - free

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def rmem_pages(self) -> int:
        """``sk_rmem_alloc`` in pages, rounded up (the metrics' ``rmem``)."""
        return sk_mem_pages(self.rmem_alloc)

    @property
    def rmem_bytes(self) -> int:
        """Unread payload bytes in the receive queue."""
        with self.mm.lock:
            return sum(skb.unread for skb in self._queue)

    def __repr__(self) -> str:
        mark = " SOCK_MEMALLOC" if self.memalloc else ""
        return f"<Sock {self.name}{mark} queued={len(self._queue)} rmem_pages={self.rmem_pages}>"
