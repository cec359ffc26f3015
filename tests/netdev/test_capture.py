"""Capture through a running handler: both files open in scapy, drops are marked,
and storage traffic dissects as iSCSI once the project's layers are bound."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from testbed.mm import MemoryManager
from testbed.netdev import FlowKey
from testbed.netdev.capture import INBOUND
from testbed.netdev.dissect import bind_iscsi_layers, summary

from .conftest import client_mac, peer_mac, release, set_free, settle

pytestmark = pytest.mark.root


def test_capture_marks_drops_and_dissects_iscsi(topo, handler_factory, injector, tmp_path):
    mm = MemoryManager(16384, policy="phillips-2005")    # its drop rule takes the bulk frame
    h = handler_factory(mm, capture_dir=str(tmp_path))
    sk, other = mm.sock_create("iscsi"), mm.sock_create("download")
    sk.set_memalloc()
    cip, pip = topo.ip["client"], topo.ip["peer"]
    h.flows.register(FlowKey("tcp", cip, 40000, pip, 3260), sk)
    h.flows.register(FlowKey("udp", cip, 5001, pip, 4001), other)
    eth = Ether(src=peer_mac(topo), dst=client_mac(topo))
    iscsi = bytes(eth / IP(src=pip, dst=cip) / TCP(sport=3260, dport=40000, flags="S"))
    bulk = bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4001, dport=5001) / Raw(b"b" * 200))
    short = bytes(Ether(src=peer_mac(topo), dst=client_mac(topo), type=0x0800)) + b"\x45"
    set_free(mm, mm.zone.mark_atomic - 1)          # in the reserve: the bulk frame is dropped
    injector.send([iscsi, bulk, short])     # ...and a malformed one
    settle(h, 3)
    release(mm)
    h.stop()
    h.detach()                                     # closes the files
    wire = rdpcap(str(tmp_path / "wire.pcapng"))
    delivered = rdpcap(str(tmp_path / "delivered.pcapng"))
    inbound = [p for p in wire if p.direction == INBOUND]
    assert [bytes(p) for p in inbound[:3]] == [iscsi, bulk, short]
    assert not inbound[0].comments
    assert inbound[1].comments == [b"dropped: NOT_MEMALLOC (other)"]
    assert inbound[2].comments == [b"dropped: MALFORMED (other)"]
    assert iscsi in [bytes(p) for p in delivered] and bulk not in [bytes(p) for p in delivered]
    assert "ipv4: header truncated" in h.counters()["malformed_samples"][0]
    # The project's iSCSI layers make storage traffic readable.
    assert bind_iscsi_layers()
    pdu = bytes(eth / IP(src=pip, dst=cip) / TCP(sport=3260, dport=40000, flags="PA") / Raw(bytes(48)))
    assert "iSCSI" in summary(pdu)
