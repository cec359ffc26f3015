"""Fixtures of the packet-handler tests: real namespaces, the real memory manager.

- ``topo``: client + peer namespaces joined by a veth (see :mod:`topo`);
- ``handler_factory``: attaches and starts a :class:`PacketHandler` in the client's
  namespace, and always stops and detaches it at teardown;
- :class:`Injector`: a raw socket in a peer's namespace that sends crafted frames onto
  the wire (scapy builds them; the bytes go out as they are);
- :func:`wait_for`: poll a condition with a deadline.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterable

import pytest

from testbed.mm import MemoryManager, Use
from testbed.netdev import PacketHandler, netns

from tests.support.vethnet import VethNet


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def rx_received(h: PacketHandler) -> int:
    return h.counters()["rx"]["received"]["frames"]


def settle(h: PacketHandler, expect_rx: int, timeout: float = 5.0) -> dict:
    """Wait until the handler took ``expect_rx`` frames in and nothing is in flight."""
    def done() -> bool:
        c = h.counters()
        return (c["rx"]["received"]["frames"] >= expect_rx
                and c["rx"]["in_flight"]["frames"] == 0 and c["tx"]["in_flight"]["frames"] == 0)
    assert wait_for(done, timeout), f"handler did not take {expect_rx} frames: {h.counters()['rx']}"
    return h.counters()


def set_free(mm: MemoryManager, target: int) -> None:
    """Leave exactly ``target`` free pages (by charging or returning kernel pages)."""
    with mm.lock:
        delta = mm.zone.free - target
        if delta > 0:
            assert mm.take_locked(delta, 0, Use.KERNEL)
        elif delta < 0:
            mm.give_locked(-delta, Use.KERNEL)


def release(mm: MemoryManager) -> None:
    """Give back every page :func:`set_free` charged."""
    with mm.lock:
        mm.give_locked(mm.used[Use.KERNEL], Use.KERNEL)


class Injector:
    """Crafted frames onto the wire, from a raw socket in ``ns``."""

    def __init__(self, ns: str, ifname: str):
        with netns.enter(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            self.sock.bind((ifname, 0))

    def send(self, frames: Iterable[bytes], gap: float = 0.0) -> int:
        n = 0
        for f in frames:
            self.sock.send(bytes(f))
            n += 1
            if gap:
                time.sleep(gap)
        return n

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def topo():
    t = VethNet(["peer"])
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def handler_factory(topo):
    made: list[PacketHandler] = []

    def make(mm: MemoryManager, **kw: Any) -> PacketHandler:
        h = PacketHandler(mm, wire="client-eth0", tap="tap0", run_id=topo.run,
                          netns=topo.ns["client"], **kw)
        made.append(h)
        h.attach()
        h.start()
        return h

    yield make
    for h in made:
        try:
            h.stop()
        finally:
            h.detach()


@pytest.fixture
def injector(topo):
    inj = Injector(topo.ns["peer"], "peer-eth0")
    yield inj
    inj.close()


def client_mac(topo: VethNet) -> str:
    import json
    return json.loads(topo.exec("client", "ip", "-j", "link", "show", "tap0"))[0]["address"]


def peer_mac(topo: VethNet) -> str:
    import json
    return json.loads(topo.exec("peer", "ip", "-j", "link", "show", "peer-eth0"))[0]["address"]


def in_ns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the calling thread in ``ns`` (sockets made there stay there)."""
    with netns.enter(ns):
        return fn()
