"""Malformed frames for the receive path, and the receive path driven one frame at a time.

:func:`frames` draws real bytes (scapy builds them, then they are broken): TCP and UDP
over IPv4 and IPv6, ICMP, ARP, IPv4 fragments, 0 to 3 VLAN tags (802.1Q and 802.1ad),
lying length fields (IHL, total length, TCP data offset, UDP length), IP and TCP
options, frames cut short anywhere (down to zero bytes), oversize frames up to the
largest the ring hands over, wrong EtherTypes and bytes flipped at random. Some are
addressed to the registered storage flow or to a registered bulk flow, and half are
received with memory below the watermarks, so every protocol-step reason can occur.

:class:`RxPath` is the packet handler's receive path without the wire: a real
:class:`~testbed.netdev.PacketHandler` (not attached) over a real memory manager,
taking each frame through the same steps as its I/O loop in the same order (flow
lookup with :func:`testbed.netdev.headers.parse`, runt check, skb, malformed drop and
its log, then the handler's own ``_rx_finish``: the policy's protocol step, charging
the socket and delivery, to ``/dev/null`` instead of the TAP) and counting it in the
handler's own counters. The wire-level fuzz (``tests/netdev/test_fuzz.py``) sends
frames through the real ring; this one reaches what a wire cannot carry (the kernel
strips VLAN tags, no runt reaches a packet socket) and runs 10,000 frames in seconds.

:meth:`RxPath.check` judges one frame: a crash is any exception; otherwise the
frame must be counted exactly once under one outcome, the parse must not read past
the frame's end, :func:`~testbed.netdev.headers.explain` must agree with it, and an
accepted TCP header must read as a payload length >= 0 and a window scale of 0-14 or
none, whatever its options claim (a data offset past the options, lengths of 0 or 1, a
truncated option, a shift over 14).
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from hypothesis import strategies as st
from scapy.layers.inet import (ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert,
                               IPOption_RR)
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from testbed.mm import DropReason, MemoryManager, Use
from testbed.netdev import FlowKey, PacketHandler, headers
from testbed.netdev.counters import CLASSES, DELIVERED, FIRST_REASON, MEMALLOC, OTHER, RECEIVED, RX
from testbed.netdev.device import MAX_FRAME, VNET_HDR_LEN
from testbed.netdev.handler import RUNT

CLIENT, TARGET, BULK = "10.0.0.1", "10.0.0.2", "10.0.0.3"
CLIENT_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
STORAGE = FlowKey("tcp", CLIENT, 40000, TARGET, 3260)       # SOCK_MEMALLOC
DOWNLOAD = FlowKey("tcp", CLIENT, 41000, BULK, 5001)        # an ordinary socket
GUARD = b"\xee" * 64        # bytes after the frame in the buffer: the parse must not read them

# -- the frames ------------------------------------------------------------------------------


@st.composite
def _l4(draw: Any) -> Any:
    """A transport header (and payload) for a frame to the client."""
    flow = draw(st.sampled_from(["storage", "download", "any"]))
    kind = "tcp" if flow != "any" else draw(st.sampled_from(["tcp", "udp", "icmp", "raw"]))
    payload = Raw(draw(st.binary(max_size=1400)))
    if kind == "tcp":
        sport, dport = {"storage": (3260, 40000), "download": (5001, 41000)}.get(
            flow, (draw(st.integers(0, 65535)), draw(st.integers(0, 65535))))
        opts = draw(st.lists(st.sampled_from([("MSS", 1460), ("WScale", 7), ("WScale", 200),
                                              ("NOP", None), ("SAckOK", b""), ("Timestamp", (1, 2))]),
                             max_size=4))
        tcp = TCP(sport=sport, dport=dport, seq=draw(st.integers(0, 2 ** 32 - 1)),
                  flags=draw(st.sampled_from(["S", "SA", "A", "PA", "FA", "R"])), options=opts)
        if draw(st.booleans()):
            tcp.dataofs = draw(st.integers(0, 15))          # a data offset that may lie
        return tcp / payload
    if kind == "udp":
        udp = UDP(sport=draw(st.integers(0, 65535)), dport=draw(st.integers(0, 65535)))
        if draw(st.booleans()):
            udp.len = draw(st.integers(0, 65535))
        return udp / payload
    if kind == "icmp":
        return ICMP() / payload
    return payload


def _peer(flow_src: Any) -> str:
    return BULK if getattr(flow_src, "sport", None) == 5001 else TARGET


@st.composite
def _ip(draw: Any) -> Any:
    l4 = draw(_l4())
    if draw(st.integers(0, 4)) == 0:
        return IPv6(src="fd00::2", dst="fd00::1") / l4
    ip = IP(src=_peer(l4), dst=CLIENT)
    if draw(st.booleans()):
        ip.options = draw(st.lists(st.sampled_from([IPOption_NOP(), IPOption_Router_Alert(),
                                                    IPOption_RR(routers=["10.9.9.9"])]),
                                   min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:                          # a fragment
        ip.flags = draw(st.sampled_from(["MF", 0]))
        ip.frag = draw(st.integers(0, 8191))
    if draw(st.integers(0, 3)) == 0:
        ip.ihl = draw(st.integers(0, 15))                     # an IHL that may lie
    if draw(st.integers(0, 3)) == 0:
        ip.len = draw(st.integers(0, 65535))                  # a total length that may lie
    return ip / l4


@st.composite
def _frame(draw: Any) -> bytes:
    what = draw(st.sampled_from(["ip", "ip", "ip", "arp", "ethertype"]))
    eth = Ether(dst=CLIENT_MAC, src=PEER_MAC)
    tags = draw(st.integers(0, 3)) if draw(st.integers(0, 3)) == 0 else 0
    for i in range(tags):
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)))
    if what == "ip":
        pkt = eth / draw(_ip())
    elif what == "arp":
        pkt = eth / ARP(psrc=TARGET, pdst=CLIENT)
    else:
        pkt = eth / Raw(draw(st.binary(max_size=200)))
    data = bytearray(bytes(pkt))
    if tags and draw(st.booleans()):
        data[12:14] = b"\x88\xa8"                             # 802.1ad outer tag
    if what == "ethertype":
        at = 12 + 4 * tags
        data[at:at + 2] = draw(st.integers(0, 65535)).to_bytes(2, "big")
    return bytes(data)


@st.composite
def _broken(draw: Any, data: bytes) -> bytes:
    """Cut, flip, extend or empty a frame."""
    for _ in range(draw(st.integers(0, 2))):
        how = draw(st.sampled_from(["cut", "flip", "oversize", "empty", "none"]))
        if how == "cut" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif how == "flip" and data:
            at = draw(st.integers(0, min(len(data) - 1, 80)))  # mostly in the headers
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        elif how == "oversize":
            size = draw(st.integers(1515, MAX_FRAME))
            data = data + bytes(max(0, size - len(data)))
        elif how == "empty":
            data = b""
    return data


@st.composite
def frames(draw: Any) -> tuple[bytes, bool]:
    """(frame, under memory pressure)."""
    return draw(_frame().flatmap(_broken)), draw(st.booleans())


def storage_segment(seq: int, size: int = 512) -> bytes:
    """A well-formed in-order segment of the storage flow, from the target."""
    return bytes(Ether(dst=CLIENT_MAC, src=PEER_MAC) / IP(src=TARGET, dst=CLIENT)
                 / TCP(sport=3260, dport=40000, seq=seq, flags="PA") / Raw(b"s" * size))


# -- the receive path, one frame at a time ------------------------------------------------

@dataclass
class Verdict:
    outcome: str            # "delivered memalloc", "MALFORMED (ipv4)", ... or "crash"
    problem: str = ""       # why the frame breaks a contract ("" if none)


class RxPath:
    """The handler's receive steps, frame by frame (see the module docstring)."""

    def __init__(self, policy: str = "gorman-3.6", pages: int = 16384) -> None:
        self.mm = MemoryManager(pages, policy=policy)
        self.h = PacketHandler(self.mm, wire="fuzz0", tap="fuzz0-tap", run_id="f0220000")
        self.h.dev = self.mm.register_netdev("fuzz0", 1500)
        self.h._tapfd = os.open(os.devnull, os.O_WRONLY)    # the stack's side of the TAP
        self.tally = self.h._counters.tally()
        self.storage = self.mm.sock_create("iscsi")
        self.storage.set_memalloc()
        self.download = self.mm.sock_create("download")
        self.storage_flow = self.h.flows.register(STORAGE, self.storage)
        self.h.flows.register(DOWNLOAD, self.download)
        self.outcomes: Counter[str] = Counter()
        self._held = 0

    def close(self) -> None:
        self.pressure(False)
        self.storage.close()
        self.download.close()
        os.close(self.h._tapfd)
        self.mm.unregister_netdev(self.h.dev)

    def pressure(self, on: bool) -> None:
        """Free memory at the GFP_ATOMIC floor (on: skbs come from the reserve) or not."""
        mm = self.mm
        with mm.lock:
            if self._held:
                mm.give_locked(self._held, Use.KERNEL)
                self._held = 0
            if on:
                self._held = max(0, mm.zone.free - mm.zone.mark_atomic)
                assert mm.take_locked(self._held, 0, Use.KERNEL)

    def receive(self, frame: bytes) -> None:
        """One frame from the wire, through the steps of the handler's I/O loop."""
        h, t, VH = self.h, self.tally, VNET_HDR_LEN
        buf = bytes(VH) + frame + GUARD
        start, end = 0, VH + len(frame)
        flen = end - start - VH
        info = headers.parse(buf, start + VH, end)
        key = flow = None
        if info is not None:
            key = info[1]
            if key is not None:
                flow = h.flows.lookup_inbound(key)
        cls = MEMALLOC if flow is not None and flow.sk.memalloc else OTHER
        i = h._counters.cell(RX, cls, RECEIVED)
        t[i] += 1
        t[i + 1] += flen
        if flen < RUNT:
            h._drop(t, RX, cls, DropReason.MALFORMED, flen, buf[start:end])
            h._malformed(bytes(buf[start + VH:end]))
            return
        skb = self.mm.netdev_alloc_skb(h.dev, flen)
        if skb.__class__ is DropReason:
            h._drop(t, RX, cls, skb, flen, buf[start:end])
            return
        if info is None:
            self.mm.kfree_skb(skb)
            h._drop(t, RX, cls, DropReason.MALFORMED, flen, buf[start:end])
            h._malformed(bytes(buf[start + VH:end]))
            return
        h._rx_finish(t, buf, start, end, skb, info, flow, cls)

    def check(self, frame: bytes, pressure: bool = False) -> Verdict:
        """Receive ``frame`` and judge it (see the module docstring); counted in ``outcomes``."""
        try:
            self.pressure(pressure)
            before = list(self.tally)
            errors = self.h.errors
            self.receive(frame)
            self.storage.consume(1 << 30)      # the readers read everything at once
            self.download.consume(1 << 30)
            verdict = self._judge(frame, before, errors)
        except Exception as exc:   # anything raised is a crash of the receive path
            verdict = Verdict("crash", "".join(traceback.format_exception(exc)))
        self.outcomes[verdict.outcome if not verdict.problem else "contract broken"] += 1
        return verdict

    def _judge(self, frame: bytes, before: list[int], errors: int) -> Verdict:
        counters = self.h._counters
        changed = [(i, self.tally[i] - before[i]) for i in range(0, len(before), 2)
                   if self.tally[i] != before[i]]
        received = [i for i, n in changed if i % (2 * counters.outcomes) == 2 * RECEIVED]
        fates = [(i, n) for i, n in changed if i not in received]
        if self.h.errors != errors:
            return Verdict("error", f"the handler counted an error: {frame.hex()}")
        if len(received) != 1 or len(fates) != 1 or fates[0][1] != 1:
            return Verdict("uncounted", f"counted as {changed}, not once: {frame.hex()}")
        cls, outcome = divmod(fates[0][0] // 2, counters.outcomes)
        name = self._outcome_name(outcome, frame)
        buf = bytes(VNET_HDR_LEN) + frame
        parsed = headers.parse(buf, VNET_HDR_LEN, len(buf))
        if parsed != headers.parse(buf + GUARD, VNET_HDR_LEN, len(buf)):
            return Verdict(name, f"the parse reads past the frame's end: {frame.hex()}")
        if (parsed is None) != bool(headers.explain(frame)):
            return Verdict(name, f"explain() and parse() disagree: {frame.hex()}")
        if parsed is not None and parsed[1] is not None and parsed[1][0] == headers.IPPROTO_TCP:
            # What the handler reads of a TCP header it accepted (the options too, in a
            # SYN the client sends): whatever the options claim, sane values or nothing.
            l4, l4_end = parsed[2], parsed[3]
            paylen = headers.tcp_segment(buf, l4, l4_end)[4]
            wscale = headers.tcp_wscale(buf, l4)
            if paylen < 0 or not (wscale is None or 0 <= wscale <= 14):
                return Verdict(name, f"TCP header read as payload {paylen}, wscale {wscale}: "
                                     f"{frame.hex()}")
        return Verdict(f"{name} {CLASSES[cls % len(CLASSES)]}" if outcome == DELIVERED else name)

    def _outcome_name(self, outcome: int, frame: bytes) -> str:
        if outcome == DELIVERED:
            return "delivered"
        reason = self.h._counters.reasons[outcome - FIRST_REASON]
        if reason == DropReason.MALFORMED:
            return f"MALFORMED ({headers.explain(frame).split(':')[0]})"
        return reason.name

    def storage_still_flows(self) -> Optional[str]:
        """Send an in-order segment of the storage flow, under pressure and not: None if
        each is delivered as memalloc and its payload charged to the storage socket."""
        for pressure in (True, False):
            flow = self.storage_flow
            charged = flow.charged_bytes
            seq = flow.rcv_nxt if flow.rcv_nxt is not None else 1000
            verdict = self.check(storage_segment(seq), pressure)
            if verdict.outcome != "delivered memalloc" or verdict.problem:
                return f"under pressure={pressure}: {verdict}"
            if flow.charged_bytes <= charged:       # (less than 512 if the fuzz charged
                return f"under pressure={pressure}: nothing charged"   # some of it ahead)
        return None

    def leftovers(self) -> list[str]:
        """What the frames left behind: skbs still charged, broken mm invariants.

        The receive ring's posted buffers are standing memory, not leftovers: they are
        freed for the count (``e1000_clean_rx_ring``) and posted again after it."""
        mm = self.mm
        out = list(mm.check_invariants())
        with mm.lock:
            mm.clean_rx_ring_locked(self.h.dev)
            if mm.used[Use.SKB]:
                out.append(f"{mm.used[Use.SKB]} skb pages still charged past the ring")
            mm.alloc_rx_buffers_locked(self.h.dev)
        return out
