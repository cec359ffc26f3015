"""Charging: what a registered socket keeps, and the transmit path's allocations.

A real TCP connection from the client to a server in the peer's namespace is
registered the way the storage client registers its iSCSI connections: after bind,
before connect, so the handler sees the SYN-ACK and learns ``rcv_nxt``. Every byte
the server sends is then charged to the emulated socket exactly once, stays charged
until the reader consumes it, and nothing leaks.
"""

from __future__ import annotations

import socket
import threading

import pytest

from testbed.mm import MemoryManager, Use
from testbed.netdev import FlowKey

from .conftest import in_ns, release, set_free, settle, wait_for

pytestmark = pytest.mark.root

TOTAL = 2 << 20


def _server(topo, port: int, total: int) -> tuple[socket.socket, threading.Thread]:
    srv = in_ns(topo.ns["peer"], lambda: socket.socket())
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(5)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            chunk = bytes(range(256)) * 64
            left = total
            while left:
                left -= conn.send(chunk[:left])
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize("loss", [0.0, 3.0])
def test_tcp_bytes_charged_once_until_read(topo, handler_factory, loss):
    mm = MemoryManager(65536, policy="gorman-3.6")
    h = handler_factory(mm, loss_pct=(loss, 0.0), seed=7)
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()
    srv, t = _server(topo, 3260, TOTAL)
    c = in_ns(topo.ns["client"], lambda: socket.socket())
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    c.bind((topo.ip["client"], 0))
    key = FlowKey("tcp", topo.ip["client"], c.getsockname()[1], topo.ip["peer"], 3260)
    flow = h.flows.register(key, sk)                       # bound, not yet connected
    c.settimeout(10)
    try:
        c.connect((topo.ip["peer"], 3260))
        got = 0
        peak = 0
        while got < TOTAL:
            data = c.recv(65536)
            assert data, "connection closed early"
            got += len(data)
            peak = max(peak, sk.rmem_bytes)
            sk.consume(len(data))                           # the reader read it
        t.join(5)
    finally:
        c.close()
        srv.close()
    settle(h, 0)
    assert peak > 0
    # Every byte of the stream is charged once, in order or beyond a hole (a loss here,
    # or a frame lost before the handler saw it: a full ring or the wire's backlog).
    rx = h.counters()["rx"]
    assert flow.charged_bytes == TOTAL, (flow, rx)
    if loss > 0:
        assert rx["reasons"]["LINK_LOSS"]["frames"] > 0, rx
        assert flow.ofo_bytes > 0, flow
    cls = h.counters()["rx"]["classes"]["memalloc"]
    assert cls["received"]["bytes"] > TOTAL
    sk.close()
    h.flows.unregister(key)
    h.detach()                                      # the ring's posted buffers go with the NIC
    assert wait_for(lambda: mm.used[Use.SKB] == 0, 2.0), mm.used
    assert mm.check_invariants() == []


def test_transmit_path_under_pressure(topo, handler_factory):
    """In the reserve, only a memalloc socket's frames get a transmit skb."""
    mm = MemoryManager(16384, policy="gorman-3.6")
    h = handler_factory(mm)
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()
    a = in_ns(topo.ns["client"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    b = in_ns(topo.ns["client"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    r = in_ns(topo.ns["peer"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    r.bind(("0.0.0.0", 7400))
    r.settimeout(0.5)
    a.bind((topo.ip["client"], 7401))
    b.bind((topo.ip["client"], 7402))
    h.flows.register(FlowKey("udp", topo.ip["client"], 7401, topo.ip["peer"], 7400), sk)
    try:
        a.sendto(b"arp first", (topo.ip["peer"], 7400))      # plenty: resolves ARP too
        assert r.recv(64) == b"arp first"
        assert wait_for(lambda: h.counters()["tx"]["classes"]["memalloc"]["delivered"]["frames"] == 1)
        set_free(mm, mm.zone.mark_atomic - 1)                # GFP_ATOMIC now fails
        before = h.counters()["tx"]
        for _ in range(5):
            a.sendto(b"memalloc", (topo.ip["peer"], 7400))
            b.sendto(b"other", (topo.ip["peer"], 7400))
        got = []
        try:
            while True:
                got.append(r.recv(64))
        except socket.timeout:
            pass
        assert got == [b"memalloc"] * 5
        tx = h.counters()["tx"]
        assert tx["classes"]["memalloc"]["delivered"]["frames"] - before["classes"]["memalloc"]["delivered"]["frames"] == 5
        assert tx["classes"]["other"]["reasons"]["NOMEM"]["frames"] - before["classes"]["other"]["reasons"]["NOMEM"]["frames"] == 5
    finally:
        for s in (a, b, r):
            s.close()
    release(mm)
    assert mm.check_invariants() == []


def test_a_data_segment_without_memory_waits_for_it(topo, handler_factory):
    """2.6.13's sender sleeps in sk_stream_wait_memory: its segments wait, in order, and
    go when memory is back; an ACK that finds no memory is dropped (tcp_send_ack)."""
    mm = MemoryManager(16384, policy="phillips-2005")      # no transmit reserve in 2005
    h = handler_factory(mm)
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()
    srv = in_ns(topo.ns["peer"], lambda: socket.socket())
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 3261))
    srv.listen(1)
    srv.settimeout(5)
    c = in_ns(topo.ns["client"], lambda: socket.socket())
    c.bind((topo.ip["client"], 0))
    key = FlowKey("tcp", topo.ip["client"], c.getsockname()[1], topo.ip["peer"], 3261)
    h.flows.register(key, sk)
    payload = bytes(range(256)) * 80                        # 20 KiB: several segments
    try:
        c.connect((topo.ip["peer"], 3261))
        conn, _ = srv.accept()
        conn.settimeout(0.5)
        set_free(mm, mm.zone.mark_atomic - 1)               # GFP_ATOMIC fails from here
        before = h.counters()["tx"]["classes"]["memalloc"]["reasons"]["NOMEM"]["frames"]
        c.sendall(payload)
        with pytest.raises(socket.timeout):
            conn.recv(65536)                                # nothing leaves while it waits
        wait = h.counters()["tx_wait"]
        assert wait["waiting"] > 0 and wait["frames"] >= wait["waiting"], wait
        release(mm)                                         # memory is back
        got = b""
        conn.settimeout(5)
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            assert chunk, "connection closed early"
            got += chunk
        assert got == payload                               # every byte, in order
        after = h.counters()
        assert after["tx_wait"]["waiting"] == 0
        assert after["tx_wait"]["longest_s"] >= 0.4, after["tx_wait"]
        assert after["tx"]["classes"]["memalloc"]["reasons"]["NOMEM"]["frames"] == before
        conn.close()
    finally:
        c.close()
        srv.close()
    h.flows.unregister(key)
    sk.close()
    assert mm.check_invariants() == []
