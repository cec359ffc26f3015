"""The flow registry: which frames belong to which (emulated) socket.

The storage client registers each connection it cares about: its iSCSI connections
(when they are bound, before their SYN; they become ``SOCK_MEMALLOC`` when the era's
driver marks them, ``EraProfile.sk_memalloc_mark``) and its downloaders' connections. The handler looks every frame up here, in both directions, to find the
socket the kernel would find (``__inet_lookup`` by 5-tuple): the socket decides the
policy's protocol step (``sk_filter``) and who is charged for a delivered segment.

A :class:`FlowKey` is written from the client's side (local = the client). The
registry stores each flow under the raw byte form of both orientations, the one a
received frame has (remote -> local) and the one a sent frame has (local -> remote),
so each lookup on the hot path is a single dict probe on the tuple that
:func:`testbed.netdev.headers.parse` builds. Writers take a lock; readers do not
need one (a dict probe is atomic under the GIL).

Each registered flow keeps ``rcv_nxt``, learnt from the SYN-ACK (or SYN) it sees, so
that each byte of the stream is charged to the socket once: a retransmitted duplicate
is handed to the stack but charged to no one, because the reader will never read those
bytes twice. A segment beyond a hole is charged when it arrives, as the kernel charges
its out-of-order queue; the flow remembers the ranges it has charged beyond the hole
(``ofo``), so that their retransmissions are not charged again and, once the hole is
filled, ``rcv_nxt`` moves past them. The kernel queues such a segment only when it
lies in the receive window the client advertised and acknowledges nothing the client
has not sent (RFC 5961); the flow learns both from the client's own frames
(:meth:`Flow.sent`), so a blind spoofer's random sequence numbers are charged to no one.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import HandlerConfigError

_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP,
           socket.IPPROTO_TCP: socket.IPPROTO_TCP, socket.IPPROTO_UDP: socket.IPPROTO_UDP}
SEQ_MOD = 1 << 32


@dataclass(frozen=True)
class FlowKey:
    """A transport flow seen from the client: ``(proto, local ip:port, remote ip:port)``.

    ``proto`` is ``"tcp"``/``"udp"`` or the IP protocol number (stored as the number).
    """

    proto: Any
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    def __post_init__(self) -> None:
        proto = _PROTOS.get(self.proto.lower() if isinstance(self.proto, str) else self.proto)
        if proto is None:
            raise HandlerConfigError(f"FlowKey.proto={self.proto!r}: not tcp or udp")
        object.__setattr__(self, "proto", proto)
        for name in ("local_ip", "remote_ip"):
            try:
                ip = ipaddress.ip_address(getattr(self, name))
            except ValueError:
                raise HandlerConfigError(
                    f"FlowKey.{name}={getattr(self, name)!r}: not an IP address") from None
            object.__setattr__(self, name, str(ip))
        if ipaddress.ip_address(self.local_ip).version != ipaddress.ip_address(self.remote_ip).version:
            raise HandlerConfigError(f"FlowKey: {self.local_ip} and {self.remote_ip} mix IPv4 and IPv6")
        for name in ("local_port", "remote_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
                raise HandlerConfigError(f"FlowKey.{name}={port!r}: not a port number")

    @classmethod
    def from_socket(cls, sock: socket.socket) -> "FlowKey":
        """The key of a bound (and, for TCP, connected) socket of this process."""
        proto = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(sock.type)
        if proto is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise HandlerConfigError(f"FlowKey.from_socket: {sock!r} is not a TCP/UDP IP socket")
        try:
            local = sock.getsockname()
            remote = sock.getpeername()
        except OSError as exc:
            raise HandlerConfigError(f"FlowKey.from_socket: socket not connected ({exc.strerror})") from None
        return cls(proto, local[0], local[1], remote[0], remote[1])

    @classmethod
    def from_packet(cls, pkt: Any, inbound: bool = True) -> "FlowKey":
        """The key of a scapy packet (IP or IPv6 over TCP or UDP), seen as received
        (``inbound``: its destination is the client) or as sent."""
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.inet6 import IPv6
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
        if ip is None or l4 is None:
            raise HandlerConfigError(f"FlowKey.from_packet: {pkt.summary()} has no IP/TCP/UDP")
        proto = "tcp" if l4.name == "TCP" else "udp"
        if inbound:
            return cls(proto, ip.dst, l4.dport, ip.src, l4.sport)
        return cls(proto, ip.src, l4.sport, ip.dst, l4.dport)

    def reversed(self) -> "FlowKey":
        return FlowKey(self.proto, self.remote_ip, self.remote_port, self.local_ip, self.local_port)

    def raw(self, inbound: bool) -> tuple:
        """The tuple :func:`headers.parse` builds for a frame of this flow."""
        lip = ipaddress.ip_address(self.local_ip).packed
        rip = ipaddress.ip_address(self.remote_ip).packed
        lport = self.local_port.to_bytes(2, "big")
        rport = self.remote_port.to_bytes(2, "big")
        if inbound:
            return (self.proto, rip + lip, rport + lport)
        return (self.proto, lip + rip, lport + rport)

    def __str__(self) -> str:
        name = "tcp" if self.proto == socket.IPPROTO_TCP else "udp"
        return f"{name} {self.local_ip}:{self.local_port}<->{self.remote_ip}:{self.remote_port}"


OFO_MAX_RANGES = 256        # ranges beyond a hole remembered per flow (bounded, as the
                            # kernel prunes its out-of-order queue)
DEFAULT_WINDOW = 65535      # the receive window assumed before the client's first frame
ACK_SLACK = 1 << 24         # how far behind snd_nxt an acceptable ACK may be (the kernel
                            # uses snd_una - max_window; the flow does not track snd_una)
TCP_FIN, TCP_SYN, TCP_ACK = 0x01, 0x02, 0x10


@dataclass(eq=False)
class Flow:
    """One registered flow: its socket and its receive sequence state."""

    key: FlowKey
    sk: Any
    rcv_nxt: Optional[int] = None      # next in-order sequence number expected
    charged_bytes: int = 0             # each byte of the stream, once
    ofo_bytes: int = 0                 # of which arrived beyond a hole
    uncharged_segments: int = 0        # duplicates: nothing new in them
    # Ranges already charged beyond rcv_nxt: sorted, disjoint (start, end) offsets
    # relative to rcv_nxt, so sequence wrap-around never enters the comparisons.
    ofo: list = field(default_factory=list)
    # Learnt from the client's frames: the right edge of the window it advertised, its
    # window scale, and the next sequence number it will send.
    rcv_wnd_end: Optional[int] = None
    rcv_wscale: int = 0
    snd_nxt: Optional[int] = None

    @property
    def memalloc(self) -> bool:
        """Whether the socket is SOCK_MEMALLOC now (it may be set after registering)."""
        return bool(getattr(self.sk, "memalloc", False))

    def sent(self, seq: int, ack: int, flags: int, window: int, paylen: int,
             wscale: Optional[int] = None) -> None:
        """Note a segment the client sent: its advertised window and its snd_nxt.

        A SYN's window is never scaled; its window-scale option (``wscale``) applies to
        every later window (both ends of the testbed's connections are Linux, which
        always answers the option).
        """
        if flags & TCP_SYN:
            self.rcv_wscale = wscale or 0
        if flags & TCP_ACK:
            shift = 0 if flags & TCP_SYN else self.rcv_wscale
            self.rcv_wnd_end = (ack + (window << shift)) % SEQ_MOD
        end = (seq + paylen + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)) % SEQ_MOD
        if self.snd_nxt is None or 0 < (end - self.snd_nxt) % SEQ_MOD < SEQ_MOD // 2:
            self.snd_nxt = end

    def new_bytes(self, seq: int, flags: int, paylen: int, ack: Optional[int] = None) -> int:
        """Account one delivered TCP segment; its payload bytes not seen before.

        SYN/SYN-ACK set ``rcv_nxt``; without one (registered mid-connection) the
        first segment seen sets it.
        """
        if flags & TCP_SYN:                        # SYN (or SYN-ACK): ISN + 1
            self.rcv_nxt = (seq + 1) % SEQ_MOD
            self.ofo.clear()
            seq = self.rcv_nxt
        if paylen <= 0:
            return 0
        if self.rcv_nxt is None:
            self.rcv_nxt = seq
        ahead = (seq - self.rcv_nxt) % SEQ_MOD     # > 0: starts after rcv_nxt
        if ahead and ahead < SEQ_MOD // 2:         # out of order: a hole before it
            new = self._remember(ahead, ahead + paylen) if self._acceptable(ahead, ack) else 0
            self.ofo_bytes += new
        else:
            behind = (self.rcv_nxt - seq) % SEQ_MOD    # bytes already received
            new = self._advance(paylen - behind) if paylen > behind else 0
        if new <= 0:
            self.uncharged_segments += 1
            return 0
        self.charged_bytes += new
        return new

    def _acceptable(self, ahead: int, ack: Optional[int]) -> bool:
        """Would the kernel queue a segment starting ``ahead`` bytes past rcv_nxt?"""
        if self.rcv_wnd_end is None:
            window = DEFAULT_WINDOW
        else:
            window = (self.rcv_wnd_end - self.rcv_nxt) % SEQ_MOD
            window = window if window < SEQ_MOD // 2 else 0
        if ahead >= window:                        # beyond the window: dropped
            return False
        if ack is None or self.snd_nxt is None:
            return True
        return (self.snd_nxt - ack) % SEQ_MOD <= ACK_SLACK   # not ahead of what was sent

    def _remember(self, start: int, end: int) -> int:
        """Add an out-of-order range; the bytes in it that were not already there."""
        new = end - start
        lo, hi, rest = start, end, []
        for s, e in self.ofo:                      # disjoint ranges: overlaps add up
            new -= max(0, min(e, end) - max(s, start))
            if e < lo or s > hi:                   # neither overlapping nor touching
                rest.append((s, e))
            else:
                lo, hi = min(s, lo), max(e, hi)
        if len(rest) >= OFO_MAX_RANGES:            # full: not charged, nor remembered, so
            return 0                               # its retransmission is charged instead
        rest.append((lo, hi))
        rest.sort()
        self.ofo = rest
        return new

    def _advance(self, n: int) -> int:
        """``n`` bytes arrived in order: move rcv_nxt past them and any range they reach.

        Returns the bytes among the ``n`` not charged before (the new ones).
        """
        new, pos, rest = n, n, []
        for s, e in self.ofo:
            if s <= pos:
                new -= max(0, min(e, n) - s)       # already charged, out of order
                pos = max(pos, e)
            else:
                rest.append((s - pos, e - pos))
        self.ofo = rest
        self.rcv_nxt = (self.rcv_nxt + pos) % SEQ_MOD
        return new


class FlowRegistry:
    """``handler.flows``: register/unregister flows; O(1) lookups from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flows: dict[FlowKey, Flow] = {}
        self._inbound: dict[tuple, Flow] = {}
        self._outbound: dict[tuple, Flow] = {}
        # Bound lookups for the hot path.
        self.lookup_inbound = self._inbound.get
        self.lookup_outbound = self._outbound.get

    def register(self, key: FlowKey, sk: Any) -> Flow:
        """Map ``key`` to the emulated socket ``sk`` (replacing any earlier mapping)."""
        if not isinstance(key, FlowKey):
            raise HandlerConfigError(f"flows.register: key must be a FlowKey, not {type(key).__name__}")
        if sk is None:
            raise HandlerConfigError(f"flows.register({key}): sk is None")
        flow = Flow(key, sk)
        with self._lock:
            self._flows[key] = flow
            self._inbound[key.raw(True)] = flow
            self._outbound[key.raw(False)] = flow
        return flow

    def unregister(self, key: FlowKey) -> Optional[Flow]:
        """Forget ``key``; returns its flow, or None if it was not registered."""
        with self._lock:
            flow = self._flows.pop(key, None)
            if flow is not None:
                self._inbound.pop(key.raw(True), None)
                self._outbound.pop(key.raw(False), None)
        return flow

    def get(self, key: FlowKey) -> Optional[Flow]:
        return self._flows.get(key)

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def snapshot(self) -> list[dict]:
        """The registered flows, JSON-serialisable (for the metrics stream)."""
        with self._lock:
            flows = list(self._flows.values())
        return [{"flow": str(f.key), "memalloc": f.memalloc, "charged_bytes": f.charged_bytes,
                 "ofo_bytes": f.ofo_bytes, "uncharged_segments": f.uncharged_segments}
                for f in flows]
