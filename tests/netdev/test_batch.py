"""Bursts: the I/O thread's batch size is a parameter, and a burst changes no frame's fate.

The handler frees the skbs of a burst's finished frames with its next allocation (the
consumed list, see ``MemoryManager.kfree_skb_list``); one frame that cannot get an skb
in the middle of a burst must still be the one dropped, with its reason, in order.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from testbed.mm import MemoryManager
from testbed.netdev import HandlerConfigError, PacketHandler
from testbed.netdev.capture import INBOUND
from tests.support.forwarder import PlainForwarder

from .conftest import client_mac, peer_mac, release, set_free, settle


@pytest.mark.parametrize("burst", [0, -1, 2.5, "8", True, None])
def test_a_burst_is_a_number_of_frames(burst):
    mm = MemoryManager(4096, policy="none")
    with pytest.raises(HandlerConfigError, match="burst"):
        PacketHandler(mm, burst=burst)
    with pytest.raises(HandlerConfigError, match="burst"):
        PlainForwarder(burst=burst)


@pytest.mark.root
def test_the_frame_that_finds_the_ring_dry_mid_burst_is_the_one_dropped(
        topo, handler_factory, injector, tmp_path):
    """Ring of 3, no memory to refill it: in a burst of 6 frames, the 4th to 6th are
    dropped RX_NO_BUFFER and the first three delivered, whatever the burst size."""
    mm = MemoryManager(16384, policy="none")
    h = handler_factory(mm, rx_ring=3, burst=8, capture_dir=str(tmp_path))
    cip, pip = topo.ip["client"], topo.ip["peer"]
    eth = Ether(src=peer_mac(topo), dst=client_mac(topo))
    sent = [bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4000 + i, dport=9) / Raw(bytes([i]) * 64))
            for i in range(6)]
    set_free(mm, 0)
    injector.send(sent)
    c = settle(h, 6)
    rx = c["rx"]
    assert rx["delivered"]["frames"] == 3 and rx["reasons"]["RX_NO_BUFFER"]["frames"] == 3
    assert c["errors"] == 0
    assert c["device"]["rx_ring_posted"] == 0          # the freed skbs did not refill it
    release(mm)
    h.stop()
    h.detach()                                      # closes the capture files
    inbound = [p for p in rdpcap(str(tmp_path / "wire.pcapng")) if p.direction == INBOUND]
    got = {bytes(p): p.comments or [] for p in inbound}
    assert [got[f] for f in sent] == [[]] * 3 + [[b"dropped: RX_NO_BUFFER (other)"]] * 3
    assert mm.check_invariants() == []
