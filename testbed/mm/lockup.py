"""The lockup detector: a stall is watched until it is proven stuck, then explained.

A *stall* is writeback pending with no completion for ``lockup_after_s`` while free
memory is at or under ``WMARK_MIN`` with no clean page a reclaimer can run to
(:func:`reclaim_outlook`), or while the storage flow's received segments are refused at
TCP's limit (:class:`TcpOutlook`, free memory whatever it is). It opens a
:class:`StallEpisode` and the run goes on. The episode ends, and is recorded with what
ended it, when a writeback completes, nothing is left to write back, or - not held at
TCP's limit - free memory rises above min or clean pages come within a reclaimer's
reach. ``lockup_after_s`` therefore means "open an episode after this long", no longer
"declare a lockup".

Two states the detector once could not prove, each seen in a 2005 run that ended
degraded at its deadline: free memory at 1 page beside 32 clean pages for 50 s, kswapd
and four allocators asleep in ``get_request_wait`` with the request queue full (8 of 8;
``phillips-2005-threshold``, the CI run of 17de68c) - a clean page is a way out only
while a reclaimer can run to it; and 1,536 of 1,536 pages charged to TCP from 20 s, the
downloads' readers waiting for writeback, the session lost at 22.9 s and never
reinstated, free memory at 302 pages above min 234 (``reserve-only`` on 1acdae7) -
2.6.13's stream-specific deadlock, which 3.6's c76562b6709f ends for pfmemalloc skbs.

Inside an episode the *stuck clock* runs while :class:`StuckCriteria` hold at every
check (every ``period_s``). When one breaks the clock stops, the break is recorded, and
it starts again from zero if the criteria hold again. Once the state has been stuck for
the :class:`RecoveryHorizon` - the time the iSCSI initiator and the target's TCP need
to have tried everything they try on their own - the detector asks more questions:
were the storage flow's frames dropped for lack of memory meanwhile (criterion 4), and
does the emulated state hold a wait-for cycle (:func:`find_cycle`, lockdep's habit:
show the cycle, not the symptom)? Both yes, and the OOM killer cannot end it either
(:func:`oom_outlook`: no process may call it, or killing every one would not free what
the storage flow needs): a lockup, whose :class:`LockupEvidence` carries the cycle with a
counter on every edge and the OOM killer's position. Otherwise the episode is marked stuck
with the reason it is not a lockup, and the run goes on (a report calls it degraded).

``patience`` horizons (default 1) may be asked for: the lockup is proven after one, and
each further horizon adds a checkpoint to the evidence (writeback completed since the
previous one, storage frames dropped and delivered) before the detector fires. A lockup
that recovers in that time keeps its ``recovered_at``, and the detector never fires.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

from .skbuff import NetDev
from .sock import Sock, sk_mem_pages
from .vmstat import Use

if TYPE_CHECKING:
    from ..iscsi.session import SessionConfig
    from .manager import MemoryManager
    from .pagecache import PageCache

# The target's TCP (Linux, the same as the client's):
TCP_RTO_MIN_S = 0.2           # TCP_RTO_MIN (HZ/5), include/net/tcp.h: RTO of a fast LAN path
TCP_TIMEOUT_INIT_S = 1.0      # TCP_TIMEOUT_INIT, include/net/tcp.h; RFC 6298 §2.1 initial RTO
TCP_RETRIES1 = 3              # net.ipv4.tcp_retries1 (ip-sysctl.rst): retransmissions after
                              # which TCP takes the path for broken, not for a lost segment
# DefaultTime2Wait when no login negotiated it: RFC 7143 §13.15 (tgtd answers 2 too)
RFC_DEFAULT_TIME2WAIT_S = 2

# Drop reasons that mean "no memory for the frame" (by name: the receive path's list grows)
MEMORY_DROPS = ("NOMEM", "RESERVE_CAP", "RX_NO_BUFFER", "PROTO_MEM")
# How a stall's ``not_lockup`` begins when the OOM killer could still end it
# (:meth:`OomOutlook.could_end`); readers of summaries match on it.
OOM_MAY_END = "the OOM killer may still end it"


# -- the horizon ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RecoveryHorizon:
    """How long a stuck state must last before nothing on its own can undo it.

    The storage client's initiator (``testbed.iscsi.session``, error recovery level 0)
    notices a dead exchange after ``command_timeout_s`` (a command unanswered, or a send
    the target's window does not take: the connection's send timeout is the same), or
    after ``keepalive_s`` (a NOP-Out ping after keepalive_interval of silence, unanswered
    for keepalive_timeout); the later of the two is the bound, because a target whose
    pings get through while its responses do not is only caught by the command timeout. It
    then drops the connection and reinstates the session: DefaultTime2Wait
    (``time2wait_s``, as negotiated, RFC 7143 §6.3.5) and one login, bounded by
    ``login_s``. Meanwhile the target's TCP retransmits what the client dropped, its RTO
    doubling from ``tcp_rto_s`` (RFC 6298 §5.5); ``tcp_retransmits`` attempts and the
    wait after the last take ``tcp_rto_s * (2**(n+1) - 1)``. With the initiator's
    defaults (30 s; 5 + 5 s; 2 s; 10 s) and the 1 s initial RTO of a connection with no
    RTT sample (three retransmissions: 1 + 2 + 4 + 8 = 15 s; 3 s from TCP_RTO_MIN) the
    horizon is max(30 + 2 + 10, 15) = 42 s.
    """

    command_timeout_s: float
    keepalive_s: float
    time2wait_s: float
    login_s: float
    tcp_rto_s: float = TCP_TIMEOUT_INIT_S
    tcp_retransmits: int = TCP_RETRIES1

    @classmethod
    def from_session(cls, config: "SessionConfig",
                     time2wait_s: float = RFC_DEFAULT_TIME2WAIT_S) -> "RecoveryHorizon":
        """The horizon of an initiator with ``config`` and the negotiated DefaultTime2Wait."""
        return cls(command_timeout_s=config.command_timeout,
                   keepalive_s=config.keepalive_interval + config.keepalive_timeout,
                   time2wait_s=float(time2wait_s), login_s=config.login_timeout)

    @classmethod
    def default(cls) -> "RecoveryHorizon":
        """The horizon of the project's initiator with its default configuration."""
        from ..iscsi.session import SessionConfig      # the mm does not need iscsi otherwise
        return cls.from_session(SessionConfig())

    @property
    def detect_s(self) -> float:
        """The longest the initiator takes to give up on the connection."""
        return max(self.command_timeout_s, self.keepalive_s)

    @property
    def reinstatement_s(self) -> float:
        """One ERL 0 session reinstatement: DefaultTime2Wait, then a login."""
        return self.time2wait_s + self.login_s

    @property
    def tcp_backoff_s(self) -> float:
        """The target's ``tcp_retransmits`` retransmissions and the RTO after the last."""
        return self.tcp_rto_s * (2 ** (self.tcp_retransmits + 1) - 1)

    @property
    def seconds(self) -> float:
        return max(self.detect_s + self.reinstatement_s, self.tcp_backoff_s)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detect_s": self.detect_s, "reinstatement_s": self.reinstatement_s,
                "tcp_backoff_s": self.tcp_backoff_s, "seconds": self.seconds}


# -- the storage flow -----------------------------------------------------------------------

@dataclass(frozen=True)
class FlowTally:
    """Cumulative frames of the storage flow (the SOCK_MEMALLOC class)."""

    rx_dropped: int = 0       # received, dropped for lack of memory (:data:`MEMORY_DROPS`)
    delivered: int = 0        # received and handed to the stack
    tx_dropped: int = 0       # to be sent, dropped for lack of memory
    rx_proto_mem: int = 0     # of rx_dropped, refused at TCP's limit (PROTO_MEM)

    @property
    def dropped(self) -> int:
        return self.rx_dropped + self.tx_dropped

    def __sub__(self, other: "FlowTally") -> "FlowTally":
        return FlowTally(self.rx_dropped - other.rx_dropped, self.delivered - other.delivered,
                         self.tx_dropped - other.tx_dropped, self.rx_proto_mem - other.rx_proto_mem)


