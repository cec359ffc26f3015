"""Offloads left on: partial checksums and GSO frames still reach the stack intact.

The backend turns tx checksum, TSO, GSO and GRO off on every host interface; here they
are left on at the peer, so the client's wire receives frames with CHECKSUM_PARTIAL and
super-frames up to 64 KiB. The handler passes each frame's virtio header on to the TAP
(the stack completes or trusts the checksum, as for a NIC's offload), counts such
frames, and reads frames larger than a ring slot from the socket queue.
"""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest

from testbed.mm import MemoryManager, Use
from tests.support.vethnet import VethNet

from .conftest import in_ns, settle, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def offload_topo():
    t = VethNet(["peer"], offloads_off=False)
    try:
        yield t
    finally:
        t.close()


def test_partial_checksum_and_gso_frames(offload_topo):
    from testbed.netdev import PacketHandler
    topo = offload_topo
    mm = MemoryManager(65536)
    payload = bytes(range(256)) * 4096                      # 1 MiB
    srv = in_ns(topo.ns["peer"], lambda: socket.socket())
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 7500))
    srv.listen(1)
    srv.settimeout(5)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(payload)
    with PacketHandler(mm, "client-eth0", "tap0", run_id=topo.run, netns=topo.ns["client"]) as h:
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        c = in_ns(topo.ns["client"], lambda: socket.socket())
        c.settimeout(10)
        try:
            c.connect((topo.ip["peer"], 7500))
            got = bytearray()
            while len(got) < len(payload):
                data = c.recv(65536)
                assert data
                got += data
        finally:
            c.close()
            srv.close()
        t.join(5)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        cnt = settle(h, 0)
        print("offloaded frames:", cnt["rx"]["csum_partial"], "partial,", cnt["rx"]["gso"], "gso")
        assert cnt["rx"]["csum_partial"] > 0 or cnt["rx"]["gso"] > 0, cnt["rx"]
        assert cnt["errors"] == 0 and cnt["rx"]["dropped"]["frames"] == 0
    assert wait_for(lambda: mm.used[Use.SKB] == 0, 2.0)
    assert mm.check_invariants() == []
