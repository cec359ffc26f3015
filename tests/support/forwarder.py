"""The plain forwarder: the handler's I/O with nothing else (the benchmark's baseline).

It attaches exactly like :class:`~testbed.netdev.handler.PacketHandler` (same TAP,
same raw socket, same virtio headers, same isolation) and copies frames between the
two ends: no parse, no flow lookup, no memory manager, no counters. Measured side by
side with the handler in one run, the difference is the cost of the emulation itself.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any, Optional

from testbed.netdev import netns
from testbed.netdev.device import (BUF_LEN, TP_STATUS_COPY, TP_STATUS_USER, TPACKET2_HDR, VNET_HDR_LEN,
                     Attachment)
from testbed.netdev.handler import BURST, POLL_MS, TP_KERNEL, check_burst


class PlainForwarder:
    """``with PlainForwarder(wire, tap, netns=...):`` forwards until the block ends."""

    def __init__(self, wire: str = "client-eth0", tap: str = "tap0",
                 run_id: Optional[str] = None, *, netns: Optional[str] = None,
                 burst: int = BURST):
        self.netns = netns
        self.burst = check_burst(burst, "PlainForwarder")
        self._att = Attachment(wire, tap, run_id or os.urandom(4).hex())
        self._stopping = False
        self.errors = 0
        self._threads: list[threading.Thread] = []
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> "PlainForwarder":
        with netns.enter(self.netns):
            self._att.attach()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        t = threading.Thread(target=self._loop, daemon=True, name="plain-forwarder")
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        for t in self._threads:
            t.join(2.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
        with netns.enter(self.netns):
            self._att.detach()

    def _loop(self) -> None:
        """The handler's I/O loop with the handler taken out (see handler._io_loop)."""
        sock, tapfd = self._att.sock, self._att.tap.fd
        ring, fsize, nslots, slot = sock.view, sock.frame_size, sock.frames, 0
        slot_hdr, buf = TPACKET2_HDR.unpack_from, bytearray(BUF_LEN)
        send, read, write = sock.sock.send, os.read, os.write
        poller = select.poll()
        for fd in (sock.sock.fileno(), tapfd, self._wake_r):
            poller.register(fd, select.POLLIN)
        burst = self.burst
        while not self._stopping:
            busy = False
            for _ in range(burst):
                off = slot * fsize
                status, _, snaplen, mac, _ = slot_hdr(ring, off)
                if not status & TP_STATUS_USER:
                    break
                busy = True
                try:
                    if status & TP_STATUS_COPY:
                        n = sock.sock.recv_into(buf)
                        write(tapfd, memoryview(buf)[:n])
                    else:
                        write(tapfd, ring[off + mac - VNET_HDR_LEN:off + mac + snaplen])
                except OSError:
                    self.errors += 1
                ring[off:off + 4] = TP_KERNEL
                slot = slot + 1 if slot + 1 < nslots else 0
            for _ in range(burst):
                try:
                    data = read(tapfd, BUF_LEN)
                except BlockingIOError:
                    break
                busy = True
                try:
                    send(data)
                except OSError:
                    pass    # a full queue drops, as the handler's link would
            if not busy:
                poller.poll(POLL_MS)
