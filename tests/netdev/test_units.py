"""Unit tests of the pieces that need no namespace: flows, counters, link effects, capture."""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time

import pytest
from scapy.utils import rdpcap

from testbed.mm import DropReason
from testbed.netdev import FlowKey, FlowRegistry, HandlerConfigError
from testbed.netdev.capture import INBOUND, OUTBOUND, Capture
from testbed.netdev.counters import DELIVERED, MEMALLOC, OTHER, RECEIVED, RX, TX, Counters
from testbed.netdev.flows import (DEFAULT_WINDOW, OFO_MAX_RANGES, SEQ_MOD, TCP_ACK, TCP_SYN,
                                   Flow)
from testbed.netdev.link import MAX_SLACK, DelayLine, Faults, Loss


# -- flows --------------------------------------------------------------------------------

def test_flowkey_validation_names_the_field():
    for bad, field in ((("icmp", "1.1.1.1", 1, "2.2.2.2", 2), "proto"),
                       (("tcp", "1.1.1.300", 1, "2.2.2.2", 2), "local_ip"),
                       (("tcp", "1.1.1.1", 70000, "2.2.2.2", 2), "local_port"),
                       (("tcp", "1.1.1.1", 1, "::1", 2), "mix")):
        with pytest.raises(HandlerConfigError, match=field):
            FlowKey(*bad)
    assert FlowKey("TCP", "10.0.0.1", 1, "10.0.0.2", 2).proto == socket.IPPROTO_TCP


def test_flowkey_from_socket():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.socket()
    c.connect(srv.getsockname())
    try:
        key = FlowKey.from_socket(c)
        assert key == FlowKey("tcp", "127.0.0.1", c.getsockname()[1], "127.0.0.1", srv.getsockname()[1])
        with pytest.raises(HandlerConfigError, match="not connected"):
            FlowKey.from_socket(socket.socket())
    finally:
        c.close()
        srv.close()


def test_registry_both_orientations_and_unregister():
    reg = FlowRegistry()
    key = FlowKey("udp", "10.0.0.1", 5000, "10.0.0.2", 4000)
    sk = object()
    flow = reg.register(key, sk)
    assert reg.lookup_inbound(key.raw(True)) is flow and reg.lookup_outbound(key.raw(False)) is flow
    assert reg.lookup_inbound(key.raw(False)) is None
    assert reg.unregister(key) is flow and reg.unregister(key) is None
    assert reg.lookup_inbound(key.raw(True)) is None and len(reg) == 0
    with pytest.raises(HandlerConfigError):
        reg.register(("udp",), sk)


