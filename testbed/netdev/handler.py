"""The packet handler: the storage client's NIC driver, in user space.

Every frame between the client's wire and its kernel stack passes here, and the
handler does with it what a NIC driver and the protocol code of the emulated kernel
would do, charging every buffer to the emulated memory (:mod:`testbed.mm`).

Receive path, per frame read from the wire's rx ring::

    link     paused / fault hooks / random loss   -> drop FAULT or LINK_LOSS (no skb)
             shorter than an Ethernet header      -> drop MALFORMED (no skb)
    driver   skb = mm.netdev_alloc_skb(dev, len)  -> the ring's next posted buffer; the
                                                     driver refills the ring after it
                                                  -> drop RX_NO_BUFFER (the ring was empty;
                                                     NOMEM: an oversize frame's extra pages)
             fast header parse                    -> drop MALFORMED (skb freed)
             flow = flows.lookup(5-tuple)            class memalloc if sk is SOCK_MEMALLOC
    (delay line: the frame waits here, keeping its skb)
    protocol mm.sk_filter(skb, sk, ethertype)     -> drop NOT_MEMALLOC / PFMEMALLOC / ...
             (a frame with no flow carries its IPv4 protocol, skb.ip_proto: icmp_rcv's)
             TCP data: mm.tcp_rmem_schedule(sk, skb) -> drop PROTO_MEM (past tcp_mem)
             write the frame to the TAP              (the stack gets it: delivered)
    socket   TCP: new payload of a registered flow     -> sk.queue_rcv(skb, new bytes)
             UDP datagram of a registered flow      -> sk.queue_rcv(skb, payload)
             (charged before the write: the reader must not see bytes not yet queued)
             anything else (ACKs, ARP, duplicates)  -> mm.kfree_skb(skb) after the write

Transmit path, per frame the stack sends (read from the TAP)::

    skb = mm.alloc_tx_skb(dev, len, sk of the flow) -> data of a flow: the sender waits
                                                       (TxWait) and the frame goes later
                                                    -> anything else: drop NOMEM
    link effects (as above; delay line keeps the skb), write to the wire, kfree_skb

Frees are batched, decisions are not: the skb of a frame the I/O thread finished
(delivered with no socket keeping it, or sent) goes on its ``consumed`` list, and the
memory manager frees the list under the lock of the next allocation (or of
``kfree_skb_list`` when an end runs dry): one lock round trip per frame instead of two,
and the frees and allocations in the same order as one frame at a time, so every
allocation that would fail one at a time still fails (see ``MemoryManager.kfree_skb_list``).

A data segment whose skb cannot be had is not lost: ``tcp_sendmsg`` allocates it in
the sender's context, and when that fails the sender sleeps in
``sk_stream_wait_memory`` (2.6.13 and 3.6 alike, net/core/stream.c) and sends it once
memory is back. The emulated NIC only sees the frame after the stack built it, so it
holds it, in order, and retries it as memory frees (:class:`TxWait`). ACKs and other
frames the stack allocates with ``GFP_ATOMIC`` (``tcp_send_ack``) are dropped.

An skb stays charged while its bytes sit unread in the socket: the storage client
calls ``sk.consume(n)`` as its reader reads. The NIC's receive ring (``rx_ring``
posted buffers, the era's e1000 default 256) lives in the memory manager: its buffers
are charged from ``attach`` to ``detach``, whether frames come or not. Counting: see :mod:`.counters`; every
frame is received once and delivered or dropped once, per direction.

Threads: ``netdev-io`` serves both ends in bursts (the rx ring needs no system call
per frame; the TAP is non-blocking; ``poll`` with a wake-up pipe when both are idle, so
:meth:`stop` is prompt and bounded), and ``netdev-delay`` finishes delayed frames when a
delay is set. Both touch the memory manager (thread-safe by contract) and their own
counter cells only.

Namespaces: the handler runs inside the storage client's process in the client's
namespace (``netns=None``). Tests and the benchmark run it from the root namespace
with ``netns="tb-...-client"``: attach opens the TAP and the raw socket from inside
that namespace (per-thread ``setns``, see :mod:`.netns`) and the descriptors keep
working from any thread.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from typing import Any, Optional

from . import headers, netns
from testbed.mm import DropReason

from .capture import Capture
from .counters import CLASSES, DELIVERED, MEMALLOC, OTHER, RECEIVED, RX, TX, Counters
from .device import (BUF_LEN, TP_STATUS_COPY, TP_STATUS_CSUMNOTREADY, TP_STATUS_USER,
                     TPACKET2_HDR, VNET_HDR_LEN, Attachment)
from .dissect import summary
from .errors import HandlerConfigError, NetdevError
from .flows import TCP_SYN, FlowRegistry
from .link import DelayLine, Faults, Loss, check_delay_ms, per_direction

log = logging.getLogger(__name__)

IPPROTO_TCP = headers.IPPROTO_TCP
IPPROTO_UDP = headers.IPPROTO_UDP
ETH_P_IP = headers.ETH_P_IP
ipv4_proto = headers.ipv4_proto
POLL_MS = 200               # idle wake-up of the I/O thread (stop is signalled at once anyway)
TX_WAIT_POLL_MS = 20        # a waiting sender retries this often when nothing else wakes it
                            # (congestion_wait's HZ/50)
TX_WAIT_MAX = 256           # data segments held for waiting senders; past it, NOMEM drops
BURST = 64                  # frames taken from one end before serving the other
OFFLOADED = TP_STATUS_CSUMNOTREADY | TP_STATUS_COPY
TP_KERNEL = bytes(4)        # tp_status = TP_STATUS_KERNEL: the slot is the kernel's again
MALFORMED_SAMPLES = 8       # explanations of recent malformed frames kept for the metrics
RUNT = headers.ETH_LEN      # shorter frames are dropped before an skb is allocated


def check_burst(burst: Any, who: str) -> int:
    """A burst size is a whole number of frames >= 1 (shared with the plain forwarder)."""
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise HandlerConfigError(f"{who}: burst={burst!r}: not a number of frames >= 1")
    return burst


class TxWait:
    """Data segments whose senders wait for memory (``sk_stream_wait_memory``), in order.

    Once one waits, every later data segment queues behind it, so a flow's bytes leave
    in the order the stack sent them. ``frames`` counts segments that waited,
    ``overflow`` those dropped because :data:`TX_WAIT_MAX` were waiting, and
    ``longest_s`` the longest wait.
    """

    __slots__ = ("queue", "frames", "overflow", "longest_s")

    def __init__(self) -> None:
        self.queue: deque[tuple] = deque()
        self.frames = 0
        self.overflow = 0
        self.longest_s = 0.0

    def hold(self, item: tuple) -> bool:
        """Queue ``(since, data, flen, sk, cls, key)``; False when the queue is full."""
        if len(self.queue) >= TX_WAIT_MAX:
            self.overflow += 1
            return False
        self.queue.append(item)
        self.frames += 1
        return True

    def oldest(self) -> Optional[float]:
        """When the segment waiting longest began to wait (monotonic), or None."""
        try:
            return self.queue[0][0]
        except IndexError:          # emptied by the I/O thread meanwhile
            return None

    def snapshot(self) -> dict:
        return {"frames": self.frames, "waiting": len(self.queue), "overflow": self.overflow,
                "longest_s": round(self.longest_s, 3)}


class PacketHandler:
    """The client's NIC driver between ``wire`` and ``tap`` (see the module docstring).

    Args:
        mm: the memory manager (``testbed.mm.MemoryManager``).
        wire: the client's link interface (its address and MAC move to ``tap``).
        tap: the TAP device to create for the client's stack.
        delay_ms: one-way delay added in each direction, or ``(rx, tx)``.
        loss_pct: random loss in % in each direction, or ``(rx, tx)``.
        capture_dir: if set, write ``wire.pcapng`` and ``delivered.pcapng`` there.
        run_id: the run's tag (8 hex digits); names the nft table.
        netns: named namespace of the client, or None for the caller's own.
        seed: seed of the loss generator (reproducible runs).
        rx_ring: receive buffers the NIC keeps posted (RxDescriptors); None: the era's.
        burst: frames taken from one end before serving the other (:data:`BURST`).
    """

    def __init__(self, mm: Any, wire: str = "client-eth0", tap: str = "tap0",
                 delay_ms: Any = 0.0, loss_pct: Any = 0.0, capture_dir: Optional[str] = None,
                 run_id: Optional[str] = None, *, netns: Optional[str] = None,
                 seed: Optional[int] = None, rx_ring: Optional[int] = None, burst: int = BURST):
        if mm is None:
            raise HandlerConfigError("PacketHandler: mm (the memory manager) is required")
        if rx_ring is not None and (not isinstance(rx_ring, int) or isinstance(rx_ring, bool)
                                    or rx_ring < 1):
            raise HandlerConfigError(f"PacketHandler: rx_ring={rx_ring!r}: not a number of buffers >= 1")
        self.mm = mm
        self.rx_ring = rx_ring
        self.burst = check_burst(burst, "PacketHandler")
        self.run_id = run_id or os.urandom(4).hex()
        self.netns = netns
        self.delay = tuple(d / 1000.0 for d in per_direction(delay_ms, "delay_ms", check_delay_ms))
        rx_loss, tx_loss = per_direction(loss_pct, "loss_pct", lambda v, n: float(Loss(v, name=n).pct))
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self._loss = (Loss(rx_loss, seed, "loss_pct[rx]"), Loss(tx_loss, seed + 1, "loss_pct[tx]"))
        self.capture_dir = capture_dir
        self._att = Attachment(wire, tap, self.run_id)
        self.wire, self.tap = wire, tap
        self.flows = FlowRegistry()
        self.faults = Faults(lambda key, inbound: key.raw(inbound))
        self.DropReason = DropReason
        self._counters = Counters(list(self.DropReason))
        self._reason_slot = self._counters.reason_slot
        cell = self._counters.cell
        self._rx_delivered = (cell(RX, MEMALLOC, DELIVERED), cell(RX, OTHER, DELIVERED))
        self._tx_delivered = (cell(TX, MEMALLOC, DELIVERED), cell(TX, OTHER, DELIVERED))
        self._tapfd = -1
        self._missed = 0
        self.dev: Any = None
        self._capture: Optional[Capture] = None
        self._line: Optional[DelayLine] = None
        self._threads: list[threading.Thread] = []
        self._wake_r = self._wake_w = -1
        self._stopping = False
        self._paused = False
        self._state = "new"
        self.errors = 0
        self.malformed_samples: deque[str] = deque(maxlen=MALFORMED_SAMPLES)
        self._malformed_logged = 0
        self.tx_wait = TxWait()

    # -- life cycle -------------------------------------------------------------------

    def attach(self) -> None:
        """Put the handler between wire and TAP (see :mod:`.device`); register the NIC."""
        if self._state != "new":
            raise NetdevError(f"attach {self.wire}: handler is {self._state}, not new")
        with netns.enter(self.netns):
            self._att.attach()
        try:
            assert self._att.state is not None
            self.dev = self.mm.register_netdev(self.wire, mtu=self._att.state.mtu,
                                               rx_ring=self.rx_ring)
            if self.capture_dir:
                self._capture = Capture(self.capture_dir, self.wire, self.tap)
        except BaseException:
            self._undo_attach()
            raise
        self._state = "attached"

    def start(self) -> None:
        """Start forwarding: the I/O thread and, with a delay, the delay line."""
        if self._state != "attached":
            raise NetdevError(f"start {self.wire}: handler is {self._state}, not attached")
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._att.tap is not None and self._att.sock is not None
        self._tapfd = self._att.tap.fd
        self._send = self._att.sock.sock.send
        self._stopping = False
        if any(self.delay):
            self._line = DelayLine(f"netdev-delay-{self.wire}")
            self._delay_tally = self._counters.tally()
            self._line.start()
        self._threads.append(threading.Thread(target=self._io_loop, daemon=True,
                                              name=f"netdev-io-{self.wire}"))
        for t in self._threads:
            t.start()
        self._state = "running"

    def pause(self) -> None:
        """Stop forwarding: every frame is dropped (FAULT) until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads (bounded by ``timeout`` each); idempotent.

        Frames still in the delay line are dropped (FAULT) and their skbs freed.
        """
        if self._state != "running":
            return
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout)
        stuck = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        if self._line is not None:
            for fn, args in self._line.stop(timeout):
                self._abandon(fn, args)
            self._line = None
        self._abandon_tx_wait()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._state = "attached"
        if stuck:
            raise NetdevError(f"stop {self.wire}: threads {stuck} did not end in {timeout} s")

    def detach(self) -> None:
        """Give the wire back its address and routes; unregister the NIC. Idempotent."""
        self.stop()
        if self._state != "attached":
            return
        self._undo_attach()
        self._state = "detached"

    def _undo_attach(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        if self.dev is not None:
            self.mm.unregister_netdev(self.dev)
            self.dev = None
        with netns.enter(self.netns):
            self._att.detach()

    def __enter__(self) -> "PacketHandler":
        self.attach()
        try:
            self.start()
        except BaseException:
            self.detach()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            self.detach()

    # -- metrics ----------------------------------------------------------------------

    def counters(self) -> dict:
        """Nested, JSON-serialisable counters (see :mod:`.counters`), plus state."""
        out = self._counters.snapshot()
        dev = self.dev
        out["state"] = "paused" if self._paused and self._state == "running" else self._state
        out["device"] = None if dev is None else {
            "name": dev.name, "mtu": dev.mtu, "rx_reserve": dev.rx_reserve,
            "rx_reserve_used": dev.rx_reserve_used, "reserve_pages": dev.reserve_pages,
            "rx_ring": dev.rx_ring, "rx_ring_posted": len(dev.ring),
            "rx_no_buffer_count": dev.rx_no_buffer_count,
            "alloc_rx_buff_failed": dev.alloc_rx_buff_failed}
        sock = self._att.sock
        if sock is not None:
            self._missed = sock.read_missed()
        out["rx"]["missed"] = self._missed      # never seen: the rx ring was full
        out["flows"] = self.flows.snapshot()
        out["delay_line"] = len(self._line) if self._line is not None else 0
        out["tx_wait"] = self.tx_wait.snapshot()
        out["errors"] = self.errors
        out["malformed_samples"] = list(self.malformed_samples)
        return out

    # -- shared per-frame steps ---------------------------------------------------------

    def _gate(self, direction: int, key: Optional[tuple]) -> Any:
        """Link effects before the NIC: a DropReason, or None to go on."""
        if self._paused:
            return self.DropReason.FAULT
        if self.faults.armed and self.faults.hit(direction, key):
            return self.DropReason.FAULT
        loss = self._loss[direction]
        if loss and loss.lost():
            return self.DropReason.LINK_LOSS
        return None

    def _drop(self, t: list, direction: int, cls: int, reason: Any, flen: int,
              frame: Any = None) -> None:
        i = self._counters.cell(direction, cls, self._reason_slot[reason])
        t[i] += 1
        t[i + 1] += flen
        if self._capture is not None and frame is not None:
            self._capture.received(bytes(frame[VNET_HDR_LEN:]), direction == RX,
                                   f"dropped: {reason.name} ({CLASSES[cls]})")

    def _note_offload(self, direction: int, vflags: int, gso: int) -> None:
        if vflags & 1:
            self._counters.note(direction, "csum_partial")
        if gso:
            self._counters.note(direction, "gso")

    def _malformed(self, frame: bytes) -> None:
        self.malformed_samples.append(headers.explain(frame))
        if self._malformed_logged < MALFORMED_SAMPLES:     # scapy only for the first few
            self._malformed_logged += 1
            log.info("%s: malformed frame dropped: %s", self.wire, summary(frame))

    def _error(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        if self.errors <= 10:
            log.error("%s %s: %s", self.wire, where, exc,
                      exc_info=exc if exc.__traceback__ is not None else None)

    def _abandon(self, fn: Any, args: tuple) -> None:
        """A frame left in the delay line at stop: free its skb, count it dropped."""
        if fn == self._rx_finish:
            t, frame, _, _, skb, _, _, cls = args
            direction = RX
        else:
            t, frame, skb, cls = args
            direction = TX
        self.mm.kfree_skb(skb)
        self._drop(t, direction, cls, self.DropReason.FAULT, len(frame) - VNET_HDR_LEN, frame)

    def _abandon_tx_wait(self) -> None:
        """Segments still waiting for memory at stop: counted dropped (FAULT), no skb held."""
        queue = self.tx_wait.queue
        if not queue:
            return
        t = self._counters.tally()
        while queue:
            _, data, flen, _, cls, _ = queue.popleft()
            self._drop(t, TX, cls, self.DropReason.FAULT, flen, data)

    def _tx_out(self, t: list, data: bytes, skb: Any, cls: int, key: Optional[tuple],
                flen: int, done: Optional[list] = None) -> None:
        """A transmitted frame that has its skb: link effects, the delay line, the wire.

        ``done``: the I/O thread's consumed list (the skb goes there once sent)."""
        if self._paused or self.faults.armed or self._loss[TX]:
            reason = self._gate(TX, key)
            if reason is not None:
                self.mm.kfree_skb(skb)
                self._drop(t, TX, cls, reason, flen, data)
                return
        tx_delay = self.delay[TX]
        if tx_delay:
            self._line.put(time.monotonic() + tx_delay, self._tx_finish,
                           getattr(self, "_delay_tally", None), data, skb, cls)
        else:
            self._tx_finish(t, data, skb, cls, done)

    def _tx_wait_retry(self, t: list, done: list) -> bool:
        """Give waiting senders their skbs while memory allows, in order; True if any went."""
        wait = self.tx_wait
        queue, alloc, DropReason = wait.queue, self.mm.alloc_tx_skb, self.DropReason
        went = False
        while queue:
            since, data, flen, sk, cls, key = queue[0]
            skb = alloc(self.dev, flen, sk, done)
            if skb.__class__ is DropReason:
                break
            queue.popleft()
            wait.longest_s = max(wait.longest_s, time.monotonic() - since)
            self._tx_out(t, data, skb, cls, key, flen, done)
            went = True
        return went

    @staticmethod
    def _tx_data(data: bytes, info: Optional[tuple], flow: Any) -> bool:
        """Is this a TCP segment with payload of a known flow (what tcp_sendmsg builds)?"""
        return (flow is not None and info is not None and info[1] is not None
                and info[1][0] == IPPROTO_TCP and headers.tcp_segment(data, info[2], info[3])[4] > 0)

    def _tx_hold(self, t: list, data: bytes, flen: int, flow: Any, cls: int,
                 key: Optional[tuple]) -> None:
        """The segment's sender waits for memory; NOMEM if too many already wait."""
        if not self.tx_wait.hold((time.monotonic(), data, flen, flow.sk, cls, key)):
            self._drop(t, TX, cls, self.DropReason.NOMEM, flen, data)

    # -- the I/O loop: both ends, one thread ---------------------------------------------

    def _io_loop(self) -> None:
        """Serve both ends from one thread, in bursts of up to ``burst`` frames.

        One thread, not one per end: the per-frame work holds the GIL, and two threads
        handing it to each other after every system call cost more than the work
        (measured: about 0.3x the throughput of this loop). ``done`` is the consumed
        list of the module docstring; whatever is on it when an end runs dry or the
        loop ends is freed then.
        """
        done: list = []
        try:
            self._io_serve(done)
        finally:
            self._free_consumed(done)

    def _free_consumed(self, done: list) -> None:
        """Free the consumed list now (an end ran dry, or the loop ends)."""
        try:
            self.mm.kfree_skb_list(done)
        except Exception as exc:   # a double free is a bug: counted, the NIC goes on
            self._error("free of consumed skbs", exc)

    def _io_serve(self, done: list) -> None:
        """The body of :meth:`_io_loop`."""
        t = self._counters.tally()
        buf = bytearray(BUF_LEN)
        sock, tap = self._att.sock, self._att.tap
        assert sock is not None and tap is not None
        ring, fsize, nslots, slot = sock.view, sock.frame_size, sock.frames, 0
        slot_hdr = TPACKET2_HDR.unpack_from
        tapfd, read = tap.fd, os.read
        poller = select.poll()
        for fd in (sock.sock.fileno(), tapfd, self._wake_r):
            poller.register(fd, select.POLLIN)
        mm, dev, DropReason = self.mm, self.dev, self.DropReason
        rx_alloc, tx_alloc, kfree = mm.netdev_alloc_skb, mm.alloc_tx_skb, mm.kfree_skb
        kfree_list = self._free_consumed
        parse = headers.parse
        lookup_in, lookup_out = self.flows.lookup_inbound, self.flows.lookup_outbound
        faults, rx_loss = self.faults, bool(self._loss[RX])
        rx_finish, tx_out, drop = self._rx_finish, self._tx_out, self._drop
        cell = self._counters.cell
        rx_m, rx_o = cell(RX, MEMALLOC, RECEIVED), cell(RX, OTHER, RECEIVED)
        tx_m, tx_o = cell(TX, MEMALLOC, RECEIVED), cell(TX, OTHER, RECEIVED)
        rx_delay, line = self.delay[RX], self._line
        dtally = getattr(self, "_delay_tally", None)
        monotonic = time.monotonic
        VH = VNET_HDR_LEN
        burst = self.burst
        while not self._stopping:
            busy = False
            # ---- receive: wire -> stack, from the ring
            for _ in range(burst):
                off = slot * fsize
                status, _, snaplen, mac, _ = slot_hdr(ring, off)
                if not status & TP_STATUS_USER:
                    if done:
                        kfree_list(done)
                    break
                busy = True
                if status & TP_STATUS_COPY:     # larger than a slot: read it whole
                    fbuf, start, end = buf, 0, self._recv_copy(buf)
                else:
                    fbuf, start, end = ring, off + mac - VH, off + mac + snaplen
                try:
                    flen = end - start - VH
                    info = parse(fbuf, start + VH, end)
                    key = flow = None
                    if info is not None:
                        key = info[1]
                        if key is not None:
                            flow = lookup_in(key)
                    cls = MEMALLOC if flow is not None and flow.sk.memalloc else OTHER
                    i = rx_m if cls == MEMALLOC else rx_o
                    t[i] += 1
                    t[i + 1] += flen
                    if self._paused or faults.armed or rx_loss:
                        reason = self._gate(RX, key)
                        if reason is not None:
                            drop(t, RX, cls, reason, flen, fbuf[start:end])
                            continue
                    if status & OFFLOADED:       # partial checksum or a GSO frame
                        self._note_offload(RX, fbuf[start], fbuf[start + 1])
                    if flen < RUNT:
                        # No Ethernet header (only a failed oversize read gives one): a
                        # runt, dropped before an skb is allocated for it, as a NIC does.
                        drop(t, RX, cls, DropReason.MALFORMED, flen, fbuf[start:end])
                        self._malformed(bytes(fbuf[start + VH:end]))
                        continue
                    skb = rx_alloc(dev, flen, done)
                    if skb.__class__ is DropReason:
                        drop(t, RX, cls, skb, flen, fbuf[start:end])
                        continue
                    if info is None:
                        kfree(skb)
                        drop(t, RX, cls, DropReason.MALFORMED, flen, fbuf[start:end])
                        self._malformed(bytes(fbuf[start + VH:end]))
                        continue
                    if rx_delay:
                        info = (info[0], info[1], info[2] - start, info[3] - start)
                        line.put(monotonic() + rx_delay, rx_finish, dtally, bytes(fbuf[start:end]),
                                 0, end - start, skb, info, flow, cls)
                    else:
                        rx_finish(t, fbuf, start, end, skb, info, flow, cls, done)
                except Exception as exc:   # a bug must not stop the NIC; it is counted
                    self._error("rx frame", exc)
                finally:
                    ring[off:off + 4] = TP_KERNEL        # hand the slot back
                    slot = slot + 1 if slot + 1 < nslots else 0
            # ---- transmit: stack -> wire (senders waiting for memory first)
            waiting = self.tx_wait.queue
            if waiting and self._tx_wait_retry(t, done):
                busy = True
            for _ in range(burst):
                try:
                    data = read(tapfd, BUF_LEN)
                except BlockingIOError:
                    if done:
                        kfree_list(done)
                    break
                except OSError as exc:
                    self._error("tx read from tap", exc)
                    time.sleep(0.05)
                    break
                busy = True
                try:
                    n = len(data)
                    flen = n - VH
                    info = parse(data, VH, n)
                    key = flow = None
                    if info is not None:
                        key = info[1]
                        if key is not None:
                            flow = lookup_out(key)
                            if flow is not None and key[0] == IPPROTO_TCP:
                                self._tcp_sent(flow, data, info[2], info[3])
                    cls = MEMALLOC if flow is not None and flow.sk.memalloc else OTHER
                    i = tx_m if cls == MEMALLOC else tx_o
                    t[i] += 1
                    t[i + 1] += flen
                    if data[0] or data[1]:
                        self._note_offload(TX, data[0], data[1])
                    if waiting and self._tx_data(data, info, flow):
                        self._tx_hold(t, data, flen, flow, cls, key)    # behind a waiting sender
                        continue
                    skb = tx_alloc(dev, flen, flow.sk if flow is not None else None, done)
                    if skb.__class__ is DropReason:
                        if self._tx_data(data, info, flow):
                            self._tx_hold(t, data, flen, flow, cls, key)
                        else:
                            drop(t, TX, cls, skb, flen, data)
                        continue
                    tx_out(t, data, skb, cls, key, flen, done)
                except Exception as exc:
                    self._error("tx frame", exc)
            if done:
                kfree_list(done)
            if not busy:
                for fd, ev in poller.poll(TX_WAIT_POLL_MS if waiting else POLL_MS):
                    if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        # The wire or the TAP went away (the host is being torn down):
                        # count it once per wait and do not spin on the error.
                        self._error(f"poll fd {fd}", NetdevError(f"poll events {ev:#x}"))
                        time.sleep(0.05)
                        break

    def _recv_copy(self, buf: bytearray) -> int:
        """Read a frame that did not fit a ring slot from the socket queue."""
        sock = self._att.sock
        try:
            return sock.sock.recv_into(buf)
        except OSError as exc:
            self._error("rx recv of an oversize frame", exc)
            return VNET_HDR_LEN     # counted as a malformed (empty) frame

    def _rx_finish(self, t: list, buf: Any, start: int, end: int, skb: Any, info: tuple,
                   flow: Any, cls: int, done: Optional[list] = None) -> None:
        """Protocol step, delivery to the stack, and charging (see the module doc).

        The frame is ``buf[start:end]`` (virtio header first); ``info`` offsets are
        absolute in ``buf``. ``done``: the I/O thread's consumed list, where an skb no
        socket keeps goes (None, from the delay line: freed at once).
        """
        mm = self.mm
        sk = flow.sk if flow is not None else None
        if sk is None and info[0] == ETH_P_IP:      # which IPv4 handler the stack runs:
            key = info[1]                           # a TCP/UDP key has it (no fragment)
            skb.ip_proto = key[0] if key is not None else ipv4_proto(buf, start + VNET_HDR_LEN, end)
        reason = mm.sk_filter(skb, sk, info[0])
        flen = end - start - VNET_HDR_LEN
        if reason is not None:
            mm.kfree_skb(skb)
            self._drop(t, RX, cls, reason, flen, buf[start:end])
            return
        # Charge first, then hand the frame to the stack: in the kernel the skb is in
        # the socket's queue before the reader can read its bytes (and consume them).
        queued = False
        if flow is not None:
            proto, l4, l4_end = info[1][0], info[2], info[3]
            if proto == IPPROTO_TCP:
                seq, ack, flags, _, paylen = headers.tcp_segment(buf, l4, l4_end)
                # tcp_data_queue(): data the socket cannot charge is dropped (tcp_mem)
                if paylen > 0 and (reason := mm.tcp_rmem_schedule(sk, skb)) is not None:
                    mm.kfree_skb(skb)
                    self._drop(t, RX, cls, reason, flen, buf[start:end])
                    return
                new = flow.new_bytes(seq, flags, paylen, ack)
            elif proto == IPPROTO_UDP:
                new = headers.udp_payload_len(buf, l4)
                flow.charged_bytes += max(new, 0)
            else:
                new = 0
            if new > 0:
                sk.queue_rcv(skb, new)
                queued = True
        try:
            os.write(self._tapfd, buf[start:end])
        except OSError as exc:
            if not queued:
                mm.kfree_skb(skb)
            self._error("rx write to tap", exc)
            self._drop(t, RX, cls, self.DropReason.FAULT, flen, buf[start:end])
            return
        i = self._rx_delivered[cls]
        t[i] += 1
        t[i + 1] += flen
        if self._capture is not None:
            self._capture.received(bytes(buf[start + VNET_HDR_LEN:end]), True)
        if not queued:
            if done is None:
                mm.kfree_skb(skb)
            else:
                done.append(skb)

    @staticmethod
    def _tcp_sent(flow: Any, data: bytes, l4: int, l4_end: int) -> None:
        """The client's window and snd_nxt, for the out-of-order check on receive."""
        seq, ack, flags, window, paylen = headers.tcp_segment(data, l4, l4_end)
        wscale = headers.tcp_wscale(data, l4) if flags & TCP_SYN else None
        flow.sent(seq, ack, flags, window, paylen, wscale)

    def _tx_finish(self, t: list, data: bytes, skb: Any, cls: int,
                   done: Optional[list] = None) -> None:
        """Write one frame to the wire and free its skb (onto ``done``, if given)."""
        flen = len(data) - VNET_HDR_LEN
        try:
            self._send(data)
        except BlockingIOError:
            # Socket send buffer full (a shaped link's queue is backed up): wait a
            # little, as a blocking driver queue would, then give up on this frame.
            sock = self._att.sock.sock
            if select.select([], [sock], [], 0.1)[1]:
                try:
                    sock.send(data)
                except OSError:
                    return self._tx_link_drop(t, data, skb, cls, flen)
            else:
                return self._tx_link_drop(t, data, skb, cls, flen)
        except OSError:            # ENOBUFS: the qdisc dropped it
            return self._tx_link_drop(t, data, skb, cls, flen)
        if done is None:
            self.mm.kfree_skb(skb)
        else:
            done.append(skb)
        i = self._tx_delivered[cls]
        t[i] += 1
        t[i + 1] += flen
        if self._capture is not None:
            self._capture.received(data[VNET_HDR_LEN:], False)

    def _tx_link_drop(self, t: list, data: bytes, skb: Any, cls: int, flen: int) -> None:
        self.mm.kfree_skb(skb)
        self._drop(t, TX, cls, self.DropReason.LINK_LOSS, flen, data)