@dataclass
class StorageFlow:
    """What the detector may ask of the network storage: its device, its frames, its state.

    ``dev`` is the interface its frames arrive on (the policy's receive mark is per
    device); ``tally`` counts its frames; ``status`` says how the initiator is doing
    (for the evidence only).
    """

    name: str
    dev: NetDev
    tally: Callable[[], FlowTally]
    status: Callable[[], str] = lambda: ""
    # when the oldest of its data segments still waiting for transmit memory began to
    # wait (``time.monotonic()``), or None: the sender in sk_stream_wait_memory
    tx_wait_since: Callable[[], Optional[float]] = lambda: None
    # when the initiator lost its connection and began to reinstate the session
    # (``time.monotonic()``), while it still tries; None when connected or given up. Its
    # new connection's SYN needs a transmit skb as a data segment does, so every attempt
    # it has left fails while one cannot be had.
    reconnecting_since: Callable[[], Optional[float]] = lambda: None


def tally_from_counters(net: dict[str, Any]) -> FlowTally:
    """The storage flow's :class:`FlowTally` from the packet handler's counters."""
    def dropped(direction: str) -> int:
        reasons = net[direction]["classes"]["memalloc"]["reasons"]
        return sum(reasons[r]["frames"] for r in MEMORY_DROPS if r in reasons)

    delivered = net["rx"]["classes"]["memalloc"]["delivered"]["frames"]
    refused = net["rx"]["classes"]["memalloc"]["reasons"].get("PROTO_MEM", {}).get("frames", 0)
    return FlowTally(dropped("rx"), delivered, dropped("tx"), refused)


# -- one look at the machine ----------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """What one check reads under the mm lock (``t`` is ``time.monotonic()``)."""

    t: float
    free: int
    wmark_min: int
    rx_mark: int              # the lowest free count a storage receive may leave (policy)
    rx_need: int              # pages one storage receive takes now (:func:`rx_need`)
    tx_mark: int              # the lowest free count a storage transmit may leave (era)
    tx_need: int              # pages one storage transmit takes now
    tx_wait_since: Optional[float]    # the oldest storage segment waiting to be sent
    reconnecting_since: Optional[float]   # the session being reinstated since
    dirty: int
    writeback: int
    reclaimable: int
    last_progress: float      # when a writeback last completed
    nr_written: int
    # who could still run to the clean pages (read only while there are some)
    reclaim: Optional["ReclaimOutlook"] = None
    # the storage flow's next received segment against TCP's limit (None: no storage)
    tcp: Optional["TcpOutlook"] = None

    @property
    def pending(self) -> bool:
        return self.dirty + self.writeback > 0

    @property
    def reclaim_reachable(self) -> bool:
        """Clean pages that a reclaimer can still run to (criterion 2 broken)."""
        return self.reclaimable > 0 and (self.reclaim is None or self.reclaim.reachable)

    @property
    def tcp_refused(self) -> bool:
        """The storage flow's next segment would be refused at TCP's limit."""
        return self.tcp is not None and self.tcp.refused

    @property
    def memory_held(self) -> bool:
        """Free memory at or under min, and no reclaimer can run to a clean page."""
        return self.free <= self.wmark_min and not self.reclaim_reachable

    @property
    def rx_blocked(self) -> bool:
        return self.free - self.rx_need < self.rx_mark

    @property
    def tx_since(self) -> Optional[float]:
        """Since when the storage flow has had something to send: a data segment waiting
        for memory, else the reinstatement's new connection (its SYN); None if neither."""
        return self.tx_wait_since if self.tx_wait_since is not None else self.reconnecting_since

    @property
    def tx_blocked(self) -> bool:
        """The storage flow has something to send (:attr:`tx_since`), and a transmit skb
        would take free memory under the mark the storage socket's allocations may go to."""
        return self.tx_since is not None and self.free - self.tx_need < self.tx_mark


class StuckCriteria:
    """The five conditions a stuck state keeps, each one broken alone defeats a lockup.

    1. *No memory for the storage flow*: a receive buffer for the storage flow
       (:func:`rx_need` pages) would take the zone under the mark such an allocation may
       take it to (``Policy.storage_rx_mark``: the GFP_ATOMIC floor, or zero where the
       flow may use the reserves), so none can be had for its frames; or its data
       segments wait to be sent (``sk_stream_wait_memory``), or its session is being
       reinstated (the new connection's SYN), and a transmit skb would take
       the zone under the socket's mark (the GFP_ATOMIC floor, zero from 3.6's
       ``sk_set_memalloc``). With no network storage the mark is min and the need one
       page (no GFP_KERNEL allocation either).
       *Or no TCP memory for it* (:class:`TcpOutlook`, whatever the free memory): its
       next received segment would be refused by ``sk_rmem_schedule()`` - the count
       ``tcp_memory_allocated`` at ``tcp_mem[2]`` (2.6.13 ``include/net/sock.h``
       ``sk_stream_rmem_schedule`` -> ``net/core/stream.c`` ``sk_stream_mem_schedule``),
       and, where the era exempts ``pfmemalloc`` skbs (3.6 ``include/net/sock.h``
       ``sk_rmem_schedule``: ``|| skb_pfmemalloc(skb)``, c76562b6709f), no buffer it may
       land in is ``pfmemalloc``. 2.6.13's stream-specific deadlock: the segment is
       dropped (``tcp_data_queue``, ``PROTO_MEM``) and only the readers of the sockets
       holding the count can give it back.
    2. *Nothing reclaimable*: no clean page on the LRU that a reclaimer can run to
       (:func:`reclaim_outlook`; a clean page is a way out only while something can
       reach it). Not asked of a state held at TCP's limit: reclaim frees pages, not
       TCP's count.
    3. *No writeback completed*: the episode ends at the first completion.
    4. *The storage flow starved*: its frames were dropped (received or sent) for lack
       of memory while stuck, or a data segment of it has waited for transmit memory
       the whole stuck time; judged once the horizon is reached, over the whole stuck
       time (the target retransmits with a doubling RTO, so drops come ever more rarely).

    5. *The OOM killer cannot end it* (:func:`oom_outlook`), judged with 4: no process
       may call ``out_of_memory()`` (each waits for writeback), or killing every one
       would not free what the storage flow needs.

    ``broken`` checks 1-3 on one reading; ``starved`` is 4.
    """

    @staticmethod
    def broken(r: Reading, progress_at: float) -> Optional[tuple[str, str]]:
        """The first of criteria 1-3 that ``r`` breaks: (name, detail), or None."""
        if r.last_progress > progress_at:
            return "no writeback completed", "a writeback completed"
        if r.tcp_refused:
            return None                 # held at TCP's limit: free memory does not matter
        if not r.rx_blocked and not r.tx_blocked:
            waits = "" if r.tx_since is None else (
                f"; a transmit of {r.tx_need} stays at or above the storage transmit mark "
                f"of {r.tx_mark}")
            tcp = "" if r.tcp is None else f"; {r.tcp.line()}"
            return ("no memory for the storage flow",
                    f"{r.free} free pages: a receive of {r.rx_need} stays at or above the "
                    f"storage receive mark of {r.rx_mark}{waits}{tcp}")
        if r.reclaim_reachable:
            who = "" if r.reclaim is None else f" ({r.reclaim.line()})"
            return "nothing reclaimable", f"{r.reclaimable} clean pages are reclaimable{who}"
        return None

    @staticmethod
    def starved(flow: Optional[StorageFlow], delta: FlowTally,
                tx_waited_s: float = 0.0) -> Optional[str]:
        """Why criterion 4 does not hold (None when it does); ``tx_waited_s`` is how long
        a storage segment has waited to be sent, when it waited the whole stuck time."""
        if flow is None:
            return "no network storage: writeback waits for no received frame"
        if delta.dropped <= 0 and tx_waited_s <= 0:
            return (f"no {flow.name} frame was dropped for lack of memory while stuck: "
                    f"the stall is not the receive path's ({flow.status() or 'no status'})")
        return None


