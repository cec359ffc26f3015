"""No bypass: nothing reaches the client's stack without the handler, in either direction.

Real namespaces, real kernel sockets. Paused, the handler forwards nothing: ping and
TCP fail both ways although the wire is up. Running, every frame is counted exactly
once (wire = delivered + dropped, per direction) and each datagram reaches the
client's socket exactly once (never twice through the weak host model).
"""

from __future__ import annotations

import json
import socket

import pytest

from testbed.mm import MemoryManager
from tests.support import pinger as probe

from .conftest import in_ns, settle

pytestmark = pytest.mark.root


def _tcp_connects(ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    s = in_ns(ns, lambda: socket.socket())
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _listener(ns: str, port: int) -> socket.socket:
    s = in_ns(ns, lambda: socket.socket())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    return s


def test_attach_moves_identity_and_isolates_the_wire(topo, handler_factory):
    before = json.loads(topo.exec("client", "ip", "-j", "addr", "show", "client-eth0"))[0]
    topo.exec("client", "ip", "route", "add", "192.0.2.0/24", "via", topo.ip["peer"], "metric", "7")
    h = handler_factory(MemoryManager(16384))
    assert "192.0.2.0/24 via 10.0.0.2 dev tap0" in topo.exec("client", "ip", "route")
    wire = json.loads(topo.exec("client", "ip", "-j", "addr", "show", "client-eth0"))[0]
    tap = json.loads(topo.exec("client", "ip", "-j", "addr", "show", "tap0"))[0]
    assert [a for a in wire["addr_info"] if a["family"] == "inet"] == []
    assert [a["local"] for a in tap["addr_info"] if a["family"] == "inet"] == ["10.0.0.1"]
    assert tap["address"] == before["address"]                 # the TAP has the wire's MAC
    ruleset = topo.exec("client", "nft", "list", "table", "netdev", h._att.nft_table)
    assert "hook ingress" in ruleset and "policy drop" in ruleset and f"testbed:{topo.run}" in ruleset
    assert topo.exec("client", "sysctl", "-n", "net.ipv4.conf.client-eth0.arp_ignore").strip() == "8"
    h.stop()
    h.detach()
    after = json.loads(topo.exec("client", "ip", "-j", "addr", "show", "client-eth0"))[0]
    assert [a["local"] for a in after["addr_info"] if a["family"] == "inet"] == ["10.0.0.1"]
    assert "192.0.2.0/24 via 10.0.0.2 dev client-eth0" in topo.exec("client", "ip", "route")
    assert "tap0" not in topo.exec("client", "ip", "link")
    assert topo.exec("client", "nft", "list", "tables").strip() == ""
    assert topo.exec("client", "sysctl", "-n", "net.ipv4.conf.client-eth0.arp_ignore").strip() == "0"
    h.detach()                                                  # idempotent
    assert probe.p50(probe.ping(topo.ns["client"], topo.ip["peer"], 3, 0.01)) is not None


def test_paused_nothing_passes_either_way(topo, handler_factory):
    mm = MemoryManager(16384)
    h = handler_factory(mm)
    lc, lp = _listener(topo.ns["client"], 7001), _listener(topo.ns["peer"], 7002)
    try:
        assert probe.p50(probe.ping(topo.ns["client"], topo.ip["peer"], 3, 0.01)) is not None
        h.pause()
        assert probe.ping(topo.ns["client"], topo.ip["peer"], 3, 0.01, timeout=0.3) == [None] * 3
        assert probe.ping(topo.ns["peer"], topo.ip["client"], 3, 0.01, timeout=0.3) == [None] * 3
        assert not _tcp_connects(topo.ns["client"], topo.ip["peer"], 7002)
        assert not _tcp_connects(topo.ns["peer"], topo.ip["client"], 7001)
        c = h.counters()
        assert c["state"] == "paused"
        assert c["rx"]["reasons"]["FAULT"]["frames"] > 0 and c["tx"]["reasons"]["FAULT"]["frames"] > 0
        assert c["rx"]["delivered"]["frames"] + c["rx"]["dropped"]["frames"] == c["rx"]["received"]["frames"]
        h.resume()
        assert _tcp_connects(topo.ns["client"], topo.ip["peer"], 7002)
        assert _tcp_connects(topo.ns["peer"], topo.ip["client"], 7001)
    finally:
        lc.close()
        lp.close()


def test_each_frame_seen_once(topo, handler_factory):
    """Every datagram reaches the client's socket exactly once, through the handler."""
    mm = MemoryManager(16384)
    h = handler_factory(mm)
    rx = in_ns(topo.ns["client"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    tx = in_ns(topo.ns["peer"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)
    rx.bind(("0.0.0.0", 7100))
    rx.settimeout(0.5)
    try:
        assert probe.p50(probe.ping(topo.ns["peer"], topo.ip["client"], 2, 0.01)) is not None  # ARP done
        base = h.counters()
        n = 300
        for i in range(n):
            tx.sendto(i.to_bytes(4, "big") * 50, (topo.ip["client"], 7100))
        got = []
        while True:
            try:
                got.append(int.from_bytes(rx.recv(2048)[:4], "big"))
            except socket.timeout:
                break
        assert sorted(got) == list(range(n))                    # each once, none twice
        c = settle(h, base["rx"]["received"]["frames"] + n)
        for d in ("rx", "tx"):
            assert c[d]["received"]["frames"] == c[d]["delivered"]["frames"] + c[d]["dropped"]["frames"]
            assert c[d]["in_flight"] == {"frames": 0, "bytes": 0}
        assert c["rx"]["delivered"]["frames"] - base["rx"]["delivered"]["frames"] == n
        # The wire itself delivered nothing to the stack: its ingress hook dropped all.
        stats = json.loads(topo.exec("client", "nft", "-j", "list", "table", "netdev",
                                     h._att.nft_table))
        assert any("chain" in o for o in stats["nftables"])
        assert c["errors"] == 0 and mm.check_invariants() == []
    finally:
        rx.close()
        tx.close()


def test_wire_deleted_under_a_running_handler(topo, handler_factory):
    """Host teardown before the handler stops: no spin, stop and detach stay quiet."""
    import time
    h = handler_factory(MemoryManager(16384))
    topo.exec("client", "ip", "link", "del", "client-eth0")
    time.sleep(0.5)
    assert h.errors < 30                       # reported, not spinning on the error
    h.stop()
    h.detach()
    h.detach()


def test_attach_errors_name_the_place_and_leave_nothing(topo):
    from testbed.netdev import NetdevError, PacketHandler
    mm = MemoryManager(16384)
    h = PacketHandler(mm, wire="nosuch0", tap="tap0", run_id=topo.run, netns=topo.ns["client"])
    with pytest.raises(NetdevError, match="nosuch0"):
        h.attach()
    assert mm.netdevs == {}
    busy = PacketHandler(mm, wire="client-eth0", tap="lo", run_id=topo.run, netns=topo.ns["client"])
    with pytest.raises(NetdevError, match="lo"):
        busy.attach()                       # "lo" exists and is no TAP: TUNSETIFF refuses
    assert topo.exec("client", "nft", "list", "tables").strip() == ""
    addrs = json.loads(topo.exec("client", "ip", "-j", "addr", "show", "client-eth0"))[0]
    assert [a["local"] for a in addrs["addr_info"] if a["family"] == "inet"] == ["10.0.0.1"]
    assert mm.netdevs == {}
