"""User-space link effects on the client link: delay, loss, fault hooks (real namespaces).

Delay: the round trip through the handler with ``delay_ms=d`` each way must exceed the
round trip with no delay by ``2 d`` within 10 %, for d = 1, 5, 20 ms (medians of pings,
measured back to back). Loss: the rates the counters show, and the ping success rate,
agree with the asked probability within 5 standard deviations.
"""

from __future__ import annotations

import math
import socket
import time

import pytest

from testbed.mm import MemoryManager
from testbed.netdev import FlowKey
from tests.support import pinger as probe

from .conftest import in_ns, settle, wait_for

pytestmark = pytest.mark.root


def _rtt_p50(topo, count: int, interval: float) -> float:
    rtts = probe.ping(topo.ns["client"], topo.ip["peer"], count, interval)
    assert rtts.count(None) <= 1, rtts
    return probe.p50(rtts)


def test_delay_accuracy(topo, handler_factory):
    results = {}
    h = handler_factory(MemoryManager(16384))
    _rtt_p50(topo, 5, 0.005)                                    # ARP, warm caches
    base = _rtt_p50(topo, 40, 0.01)
    h.stop()
    h.detach()
    for d in (1.0, 5.0, 20.0):
        h = handler_factory(MemoryManager(16384), delay_ms=d)
        # A timer thread on a busy 2-core machine can be scheduled late; a measurement
        # taken while another process hogged the CPU is repeated (at most 3 times).
        tries = []
        for _ in range(3):
            added = _rtt_p50(topo, 30 if d < 20 else 20, 0.01) - base
            tries.append(round(added * 1000, 3))
            if abs(added - 2 * d / 1000) <= 0.1 * 2 * d / 1000:
                break
        results[d] = added
        assert abs(added - 2 * d / 1000) <= 0.1 * 2 * d / 1000, (d, base, tries)
        c = settle(h, 0)
        assert c["rx"]["received"]["frames"] == c["rx"]["delivered"]["frames"] + c["rx"]["dropped"]["frames"]
        h.stop()
        h.detach()
    print("added RTT per delay (ms):", {d: round(v * 1000, 3) for d, v in results.items()})


def test_delayed_frames_keep_their_skbs(topo, handler_factory):
    mm = MemoryManager(16384)
    h = handler_factory(mm, delay_ms=(200.0, 0.0))
    probe.ping(topo.ns["client"], topo.ip["peer"], 1, 0.01, timeout=1.0)     # ARP settled
    tx = in_ns(topo.ns["peer"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        for _ in range(20):
            tx.sendto(b"z" * 1000, (topo.ip["client"], 9))
        assert wait_for(lambda: h.counters()["delay_line"] == 20, 1.0)
        assert mm.snapshot()["skb"] >= 20          # held while waiting (each at least a page)
        assert wait_for(lambda: h.counters()["delay_line"] == 0, 2.0)
        c = settle(h, 20)
        assert c["rx"]["in_flight"]["frames"] == 0
    finally:
        tx.close()
    h.stop()                       # frames still waiting at stop are freed and counted
    assert mm.check_invariants() == []


def test_loss_rate(topo, handler_factory):
    p, n = 0.2, 300
    h = handler_factory(MemoryManager(16384), loss_pct=100 * p, seed=11)
    rtts = probe.ping(topo.ns["client"], topo.ip["peer"], n, 0.002, timeout=0.1)
    ok = n - rtts.count(None)
    q = (1 - p) ** 2                                   # request and reply both survive
    assert abs(ok - n * q) < 5 * math.sqrt(n * q * (1 - q)), ok
    c = h.counters()
    for d in ("rx", "tx"):
        got, lost = c[d]["received"]["frames"], c[d]["reasons"]["LINK_LOSS"]["frames"]
        assert abs(lost - got * p) < 5 * math.sqrt(got * p * (1 - p)), (d, got, lost)


def test_drop_next_and_blackhole_and_pause(topo, handler_factory):
    h = handler_factory(MemoryManager(16384))
    rx = in_ns(topo.ns["client"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    tx = in_ns(topo.ns["peer"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind(("0.0.0.0", 7300))
    tx.bind(("0.0.0.0", 7301))
    rx.settimeout(0.3)
    try:
        probe.ping(topo.ns["peer"], topo.ip["client"], 1, 0.01)
        h.faults.drop_next(FlowKey("udp", topo.ip["client"], 7300, topo.ip["peer"], 7301), 3, "rx")
        for i in range(10):
            tx.sendto(bytes([i]), (topo.ip["client"], 7300))
            time.sleep(0.002)
        got = []
        try:
            while True:
                got.append(rx.recv(16)[0])
        except socket.timeout:
            pass
        assert got == list(range(3, 10))
        assert h.counters()["rx"]["reasons"]["FAULT"]["frames"] == 3
        h.faults.blackhole(0.4)
        assert probe.ping(topo.ns["client"], topo.ip["peer"], 2, 0.01, timeout=0.1) == [None, None]
        time.sleep(0.4)
        assert None not in probe.ping(topo.ns["client"], topo.ip["peer"], 2, 0.01)
    finally:
        rx.close()
        tx.close()