# -- the wait-for cycle ---------------------------------------------------------------------

# Where a task sleeps (its emulated wchan): function in this package -> the kernel's name.
# With nothing reclaimable (criterion 2) each of them waits for writeback in the end.
WAIT_POINTS = {
    "balance_dirty_pages": "balance_dirty_pages",
    "throttle_direct_reclaim": "throttle_direct_reclaim",
    "congestion_wait": "congestion_wait",
    "_alloc_pages_slowpath": "__alloc_pages_slowpath",
}


def wchan(thread: threading.Thread) -> Optional[str]:
    """The kernel name of the innermost wait point ``thread`` is in, or None (running,
    or waiting on something else). Read from its Python stack, as /proc/PID/wchan is."""
    return next(iter(stack_names(thread, WAIT_POINTS)), None)


def stack_names(thread: threading.Thread, names: dict[str, str]) -> list[str]:
    """The kernel names of the functions of ``names`` on ``thread``'s stack, innermost
    first (as /proc/PID/stack lists them)."""
    frame = sys._current_frames().get(thread.ident or -1)
    out = []
    while frame is not None:
        name = names.get(frame.f_code.co_name)
        if name is not None:
            out.append(name)
        frame = frame.f_back
    return out


# -- the OOM killer -------------------------------------------------------------------------

# Waits that end only when a writeback completes (or memory that only writeback frees comes
# back): the dirty throttle (3.6 loops while over the limits; 2.6.13 also returns once the
# task has started a chunk itself, which needs a free request: get_request_wait, so only
# while the device's queue is full), the wait for a request, 3.6's throttle of direct
# reclaim (until kswapd frees memory). A process in one of them calls no allocator.
WRITEBACK_WAITS = {
    "balance_dirty_pages": "balance_dirty_pages",
    "wait_for_slot": "get_request_wait",
    "throttle_direct_reclaim": "throttle_direct_reclaim",
}
IN_ALLOCATOR = {"_alloc_pages_slowpath": "__alloc_pages_slowpath"}
# What a stuck state lacks: free memory, or room in TCP's count (the OOM killer's need)
MEMORY_UNIT, TCP_UNIT = "memory", "tcp_mem"


def bound_waits(mm: "MemoryManager", queue_full: bool) -> dict[str, str]:
    """The waits of :data:`WRITEBACK_WAITS` that only writeback ends now, by the era's rules.

    ``get_request_wait`` (the model's ``wait_for_slot``; 2.6.13
    ``drivers/block/ll_rw_blk.c``) sleeps only while the queue is full; 2.6.13's
    ``balance_dirty_pages`` (``mm/page-writeback.c``) returns once the task has started
    its chunk, which it can while a request is free; 3.2's IO-less throttle loops while
    over the limits whatever the queue does. ``throttle_direct_reclaim`` (3.6
    ``mm/vmscan.c``) waits for kswapd, which :func:`reclaim_outlook` weighs apart.
    """
    bound = dict(WRITEBACK_WAITS)
    if not queue_full:
        del bound["wait_for_slot"]
        if mm.era.dirty_throttle == "2.6.13":
            del bound["balance_dirty_pages"]
    return bound


# -- criterion 2: who can still reclaim -----------------------------------------------------

@dataclass(frozen=True)
class ReclaimOutlook:
    """Which reclaimers could still run to the clean pages on the LRU (criterion 2).

    A clean page is a way out only while something reclaims it. The model's reclaimers,
    as the kernels have them:

    * kswapd (2.6.13 and 3.6 ``mm/vmscan.c`` ``balance_pgdat`` -> ``shrink_zone``), woken
      by any allocation under the low watermark - every refill of the receive ring at
      min is one. It frees clean pages before it writes dirty ones, but 2.6.13's
      ``may_write_to_queue`` (3.6: ``PF_SWAPWRITE``) lets it ``pageout()`` to a congested
      queue, and then it sleeps in ``get_request_wait`` until a request completes.
    * direct reclaim (2.6.13 ``mm/page_alloc.c`` ``__alloc_pages`` -> ``try_to_free_pages``;
      3.6 ``__alloc_pages_direct_reclaim``): any task that allocates and may sleep - the
      workloads (page-cache pages, ``GFP_KERNEL``) and the flusher (a request buffer,
      ``GFP_NOIO``, which direct-reclaims clean pages too). A task can get there unless it
      sleeps in a wait only writeback ends (:func:`bound_waits`): the dirty throttle, a
      request slot, 2.6.13's ``pageout()`` from direct reclaim to its own queue, or 3.6's
      ``throttle_direct_reclaim`` (which lets a ``__GFP_FS`` caller - the workloads'
      page-cache allocations - go only when kswapd has freed memory; one without it goes
      after ``HZ``, reclaims, and the next check sees it running).
      The flusher allocates only when it starts a request, so only while the queue has a
      free slot.

    The packet handler's allocations are ``GFP_ATOMIC`` and reclaim nothing. ``runnable``
    are the reclaimers that can run; ``waits`` the others with the wait they are in.
    """

    clean: int
    requests: int                           # requests at the device
    queue_depth: int
    runnable: tuple[str, ...]
    waits: tuple[tuple[str, str], ...]

    @property
    def reachable(self) -> bool:
        return self.clean > 0 and bool(self.runnable)

    def line(self) -> str:
        if self.runnable:
            return f"{name_range(self.runnable)} can run to them"
        waits = ", ".join(f"{n} in {w}" for n, w in self.waits) or "no reclaimer"
        return (f"no reclaimer can run to them: {waits}; the request queue "
                f"{self.requests} of {self.queue_depth}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reachable": self.reachable, "text": self.line()}


def reclaim_outlook(mm: "MemoryManager", pc: Any, tasks: Sequence[threading.Thread]) -> ReclaimOutlook:
    """Who can run to the clean pages now (mm lock not held); see :class:`ReclaimOutlook`."""
    with mm.lock:
        clean, requests, depth = pc.nr_reclaimable, pc.nr_inflight, pc.queue_depth
        full = pc.congested()
    bound = bound_waits(mm, full)
    runnable: list[str] = []
    waits: list[tuple[str, str]] = []

    def place(thread: threading.Thread, name: str) -> None:
        wait = next(iter(stack_names(thread, bound)), None)
        if wait is None:
            runnable.append(name)
        else:
            waits.append((name, wait))

    kswapd = mm.kswapd
    if isinstance(kswapd, threading.Thread) and kswapd.is_alive():
        place(kswapd, kswapd.name)
    flusher = mm.flusher
    if isinstance(flusher, threading.Thread) and flusher.is_alive():
        if full:                # it allocates only for a request it starts
            waits.append((flusher.name, "get_request_wait"))
        else:
            runnable.append(flusher.name)
    for t in tasks:
        dying = getattr(t, "oom_dying", None)
        if t.is_alive() and not (dying is not None and dying()):
            place(t, t.name)
    return ReclaimOutlook(clean, requests, depth, tuple(runnable), tuple(waits))


# -- criterion 1 at TCP's limit -------------------------------------------------------------

