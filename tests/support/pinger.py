"""An ICMP echo probe (like ``ping``) that runs inside a namespace, for RTT figures.

Used by the tests (delay accuracy, no-bypass) and the benchmark (added RTT). It
opens a raw ICMP socket from inside the namespace (:func:`netns.enter`), sends echo
requests with its own identifier and times the replies with ``perf_counter``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Optional

from testbed.netdev import netns

ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ECHO = struct.Struct("!BBHHH")      # type, code, checksum, id, sequence


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(ns: Optional[str], dst: str, count: int = 10, interval: float = 0.05,
         timeout: float = 1.0, size: int = 56) -> list[Optional[float]]:
    """Send ``count`` echo requests from namespace ``ns`` to ``dst``; return each
    round-trip time in seconds, or None for a request not answered within ``timeout``."""
    with netns.enter(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF ^ (id(sock) & 0xFFFF)
    rtts: list[Optional[float]] = []
    try:
        sock.setblocking(False)
        for seq in range(count):
            payload = os.urandom(size)
            hdr = ECHO.pack(ICMP_ECHO, 0, 0, ident, seq)
            pkt = ECHO.pack(ICMP_ECHO, 0, _checksum(hdr + payload), ident, seq) + payload
            sent = time.perf_counter()
            try:
                sock.sendto(pkt, (dst, 0))
            except OSError:        # no route / unreachable: the request is lost
                rtts.append(None)
                time.sleep(interval)
                continue
            rtts.append(_await_reply(sock, ident, seq, sent, timeout))
            left = interval - (time.perf_counter() - sent)
            if left > 0:
                time.sleep(left)
    finally:
        sock.close()
    return rtts


def _await_reply(sock: socket.socket, ident: int, seq: int, sent: float,
                 timeout: float) -> Optional[float]:
    deadline = sent + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        if not select.select([sock], [], [], left)[0]:
            return None
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            continue
        now = time.perf_counter()
        ihl = (data[0] & 15) * 4
        if len(data) < ihl + ECHO.size:
            continue
        typ, _, _, rid, rseq = ECHO.unpack_from(data, ihl)
        if typ == ICMP_ECHOREPLY and rid == ident and rseq == seq:
            return now - sent


def p50(values: list[Optional[float]]) -> Optional[float]:
    """Median of the answered round trips (None if none was answered)."""
    got = sorted(v for v in values if v is not None)
    return got[len(got) // 2] if got else None