def test_registry_is_thread_safe():
    reg = FlowRegistry()
    keys = [FlowKey("tcp", "10.0.0.1", p, "10.0.0.2", 3260) for p in range(1000, 1400)]

    def churn(ks):
        for _ in range(20):
            for k in ks:
                reg.register(k, k)
            for k in ks:
                reg.unregister(k)
    threads = [threading.Thread(target=churn, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg) == 0 and not reg._inbound and not reg._outbound


def test_rcv_nxt_charges_each_byte_once():
    f = Flow(FlowKey("tcp", "10.0.0.1", 1, "10.0.0.2", 2), sk=None)
    isn = SEQ_MOD - 150                                  # the sequence space wraps on the way
    assert f.new_bytes(isn, 0x12, 0) == 0                # SYN-ACK: rcv_nxt = isn + 1
    s = (isn + 1) % SEQ_MOD
    assert f.new_bytes(s, 0x18, 100) == 100              # in order
    assert f.new_bytes(s, 0x18, 100) == 0                # duplicate
    assert f.new_bytes((s + 50) % SEQ_MOD, 0x18, 100) == 50   # overlaps: only the new half
    assert f.new_bytes((s + 150) % SEQ_MOD, 0x10, 0) == 0     # pure ACK
    assert f.rcv_nxt == (s + 150) % SEQ_MOD and f.charged_bytes == 150
    assert f.uncharged_segments == 1
    g = Flow(f.key, sk=None)                             # registered mid-connection
    assert g.new_bytes(777, 0x18, 10) == 10 and g.rcv_nxt == 787


def test_out_of_order_bytes_are_charged_once_and_the_hole_fill_moves_rcv_nxt():
    """Beyond a hole, bytes are charged on arrival (the kernel's out-of-order queue);
    their retransmissions are not charged again, and filling the hole moves rcv_nxt past
    them."""
    f = Flow(FlowKey("tcp", "10.0.0.1", 1, "10.0.0.2", 2), sk=None)
    s = SEQ_MOD - 1000                                   # wraps inside the ranges
    assert f.new_bytes(s, 0x18, 100) == 100
    assert f.new_bytes(s + 200, 0x18, 100) == 100        # beyond a hole of 100
    assert f.new_bytes((s + 400) % SEQ_MOD, 0x18, 100) == 100  # beyond a second hole
    assert f.new_bytes((s + 250) % SEQ_MOD, 0x18, 100) == 50   # overlaps the first range
    assert f.new_bytes(s + 200, 0x18, 100) == 0          # a retransmission of it
    assert f.ofo_bytes == 250 and f.ofo == [(100, 250), (300, 400)]
    assert f.new_bytes(s + 100, 0x18, 100) == 100        # fills the first hole...
    assert f.rcv_nxt == (s + 350) % SEQ_MOD              # ...and reaches past the range
    assert f.new_bytes((s + 300) % SEQ_MOD, 0x18, 150) == 50   # half old, half new
    assert f.rcv_nxt == (s + 500) % SEQ_MOD and f.ofo == []
    assert f.new_bytes((s + 500) % SEQ_MOD, 0x18, 10) == 10    # in order again
    assert f.charged_bytes == 510 and f.uncharged_segments == 1


def test_out_of_order_outside_the_window_or_with_a_bogus_ack_is_not_charged():
    """The kernel queues an out-of-order segment only inside the receive window the
    client advertised and with an ACK of something the client sent (RFC 5961)."""
    f = Flow(FlowKey("tcp", "10.0.0.1", 1, "10.0.0.2", 2), sk=None)
    f.sent(5000, 0, TCP_SYN, 64240, 0, wscale=7)         # the client's SYN
    assert f.rcv_wscale == 7 and f.snd_nxt == 5001
    assert f.new_bytes(999, TCP_SYN | TCP_ACK, 0) == 0   # SYN-ACK: rcv_nxt = 1000
    f.sent(5001, 1000, TCP_ACK, 501, 0)                  # window 501 << 7 = 64128
    assert f.rcv_wnd_end == 1000 + 64128
    assert f.new_bytes(1000 + 64000, 0x18, 100, ack=5001) == 100   # in the window
    assert f.new_bytes(1000 + 64128, 0x18, 100, ack=5001) == 0     # just past it
    assert f.new_bytes(1000 + 3000, 0x18, 100, ack=9999) == 0      # acks unsent data
    assert f.new_bytes(1000 + 3000, 0x18, 100, ack=4000) == 100    # an old ACK is fine
    assert f.uncharged_segments == 2 and f.ofo_bytes == 200
    g = Flow(f.key, sk=None)                             # nothing sent yet: a default window
    assert g.new_bytes(0, 0x18, 10) == 10
    assert g.new_bytes(DEFAULT_WINDOW + 10, 0x18, 10) == 0
    assert g.new_bytes(DEFAULT_WINDOW, 0x18, 10) == 10


def test_out_of_order_ranges_are_bounded():
    """With the range list full, a new range is neither charged nor remembered, so that
    its retransmission is charged exactly once."""
    f = Flow(FlowKey("tcp", "10.0.0.1", 1, "10.0.0.2", 2), sk=None)
    assert f.new_bytes(0, 0x18, 10) == 10
    for k in range(OFO_MAX_RANGES):
        assert f.new_bytes(20 + 20 * k, 0x18, 10) == 10
    far = 20 + 20 * OFO_MAX_RANGES
    assert f.new_bytes(far, 0x18, 10) == 0 and len(f.ofo) == OFO_MAX_RANGES
    assert f.new_bytes(10, 0x18, 10) == 10               # the first hole: ranges merge
    assert f.new_bytes(far, 0x18, 10) == 10              # now remembered, charged once
    assert f.charged_bytes == 10 * (OFO_MAX_RANGES + 3)


# -- counters -----------------------------------------------------------------------------

def test_counters_add_up_across_tallies():
    c = Counters(list(DropReason))
    a, b = c.tally(), c.tally()
    for t, cls in ((a, MEMALLOC), (b, OTHER)):
        for _ in range(5):
            i = c.cell(RX, cls, RECEIVED)
            t[i] += 1
            t[i + 1] += 100
    i = c.cell(RX, MEMALLOC, DELIVERED)
    a[i] += 3
    a[i + 1] += 300
    j = c.cell(RX, OTHER, c.reason_slot[DropReason.NOMEM])
    b[j] += 5
    b[j + 1] += 500
    snap = c.snapshot()
    rx = snap["rx"]
    assert rx["received"] == {"frames": 10, "bytes": 1000}
    assert rx["delivered"]["frames"] == 3 and rx["dropped"]["frames"] == 5
    assert rx["in_flight"]["frames"] == 2                 # memalloc: 5 in, 3 out
    assert rx["classes"]["other"]["reasons"]["NOMEM"]["frames"] == 5
    assert snap["tx"]["received"]["frames"] == 0
    import json
    json.dumps(snap)


def test_transmit_drops_are_counted_per_class():
    """A client ACK of a download dropped for want of memory is other traffic's loss; a
    storage frame's is the writeback's: the tx counters keep them apart."""
    c = Counters(list(DropReason))
    t = c.tally()
    for cls, sent, reason, lost in ((OTHER, 20, DropReason.NOMEM, 6),
                                    (MEMALLOC, 10, DropReason.LINK_LOSS, 1)):
        i = c.cell(TX, cls, RECEIVED)
        t[i] += sent
        t[i + 1] += 66 * sent
        j = c.cell(TX, cls, c.reason_slot[reason])
        t[j] += lost
        t[j + 1] += 66 * lost
        k = c.cell(TX, cls, DELIVERED)
        t[k] += sent - lost
    tx = c.snapshot()["tx"]
    other, storage = tx["classes"]["other"], tx["classes"]["memalloc"]
    assert other["dropped"] == {"frames": 6, "bytes": 396}
    assert other["reasons"]["NOMEM"]["frames"] == 6 and other["reasons"]["LINK_LOSS"]["frames"] == 0
    assert storage["dropped"]["frames"] == 1 and storage["reasons"]["LINK_LOSS"]["frames"] == 1
    assert tx["dropped"]["frames"] == 7 and tx["in_flight"]["frames"] == 0
    assert c.snapshot()["rx"]["dropped"]["frames"] == 0


# -- link effects -------------------------------------------------------------------------

def test_loss_rate_is_binomial():
    n, p = 20000, 0.1
    loss = Loss(10.0, seed=3)
    lost = sum(loss.lost() for _ in range(n))
    assert abs(lost - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert not Loss(0.0)
    with pytest.raises(HandlerConfigError, match="loss_pct"):
        Loss(120)


def test_delay_line_keeps_order_and_time():
    line = DelayLine("test-delay")
    line.start()
    done: list[tuple[int, float]] = []
    t0 = time.monotonic()
    try:
        for i, ms in enumerate((30, 10, 20, 10)):
            line.put(t0 + ms / 1000, lambda i=i: done.append((i, time.monotonic() - t0)))
        deadline = time.monotonic() + 2
        while len(done) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [i for i, _ in done] == [1, 3, 2, 0]
        for (i, at), ms in zip(sorted(done), (30, 10, 20, 10)):
            # never more than MAX_SLACK early; late only by scheduling (bounded loosely:
            # the accuracy itself is measured end to end in test_link_effects.py)
            assert ms / 1000 - MAX_SLACK <= at < ms / 1000 + 0.02, (i, at)
        line.put(time.monotonic() + 5, lambda: None)
    finally:
        left = line.stop()
    assert len(left) == 1                                 # handed back at stop, not lost


def test_faults_drop_next_and_blackhole():
    key = FlowKey("tcp", "10.0.0.1", 1, "10.0.0.2", 2)
    f = Faults(lambda k, inbound: k.raw(inbound))
    f.drop_next(key, 3)
    rx, tx = key.raw(True), key.raw(False)
    assert f.armed
    assert [f.hit(0, rx), f.hit(1, tx), f.hit(0, rx), f.hit(0, rx)] == [True, True, True, False]
    assert not f.armed
    f.drop_next(key, 1, "tx")
    assert not f.hit(0, rx) and f.hit(1, tx)
    f.blackhole(0.05)
    assert f.hit(0, None) and f.hit(1, None)
    time.sleep(0.06)
    assert not f.hit(0, None) and not f.armed
    with pytest.raises(HandlerConfigError):
        f.drop_next(key, -1)
    with pytest.raises(HandlerConfigError):
        f.blackhole("soon")


# -- capture ------------------------------------------------------------------------------

def test_capture_files_open_in_scapy_and_tcpdump(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    cap = Capture(str(tmp_path), "client-eth0", "tap0")
    f1 = bytes(Ether() / IP(dst="10.0.0.1") / UDP(dport=3260) / b"x")
    f2 = bytes(Ether() / IP(dst="10.0.0.2") / UDP(dport=9) / b"yy")
    cap.received(f1, inbound=True)
    cap.received(f2, inbound=True, drop="dropped: PFMEMALLOC (other)")
    cap.received(f1, inbound=False)
    cap.close()
    wire = rdpcap(str(tmp_path / "wire.pcapng"))
    dlv = rdpcap(str(tmp_path / "delivered.pcapng"))
    assert [bytes(p) for p in wire] == [f1, f2, f1] and [bytes(p) for p in dlv] == [f1, f1]
    assert [p.direction for p in wire] == [INBOUND, INBOUND, OUTBOUND]
    assert wire[1].comments == [b"dropped: PFMEMALLOC (other)"] and not wire[0].comments
    out = subprocess.run(["tcpdump", "-r", str(tmp_path / "wire.pcapng"), "-n"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count("\n") == 3, out.stderr


def test_flowkey_from_scapy_packet():
    from scapy.layers.inet import IP, TCP
    pkt = IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=3260, dport=40000)
    key = FlowKey.from_packet(pkt)
    assert key == FlowKey("tcp", "10.0.0.1", 40000, "10.0.0.2", 3260)
    assert FlowKey.from_packet(pkt, inbound=False) == key.reversed()
    with pytest.raises(HandlerConfigError, match="no IP/TCP/UDP"):
        FlowKey.from_packet(IP() / b"x")


@pytest.mark.parametrize("kw,field", [({"delay_ms": -1}, "delay_ms"), ({"delay_ms": "soon"}, "delay_ms"),
                                      ({"loss_pct": 150}, "loss_pct"), ({"loss_pct": (1, 2, 3)}, "loss_pct"),
                                      ({"wire": "no such name!"}, "wire"), ({"tap": ""}, "tap"),
                                      ({"wire": "x0", "tap": "x0"}, "both")])
def test_bad_parameters_name_the_parameter(kw, field):
    from testbed.mm import MemoryManager
    from testbed.netdev import PacketHandler
    with pytest.raises(HandlerConfigError, match=field):
        PacketHandler(MemoryManager(4096), **kw)
    with pytest.raises(HandlerConfigError, match="mm"):
        PacketHandler(None)