@dataclass(frozen=True)
class TcpOutlook:
    """The storage flow's next received segment against ``sk_rmem_schedule()`` (criterion 1).

    ``allocated`` is ``tcp_memory_allocated``, ``limits`` ``tcp_mem``; a segment of
    ``truesize`` adds ``need`` pages. ``pfmemalloc``: a buffer it may land in is
    ``pfmemalloc`` (a posted one; or, under the GFP_ATOMIC floor, a refill from the
    reserves on a device whose skbs carry the mark); ``refused``: every socket of the
    storage flow (a new connection's when it has none) would have it dropped.
    """

    allocated: int
    limits: tuple[int, int, int]
    truesize: int
    need: int
    pfmemalloc: bool
    exempt: bool                # the era lets a pfmemalloc skb past the limit
    refused: bool

    @property
    def excess(self) -> int:
        """Pages of TCP's count to give back before the segment fits under ``tcp_mem[2]``."""
        return max(0, self.allocated + self.need - self.limits[2])

    def line(self) -> str:
        verdict = "refused" if self.refused else "charged"
        exempt = " (a pfmemalloc skb is let past)" if self.exempt and self.pfmemalloc else ""
        return (f"TCP holds {self.allocated:,} of tcp_mem[2] {self.limits[2]:,} pages: a "
                f"segment of {self.truesize} bytes would be {verdict}{exempt}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excess": self.excess, "text": self.line()}


def rx_pfmemalloc_locked(mm: "MemoryManager", dev: NetDev) -> bool:
    """May a frame arriving on ``dev`` land in a ``pfmemalloc`` skb (mm lock held)? A posted
    buffer carries the mark; a refill does under the GFP_ATOMIC floor if the device's
    skbs are marked at all (page mode's ``kmalloc_reserve``; fragments only where the
    era's ``build_skb`` looks at the page)."""
    if any(skb.pfmemalloc for skb in dev.ring):
        return True
    marks = not dev.frag_size or dev.frag_pfmemalloc
    return marks and mm.zone.free - rx_need(mm, dev) < mm.zone.mark_atomic


def tcp_outlook_locked(mm: "MemoryManager", dev: NetDev) -> TcpOutlook:
    """The storage flow's next segment on ``dev`` against TCP's limit (mm lock held). The
    storage sockets are the ``SOCK_MEMALLOC`` ones (every policy marks the initiator's);
    between connections, a new socket's (nothing charged yet)."""
    socks = [sk for sk in mm.socks if sk.memalloc and not sk.closed] or [Sock(mm, "new connection")]
    pf = rx_pfmemalloc_locked(mm, dev)
    size = dev.truesize
    refused = all(sk.rmem_refused_locked(size, pf) for sk in socks)
    return TcpOutlook(mm.tcp_memory_allocated, tuple(mm.tcp_mem), size, sk_mem_pages(size), pf,
                      mm.era.rmem_pfmemalloc_exempt, refused)


