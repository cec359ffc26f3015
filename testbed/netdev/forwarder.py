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

from . import netns
from .device import BUF_LEN, Attachment

POLL_MS = 200


class PlainForwarder:
    """``with PlainForwarder(wire, tap, netns=...):`` forwards until the block ends."""

    def __init__(self, wire: str = "client-eth0", tap: str = "tap0",
                 run_id: Optional[str] = None, *, netns: Optional[str] = None):
        self.netns = netns
        self._att = Attachment(wire, tap, run_id or os.urandom(4).hex())
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> "PlainForwarder":
        with netns.enter(self.netns):
            self._att.attach()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for loop in (self._rx, self._tx):
            t = threading.Thread(target=loop, daemon=True)
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

    def _poller(self, fd: int) -> Any:
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.register(self._wake_r, select.POLLIN)
        return p

    def _rx(self) -> None:
        buf = bytearray(BUF_LEN)
        view = memoryview(buf)
        sock, tapfd = self._att.sock.sock, self._att.tap.fd
        recv_into, write, poller = sock.recv_into, os.write, self._poller(sock.fileno())
        while not self._stopping:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                poller.poll(POLL_MS)
                continue
            write(tapfd, view[:n])

    def _tx(self) -> None:
        sock, tapfd = self._att.sock.sock, self._att.tap.fd
        read, send, poller = os.read, sock.send, self._poller(tapfd)
        while not self._stopping:
            try:
                data = read(tapfd, BUF_LEN)
            except BlockingIOError:
                poller.poll(POLL_MS)
                continue
            try:
                send(data)
            except OSError:
                pass    # a full queue drops, as the handler's link would