@dataclass(frozen=True)
class OomOutlook:
    """What the OOM killer can still do for a stuck state (the fifth criterion).

    Only a process allocating with ``__GFP_FS`` calls ``out_of_memory()`` (the workloads'
    page-cache pages; receive and writeback allocate ``GFP_ATOMIC``/``GFP_NOIO``), and a
    kill frees what its victim holds that is not a file page (a downloader's socket
    queue). ``reach`` is what killing every process still alive would free, ``need`` what
    a buffer of the storage flow needs beyond the free pages. In a state held at TCP's
    limit (``unit`` :data:`TCP_UNIT`) both count pages of TCP's count: a kill closes the
    victim's socket (``sk_stream_kill_queues``), and its charge goes back.
    """

    killer: bool                            # the era has an OOM killer
    reach: int
    need: int
    victims: tuple[tuple[str, int], ...]    # alive, not dying: (name, pages a kill frees)
    callers: tuple[str, ...]                # in the allocator now, may call out_of_memory()
    unbound: tuple[str, ...]                # alive, waiting for nothing writeback ends
    waits: tuple[tuple[str, str], ...]      # (process, the writeback-bound wait it is in)
    unit: str = MEMORY_UNIT

    @property
    def _needs(self) -> str:
        if self.unit == TCP_UNIT:
            return f"a segment of the storage flow needs {self.need} pages of TCP's count back"
        return f"a buffer of the storage flow needs {self.need}"

    @property
    def _frees(self) -> str:
        return "would give back" if self.unit == TCP_UNIT else "would free"

    def could_end(self) -> Optional[str]:
        """How the OOM killer could still end the stuck state; None when it cannot."""
        if not self.killer or self.reach < self.need:
            return None
        frees = f"killing {name_range(n for n, p in self.victims if p)} {self._frees} {self.reach} pages"
        if self.callers:
            return (f"{OOM_MAY_END}: {name_range(self.callers)} may call "
                    f"out_of_memory(), and {frees} ({self._needs})")
        if self.unbound:
            return (f"{OOM_MAY_END}: {name_range(self.unbound)} waits for no "
                    f"writeback, its next page-cache allocation may call out_of_memory(), and "
                    f"{frees} ({self._needs})")
        return None

    def line(self) -> str:
        """Why the OOM killer cannot end it, in one line (for a proven lockup)."""
        if not self.killer:
            return "OOM killer: none in this kernel profile"
        if self.reach < self.need:
            held = ", ".join(f"{n} {p}" for n, p in self.victims if p) or "nothing"
            return (f"OOM killer: killing every process {self._frees} {self.reach} pages "
                    f"({held}), {self._needs}")
        waits = ", ".join(f"{n} in {w}" for n, w in self.waits)
        return (f"OOM killer: no process can call out_of_memory(), each waits for writeback "
                f"({waits})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "could_end": self.could_end(), "text": self.line()}


def oom_outlook(mm: "MemoryManager", need: int, queue_full: bool,
                unit: str = MEMORY_UNIT) -> OomOutlook:
    """The OOM killer's position now (mm lock not held). ``need``: pages a storage buffer
    needs beyond the free ones (``unit`` :data:`TCP_UNIT`: pages of TCP's count a storage
    segment needs given back); ``queue_full``: no request can be started (2.6.13's dirty
    throttle then waits for writeback too)."""
    oom = mm.oom
    if oom is None:
        return OomOutlook(False, 0, need, (), (), (), (), unit)
    bound = bound_waits(mm, queue_full)
    victims, callers, unbound, waits = [], [], [], []
    for v in list(oom.tasks):
        if not v.oom_alive() or v.oom_dying():
            continue
        with mm.lock:
            if unit == TCP_UNIT:            # a kill closes its socket: its charge goes back
                sk = getattr(v, "mm_sock", None)
                victims.append((v.name, sk.charged_pages if sk is not None else 0))
            else:
                victims.append((v.name, v.oom_freeable_pages()))
        thread = v if isinstance(v, threading.Thread) else None
        stack = stack_names(thread, {**bound, **IN_ALLOCATOR}) if thread else []
        wait = next((n for n in stack if n in bound.values()), None)
        task = getattr(v, "task", None)
        if wait is not None:
            waits.append((v.name, wait))
        elif stack and task is not None and task.may_oom:
            callers.append(v.name)
        else:
            unbound.append(v.name)
    reach = sum(p for _, p in victims)
    return OomOutlook(True, reach, need, tuple(victims), tuple(callers), tuple(unbound), tuple(waits),
                      unit)


@dataclass(frozen=True)
class SockHold:
    """A socket receive queue holding memory, and where its reader is."""

    name: str
    pages: int
    reader_wchan: Optional[str]
    charged: int = 0                    # pages it holds in TCP's count
    reader_wait: Optional[str] = None   # its reader's wait that only writeback ends (bound_waits)
    collapsible: int = 0                # pages of that count its queue's collapse gives back


@dataclass(frozen=True)
class StuckState:
    """The emulated state a cycle is looked for in (built by the detector, or by a test)."""

    storage: str              # the storage flow's name; "" when there is none
    free: int
    rx_mark: int
    mark_name: str            # what the mark is: "the GFP_ATOMIC floor", ...
    dirty: int
    writeback: int
    requests: int             # writeback requests at the device
    storage_dropped: int      # storage frames dropped for lack of memory while stuck
    storage_tx_dropped: int = 0   # of which frames it was sending (data, ACKs)
    pdu: int = 0              # request buffers, freed when the responses come
    rx_need: int = 1          # pages one storage receive takes
    tx_waiting_s: float = 0.0     # a storage data segment waiting to be sent for so long
    tx_mark: int = 0          # the mark a storage transmit may go to, and its name
    tx_mark_name: str = ""
    tx_need: int = 1          # pages one storage transmit takes
    reconnecting: bool = False    # no data waits, the session is reinstated: its SYN waits
    syn_unmarked: bool = False    # ... on a socket not yet SOCK_MEMALLOC (handshake_unmarked)
    sockets: tuple[SockHold, ...] = ()
    tasks: tuple[tuple[str, Optional[str]], ...] = ()     # (task, wchan) of the workloads
    clean: int = 0                # clean pages on the LRU that no reclaimer reaches
    clean_reachable: bool = False     # clean pages a reclaimer can run to: memory comes back
    reclaim: Optional[ReclaimOutlook] = None    # why no reclaimer reaches them
    tcp: Optional[TcpOutlook] = None            # the storage flow against TCP's limit
    storage_proto_mem: int = 0    # of the dropped frames, received segments refused PROTO_MEM

    @property
    def rx_starved(self) -> bool:
        """Its received frames were dropped, and a receive buffer is still not to be had."""
        return self.storage_dropped > 0 and self.free - self.rx_need < self.rx_mark

    @property
    def tx_starved(self) -> bool:
        """Its data (or its reinstatement's SYN) waits to be sent, and a transmit buffer is
        still not to be had."""
        return self.tx_waiting_s > 0 and self.free - self.tx_need < self.tx_mark

    @property
    def need(self) -> int:
        """Pages to be freed before the storage flow gets the buffer it starves for (the
        receive's when it starves on both sides)."""
        if self.rx_starved:
            return self.rx_mark + self.rx_need - self.free
        return self.tx_mark + self.tx_need - self.free


@dataclass(frozen=True)
class WaitEdge:
    """``waiter`` cannot go on until ``waits_for`` does; ``counter`` says how much."""

    waiter: str
    waits_for: str
    counter: int
    unit: str
    note: str = ""

    def __str__(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.waiter} -> {self.waits_for}: {self.counter:,} {self.unit}{note}"


@dataclass(frozen=True)
class WaitCycle:
    """A wait-for cycle: each edge's ``waits_for`` is the next one's ``waiter``; the last
    edges lead back to the first waiter."""

    edges: tuple[WaitEdge, ...]
    kind: str = MEMORY_UNIT         # what the storage flow lacks: memory, or TCP's count

    def lines(self) -> list[str]:
        return [str(e) for e in self.edges]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": [asdict(e) for e in self.edges], "text": self.lines(), "kind": self.kind}


@dataclass(frozen=True)
class NoCycle:
    """Why a stuck state holds no wait-for cycle."""

    reason: str


def name_range(names: Iterable[str]) -> str:
    """``downloader1..3`` for downloader1, downloader2, downloader3; else joined by commas."""
    names = sorted(names)
    stems = {n.rstrip("0123456789") for n in names}
    nums = [n[len(n.rstrip("0123456789")):] for n in names]
    if len(names) > 2 and len(stems) == 1 and all(nums):
        ints = sorted(int(x) for x in nums)
        if ints == list(range(ints[0], ints[0] + len(ints))):
            return f"{stems.pop()}{ints[0]}..{ints[-1]}"
    return ", ".join(names)


def find_cycle(s: StuckState) -> Union[WaitCycle, NoCycle]:
    """The cycle that holds the machine, built edge by edge from ``s``, or why there is none.

    Through memory (:data:`MEMORY_UNIT`): writeback -> the storage responses (pages under
    writeback) -> an skb (frames dropped, free memory at the mark) -> the memory held by
    what only writeback can free (dirty and under-writeback pages, request buffers,
    socket queues whose readers wait in a writeback-bound wait point, clean pages no
    reclaimer can run to) -> back to writeback. Through TCP's limit (:data:`TCP_UNIT`,
    when memory closes none): :func:`_tcp_cycle`.
    """
    if not s.storage:
        return NoCycle("no network storage: writeback waits for no received frame")
    if s.writeback <= 0:
        return NoCycle(f"no page is under writeback: writeback is not waiting for "
                       f"{s.storage} responses")
    found = _memory_cycle(s)
    if isinstance(found, NoCycle) and s.tcp is not None and s.tcp.refused:
        return _tcp_cycle(s)
    return found


def _memory_cycle(s: StuckState) -> Union[WaitCycle, NoCycle]:
    if s.clean_reachable:
        return NoCycle(f"reclaim can still free memory: {s.reclaim.line() if s.reclaim else ''}")
    rx_starved, tx_starved = s.rx_starved, s.tx_starved
    if not rx_starved and not tx_starved:
        if s.storage_dropped <= 0 and s.tx_waiting_s <= 0:
            return NoCycle(f"no {s.storage} frame was dropped or held for lack of memory: "
                           f"its exchanges are not held up by memory")
        return NoCycle(f"{s.storage} frames were dropped or held earlier, but memory for "
                       f"them is there now (free {s.free} pages)")
    bound = [h for h in s.sockets if h.reader_wchan is not None]
    held = {"dirty pages": s.dirty, "pages under writeback": s.writeback,
            f"{s.storage} request buffers": s.pdu}
    if bound:
        held[f"the socket queues of {name_range(h.name for h in bound)}"] = sum(h.pages for h in bound)
    if s.clean:
        held["clean pages no reclaimer reaches"] = s.clean
    held = {k: v for k, v in held.items() if v > 0}
    need = s.need
    freed = sum(held.values())
    if freed < need:
        others = [f"{h.name} ({h.pages} pages, reader not waiting for writeback)"
                  for h in s.sockets if h.reader_wchan is None and h.pages]
        what = "a receive" if rx_starved else "a transmit"
        return NoCycle(f"writeback would free at most {freed} pages but {what} needs {need} "
                       f"more: the memory is held elsewhere ({', '.join(others) or 'not by a socket queue'})")
    if rx_starved:
        edges = [
            WaitEdge("writeback", f"{s.storage} responses", s.writeback, "pages under writeback",
                     f"{s.requests} requests at the device"),
            WaitEdge(f"{s.storage} responses", "an skb", s.storage_dropped,
                     f"{s.storage} frames dropped for lack of memory", _where(s))]
    else:
        edges = _tx_edges(s)
    edges += [
        WaitEdge("an skb", "memory held by " + _and(held), freed, "pages",
                 ", ".join(f"{k} {v:,}" for k, v in held.items())),
    ]
    for wc in sorted({h.reader_wchan for h in bound}):
        readers = [h.name for h in bound if h.reader_wchan == wc]
        edges.append(WaitEdge(name_range(readers), "writeback", len(readers), "tasks",
                              f"in {wc}, their socket queues unread"))
    if s.dirty:
        edges.append(WaitEdge("dirty pages", "writeback", s.dirty, "pages",
                              "freed only once written back"))
    if s.clean:
        how = s.reclaim.line() if s.reclaim is not None else "no reclaimer can run to them"
        edges.append(WaitEdge("clean pages no reclaimer reaches", "writeback", s.clean, "pages",
                              how))
    return WaitCycle(tuple(edges))


def _tcp_cycle(s: StuckState) -> Union[WaitCycle, NoCycle]:
    """writeback -> the storage responses -> TCP's count (segments refused at ``tcp_mem[2]``)
    -> the socket queues that hold it -> their readers, waiting for writeback.

    The count goes down when a reader reads (``sk_mem_reclaim``), a socket closes, or a
    socket refused a segment of its own collapses its queue (``tcp_prune_queue``): the
    cycle holds if, were every socket whose reader waits for no writeback read to the end
    and every queue collapsed, the storage flow's segment would still not fit.
    """
    tcp = s.tcp
    assert tcp is not None
    if s.storage_proto_mem <= 0:
        return NoCycle(f"no {s.storage} segment was refused at TCP's limit while stuck: "
                       f"its exchanges are not held up by tcp_mem ({tcp.line()})")
    bound = [h for h in s.sockets if h.reader_wait is not None and h.charged > 0]
    loose = sum(h.charged for h in s.sockets if h.reader_wait is None)
    packed = sum(h.collapsible for h in s.sockets if h.reader_wait is not None)
    if bound and loose < tcp.excess <= loose + packed:
        return NoCycle(f"TCP's count could come back: {tcp.excess} pages must be given back "
                       f"and collapsing the queues of {name_range(h.name for h in bound)} "
                       f"would give back {packed} (tcp_prune_queue, once a segment of "
                       f"theirs is refused)")
    if not bound or loose >= tcp.excess:
        others = [f"{h.name} ({h.charged} pages, reader not waiting for writeback)"
                  for h in s.sockets if h.reader_wait is None and h.charged]
        return NoCycle(f"TCP's count could come back: {tcp.excess} pages must be given back "
                       f"and readers that wait for no writeback hold {loose} "
                       f"({', '.join(others) or 'no socket whose reader waits for writeback'})")
    holders = name_range(h.name for h in bound)
    via = f"{s.storage} reinstatement" if s.reconnecting else f"{s.storage} responses"
    edges = [
        WaitEdge("writeback", via, s.writeback, "pages under writeback",
                 f"{s.requests} requests at the device"),
        WaitEdge(via, "TCP memory", s.storage_proto_mem,
                 f"{s.storage} segments refused at tcp_mem[2] (PROTO_MEM)", tcp.line()),
        WaitEdge("TCP memory", f"the socket queues of {holders}", sum(h.charged for h in bound),
                 "pages charged", ", ".join(f"{h.name} {h.charged:,}" for h in bound)
                 + f"; collapsing them would give back {packed} of the {tcp.excess} needed"),
    ]
    for wait in sorted({h.reader_wait for h in bound if h.reader_wait}):
        readers = [h.name for h in bound if h.reader_wait == wait]
        edges.append(WaitEdge(name_range(readers), "writeback", len(readers), "tasks",
                              f"in {wait}, their socket queues unread"))
    return WaitCycle(tuple(edges), TCP_UNIT)


def _tx_edges(s: StuckState) -> list[WaitEdge]:
    """writeback -> what it waits to send -> an skb: its requests, or, with no connection,
    the session's reinstatement (a new connection's SYN is a transmit too)."""
    short = (f"free {s.free} pages, a transmit needs {s.tx_need} above "
             f"{s.tx_mark_name} of {s.tx_mark}")
    if s.reconnecting:
        via = f"{s.storage} reinstatement"
        return [WaitEdge("writeback", via, s.writeback, "pages under writeback",
                         f"{s.requests} requests at the device, re-issued once it is back"),
                WaitEdge(via, "an skb", s.storage_tx_dropped,
                         "storage frames dropped on transmit (the new connection's SYNs count "
                         "with other traffic: its socket is not SOCK_MEMALLOC until connected)"
                         if s.syn_unmarked else
                         "frames dropped on transmit (its new connections' SYNs)",
                         f"{short}; reconnecting for {round(s.tx_waiting_s)} s")]
    via = f"{s.storage} requests sent"
    return [WaitEdge("writeback", via, s.writeback, "pages under writeback",
                     f"{s.requests} requests at the device"),
            WaitEdge(via, "an skb", round(s.tx_waiting_s),
                     "seconds a data segment has waited to be sent (sk_stream_wait_memory)",
                     short)]


def _where(s: StuckState) -> str:
    """Where free memory stands against the mark a storage receive may go to."""
    received = s.storage_dropped - s.storage_tx_dropped
    split = f"{received} received, {s.storage_tx_dropped} sent; " if s.storage_tx_dropped else ""
    if s.rx_mark == 0:
        return f"{split}free {s.free} pages: the reserves are used up"
    if s.free <= s.rx_mark:
        return f"{split}free {s.free} pages, at {s.mark_name} of {s.rx_mark}"
    return (f"{split}free {s.free} pages, a receive needs {s.rx_need} above {s.mark_name} "
            f"of {s.rx_mark}")


def _and(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def rx_need(mm: "MemoryManager", dev: NetDev) -> int:
    """Pages one receive buffer for ``dev`` may take now (mm lock held): its data pages (a
    page for the fragment cache in frag mode), and a page of ``sk_buff`` heads when the
    ``skbuff_head_cache`` slab has no free head."""
    data = getattr(dev, "skb_pages", 1) or 1
    return data + (0 if mm.skb_head_room else 1)


def tx_need(mm: "MemoryManager") -> int:
    """Pages one full-sized transmit skb takes now (mm lock held): a data page, and a page
    of heads when the slab has no free head."""
    return 1 + (0 if mm.skb_head_room else 1)


def handshake_unmarked(mm: "MemoryManager") -> bool:
    """A new storage connection makes its handshake on a plain socket: the era's driver
    marks the socket only once it is connected (``sk_memalloc_mark``), and no open socket
    is marked now. Its SYNs then take no reserve, and the handler counts their drops with
    other traffic."""
    return mm.era.sk_memalloc_mark == "connected" and \
        not any(sk.memalloc and not sk.closed for sk in mm.socks)


def storage_tx_mark(mm: "MemoryManager", handshake: bool = False) -> int:
    """The lowest free count a storage socket's transmit allocation may leave: zero where
    ``sk_set_memalloc`` gives its ``sk_allocation`` ``__GFP_MEMALLOC`` (3.6), else the
    GFP_ATOMIC floor (2.6.13: no transmit reserve; reclaim's own ``pageout`` credit is
    used up as its frames go). While a reinstatement (``handshake``) has no open memalloc
    socket yet, where the era's driver marks the connected socket (``sk_memalloc_mark``),
    its SYN goes out on a plain socket: the retransmissions are ``GFP_ATOMIC`` clones from
    the retransmit timer (mm lock held)."""
    if handshake and handshake_unmarked(mm):
        return mm.zone.mark_atomic
    return 0 if mm.era.sk_memalloc_tx else mm.zone.mark_atomic


def mark_name(mark: int, mm: "MemoryManager") -> str:
    zone = mm.zone
    if mark == zone.mark_atomic:
        return "the GFP_ATOMIC floor"
    if mark == 0:
        return "zero (ALLOC_NO_WATERMARKS)"
    if mark == zone.wmark_min:
        return "the min watermark"
    return "the storage receive mark"


# -- what is recorded -----------------------------------------------------------------------

@dataclass
class StallEpisode:
    """One stall: when it began (the last completion), when it opened, how and when it
    ended; the stuck clock's start, its breaks, and whether it was a lockup."""

    began_at: float
    opened_at: float
    ended_at: Optional[float] = None
    ended_by: Optional[str] = None
    stuck_since: Optional[float] = None
    breaks: list[dict[str, Any]] = field(default_factory=list)
    not_lockup: Optional[str] = None      # stuck past the horizon, but why it is no lockup
    not_lockup_since: Optional[float] = None   # the stuck clock's start that judgement had
    lockup: bool = False
    min_free: Optional[int] = None

    @property
    def recovered_at(self) -> Optional[float]:
        return self.ended_at

    def to_dict(self, now: Optional[float] = None) -> dict[str, Any]:
        end = self.ended_at if self.ended_at is not None else now
        out = asdict(self)
        out["duration_s"] = None if end is None else round(end - self.began_at, 3)
        return out


@dataclass
class LockupEvidence:
    """The state of the machine when the lockup was proven, and how it was proven."""

    t: float                        # seconds since the machine started
    stalled_for_s: float            # since the last completed writeback
    free: int
    wmark_min: int
    dirty: int
    writeback: int
    reclaimable: int
    reserve: dict[str, int]
    alloc_fail: dict[str, int]
    throttled_dirty: int
    throttled_reclaim: int
    alloc_stalled: int
    counters: dict[str, Any] = field(default_factory=dict)
    recovered_at: Optional[float] = None
    recovered_by: Optional[str] = None
    began_at: float = 0.0
    opened_at: float = 0.0
    stuck_since: float = 0.0
    stuck_for_s: float = 0.0
    storage_rx_mark: int = 0
    storage_rx_need: int = 0
    horizon: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Optional[str]] = field(default_factory=dict)    # workload -> wchan
    cycle: dict[str, Any] = field(default_factory=dict)
    oom: dict[str, Any] = field(default_factory=dict)       # :class:`OomOutlook`
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    tcp: dict[str, Any] = field(default_factory=dict)       # :class:`TcpOutlook`
    reclaim: dict[str, Any] = field(default_factory=dict)   # :class:`ReclaimOutlook`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the detector ---------------------------------------------------------------------------

class LockupDetector(threading.Thread):
    """Watches writeback and memory; records stalls; fires once a lockup is proven and
    has lasted ``patience`` horizons."""

    COUNTERS = ("PFMemallocDrop", "pgscan_direct_throttle", "kswapd_failures", "allocstall",
                "writeback_errors", "nr_written", "drops")

    def __init__(self, mm: "MemoryManager", page_cache: "PageCache", lockup_after_s: float = 5.0,
                 period_s: float = 0.1, started: Optional[float] = None, *,
                 horizon: Optional[RecoveryHorizon] = None, storage: Optional[StorageFlow] = None,
                 tasks: Sequence[threading.Thread] = (), patience: int = 1) -> None:
        super().__init__(name="lockup-detector", daemon=True)
        if patience < 1:
            raise ValueError(f"lockup detector: patience must be >= 1 (got {patience})")
        self.mm = mm
        self.pc = page_cache
        self.lockup_after_s = lockup_after_s
        self.period_s = period_s
        self.started = time.monotonic() if started is None else started
        self.horizon = horizon or RecoveryHorizon.default()
        self.storage = storage
        self.tasks = list(tasks)
        self.patience = patience
        self.episodes: list[StallEpisode] = []
        self.lockups: list[LockupEvidence] = []
        self.fired = threading.Event()
        self.longest_stall_s = 0.0
        self.stalled_for_s = 0.0
        self._pending_since: Optional[float] = None
        self._last_end = 0.0
        self._current: Optional[StallEpisode] = None
        self._holding = False           # the stuck criteria held at the last check
        self._tcp_held = False          # the open episode has been held at TCP's limit
        self._progress_at = 0.0         # last_progress when the open episode began
        self._stuck_t = 0.0             # monotonic start of the stuck clock
        self._stuck_tally = FlowTally()
        self._stuck_written = 0
        self._next_horizon = 1          # the multiple of the horizon checked next
        self._checkpoint = (0, FlowTally())     # nr_written, tally at the last checkpoint

    # -- state for the machine -----------------------------------------------------------

    @property
    def evidence(self) -> Optional[LockupEvidence]:
        """The first lockup proven, if there was one."""
        return self.lockups[0] if self.lockups else None

    @property
    def locked_up(self) -> bool:
        """A proven lockup is going on now."""
        return bool(self.lockups) and self.lockups[-1].recovered_at is None

    @property
    def stuck_for_s(self) -> float:
        ep = self._current
        if ep is None or ep.stuck_since is None:
            return 0.0
        return max(0.0, time.monotonic() - self._stuck_t)

    def stalls(self) -> list[dict[str, Any]]:
        """Every episode so far as a dict (an open one with its duration up to now)."""
        now = self._rel(time.monotonic())
        return [ep.to_dict(now) for ep in self.episodes]

    def run(self) -> None:
        while not self.mm.wait_stopping(self.period_s):
            self.check()

    # -- one check ------------------------------------------------------------------------

    def check(self, now: Optional[float] = None) -> None:
        r = self._read(time.monotonic() if now is None else now)
        self._track_stall(r)
        ep = self._current
        if ep is not None:
            cause = self._end_cause(r)
            if cause is not None:
                self._close(ep, r, cause)
            else:
                self._follow(ep, r)
        elif self._may_open(r):
            self._open(r)

    def _read(self, now: float) -> Reading:
        mm = self.mm
        since = self.storage.tx_wait_since() if self.storage is not None else None
        reconnecting = self.storage.reconnecting_since() if self.storage is not None else None
        tcp = None
        with mm.lock:
            zone, vm = mm.zone, mm.vm
            if self.storage is not None:
                dev = self.storage.dev
                mark, need = mm.policy.storage_rx_mark(dev), rx_need(mm, dev)
                tcp = tcp_outlook_locked(mm, dev)
            else:
                mark, need = zone.wmark_min, 1
            r = Reading(t=now, free=zone.free, wmark_min=zone.wmark_min, rx_mark=mark, rx_need=need,
                        tx_mark=storage_tx_mark(mm, since is None and reconnecting is not None),
                        tx_need=tx_need(mm),
                        tx_wait_since=since, reconnecting_since=reconnecting, dirty=vm.nr_dirty,
                        writeback=vm.nr_writeback, reclaimable=self.pc.nr_reclaimable,
                        last_progress=self.pc.last_progress, nr_written=vm.nr_written, tcp=tcp)
        # who could run to the clean pages, read from the stacks - only when memory is short
        # enough for it to matter (criteria 1 and 2, the episode's opening and end)
        if r.reclaimable and r.pending and (r.free <= r.wmark_min or r.rx_blocked or r.tx_blocked):
            r = replace(r, reclaim=reclaim_outlook(mm, self.pc, self.tasks))
        return r

    def _track_stall(self, r: Reading) -> None:
        if not r.pending:
            self._pending_since = None
            self.stalled_for_s = 0.0
            return
        if self._pending_since is None:
            self._pending_since = r.t
        self.stalled_for_s = r.t - self._stall_start(r)
        self.longest_stall_s = max(self.longest_stall_s, self.stalled_for_s)

    def _may_open(self, r: Reading) -> bool:
        """A stall of ``lockup_after_s`` (counted from the previous episode's end too, so
        that one long stall is not cut into many) with free memory at or under min and no
        clean page a reclaimer can run to, or the storage flow refused at TCP's limit."""
        if not r.pending or not (r.memory_held or r.tcp_refused):
            return False
        since = max(self._stall_start(r), self._last_end)
        return r.t - since >= self.lockup_after_s

    def _stall_start(self, r: Reading) -> float:
        """The last completion, or when writeback became pending, whichever is later."""
        pending = r.t if self._pending_since is None else self._pending_since
        return max(r.last_progress, pending)

    def _open(self, r: Reading) -> None:
        ep = StallEpisode(began_at=self._rel(self._stall_start(r)), opened_at=self._rel(r.t), min_free=r.free)
        self.episodes.append(ep)
        self._current = ep
        self._progress_at = r.last_progress
        self._holding = False
        self._tcp_held = False
        self._follow(ep, r)

    def _end_cause(self, r: Reading) -> Optional[str]:
        if r.last_progress > self._progress_at:
            return "writeback completed"
        if not r.pending:
            return "nothing left to write back"
        if r.tcp_refused:
            self._tcp_held = True
            return None
        tcp = f"; {r.tcp.line()}" if self._tcp_held and r.tcp is not None else ""
        if r.free > r.wmark_min:
            return f"memory freed: {r.free} free pages, above min {r.wmark_min}{tcp}"
        if r.reclaim_reachable:
            who = "" if r.reclaim is None else f" ({r.reclaim.line()})"
            return f"reclaim: {r.reclaimable} clean pages became reclaimable{who}{tcp}"
        return None

    def _close(self, ep: StallEpisode, r: Reading, cause: str) -> None:
        ep.ended_at, ep.ended_by = self._rel(r.t), cause
        if ep.lockup:
            self.lockups[-1].recovered_at, self.lockups[-1].recovered_by = ep.ended_at, cause
        self._current = None
        self._last_end = r.t

    def _follow(self, ep: StallEpisode, r: Reading) -> None:
        """Run the stuck clock; at each multiple of the horizon, judge or checkpoint."""
        ep.min_free = r.free if ep.min_free is None else min(ep.min_free, r.free)
        broken = StuckCriteria.broken(r, self._progress_at)
        if broken is not None:
            if self._holding:           # a break is recorded where the criteria stop holding
                ep.breaks.append({"t": self._rel(r.t), "criterion": broken[0], "detail": broken[1]})
            self._holding = False
            if not ep.lockup:           # a proven lockup keeps its clock: it is the evidence's
                ep.stuck_since = None
            return
        self._holding = True
        if ep.stuck_since is None:
            ep.stuck_since, self._stuck_t = self._rel(r.t), r.t
            self._stuck_tally, self._stuck_written = self._tally(), r.nr_written
            self._checkpoint = (r.nr_written, self._stuck_tally)
            self._next_horizon = 1
        k = self._next_horizon
        if r.t - self._stuck_t < k * self.horizon.seconds:
            return
        self._next_horizon = k + 1
        if ep.lockup:
            self._add_checkpoint(r, k)
        else:
            self._judge(ep, r)

    def _judge(self, ep: StallEpisode, r: Reading) -> None:
        """Stuck for a horizon (or more): criterion 4 and the cycle decide."""
        delta = self._tally() - self._stuck_tally
        since = r.tx_since
        waited = r.t - since if since is not None and since <= self._stuck_t else 0.0
        why = StuckCriteria.starved(self.storage, delta, waited)
        state = self._state(r, delta, waited)
        found: Union[WaitCycle, NoCycle] = NoCycle(why) if why else find_cycle(state)
        if isinstance(found, NoCycle):
            ep.not_lockup, ep.not_lockup_since = found.reason, ep.stuck_since
            return
        if found.kind == TCP_UNIT:
            assert state.tcp is not None
            outlook = oom_outlook(self.mm, state.tcp.excess, self.pc.congested(), TCP_UNIT)
        else:
            outlook = oom_outlook(self.mm, state.need, self.pc.congested())
        why = outlook.could_end()
        if why is not None:             # criterion 5: a recovery the machine still has
            ep.not_lockup, ep.not_lockup_since = why, ep.stuck_since
            return
        ep.lockup, ep.not_lockup, ep.not_lockup_since = True, None, None
        self.lockups.append(self._evidence(ep, r, found, state, delta, outlook))
        self._add_checkpoint(r, 1)

    def _add_checkpoint(self, r: Reading, k: int) -> None:
        written, tally = self._checkpoint
        now_tally = self._tally()
        d = now_tally - tally
        self.lockups[-1].checkpoints.append({
            "t": self._rel(r.t), "horizons": k, "stuck_for_s": round(r.t - self._stuck_t, 3),
            "written_pages_since": r.nr_written - written, "storage_dropped_since": d.dropped,
            "storage_delivered_since": d.delivered, "free": r.free,
            "storage_status": self.storage.status() if self.storage else ""})
        self._checkpoint = (r.nr_written, now_tally)
        if k >= self.patience:
            self.fired.set()

    # -- the state, the evidence ----------------------------------------------------------

    def _tally(self) -> FlowTally:
        return self.storage.tally() if self.storage is not None else FlowTally()

    def _state(self, r: Reading, delta: FlowTally, tx_waited_s: float = 0.0) -> StuckState:
        mm = self.mm
        readers = {id(getattr(t, "mm_sock", None)): t for t in self.tasks}
        with mm.lock:
            socks = [(sk.name, sk.rmem_pages, sk.charged_pages, readers.get(id(sk)),
                      sk.collapse_gain_pages()) for sk in mm.socks
                     if not sk.memalloc and (sk.rmem_pages > 0 or sk.charged_pages > 0)]
            pdu, requests = mm.used[Use.PDU], self.pc.nr_inflight
            name = mark_name(r.rx_mark, mm)
            full = self.pc.congested()
            unmarked = handshake_unmarked(mm)
        bound = bound_waits(mm, full)
        reconnecting = r.tx_wait_since is None and r.reconnecting_since is not None

        def waits(t: Optional[threading.Thread]) -> Optional[str]:
            return next(iter(stack_names(t, bound)), None) if t is not None else None

        holds = tuple(SockHold(n, p, wchan(t) if t is not None else None, c, waits(t), g)
                      for n, p, c, t, g in socks)
        return StuckState(storage=self.storage.name if self.storage else "", free=r.free,
                          rx_mark=r.rx_mark, rx_need=r.rx_need, mark_name=name, dirty=r.dirty, writeback=r.writeback,
                          requests=requests, storage_dropped=delta.dropped,
                          storage_tx_dropped=delta.tx_dropped, pdu=pdu, sockets=holds,
                          tx_waiting_s=tx_waited_s, tx_mark=r.tx_mark, tx_need=r.tx_need,
                          reconnecting=reconnecting, syn_unmarked=reconnecting and unmarked,
                          tx_mark_name=mark_name(r.tx_mark, mm),
                          tasks=tuple((t.name, wchan(t)) for t in self.tasks),
                          clean=0 if r.reclaim is None or r.reclaim_reachable else r.reclaimable,
                          clean_reachable=r.reclaim_reachable, reclaim=r.reclaim, tcp=r.tcp,
                          storage_proto_mem=delta.rx_proto_mem)

    def _evidence(self, ep: StallEpisode, r: Reading, cycle: WaitCycle, state: StuckState,
                  delta: FlowTally, outlook: OomOutlook) -> LockupEvidence:
        snap = self.mm.snapshot()
        storage = {} if self.storage is None else {
            "name": self.storage.name, "dropped_while_stuck": delta.dropped,
            "received_dropped_while_stuck": delta.rx_dropped,
            "sent_dropped_while_stuck": delta.tx_dropped,
            "delivered_while_stuck": delta.delivered,
            "refused_at_tcp_mem_while_stuck": delta.rx_proto_mem, "status": self.storage.status()}
        return LockupEvidence(
            t=self._rel(r.t), stalled_for_s=round(r.t - r.last_progress, 3),
            free=snap["free"], wmark_min=snap["wmark_min"], dirty=snap["dirty"],
            writeback=snap["writeback"], reclaimable=snap["reclaimable"],
            reserve=snap["reserve"], alloc_fail=snap["alloc_fail"],
            throttled_dirty=snap["nr_throttled_dirty"], throttled_reclaim=snap["nr_throttled_reclaim"],
            alloc_stalled=snap["nr_alloc_stalled"],
            counters={k: snap[k] for k in self.COUNTERS if k in snap},
            began_at=ep.began_at, opened_at=ep.opened_at, stuck_since=ep.stuck_since or 0.0,
            stuck_for_s=round(r.t - self._stuck_t, 3), storage_rx_mark=r.rx_mark,
            storage_rx_need=r.rx_need,
            horizon={**self.horizon.to_dict(), "patience": self.patience},
            storage=storage, tasks=dict(state.tasks), cycle=cycle.to_dict(),
            oom=outlook.to_dict(), tcp=state.tcp.to_dict() if state.tcp is not None else {},
            reclaim=state.reclaim.to_dict() if state.reclaim is not None else {})

    def _rel(self, t: float) -> float:
        return round(t - self.started, 3)
