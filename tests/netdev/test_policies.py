"""Each policy's drop rule, driven by crafted frames against the real memory manager.

One frame of each kind goes onto the wire at a time and its fate is read from the
handler's counters (delivered, or dropped with which reason):

- ``A`` UDP for a registered SOCK_MEMALLOC flow (the iSCSI connection's role),
- ``B`` UDP for a registered flow whose socket is not memalloc (a downloader),
- ``C`` UDP for no registered socket,
- ``ARP`` a request for the client's address,
- ``E`` an unknown EtherType (0x88B5, local experimental).

The memory manager is put in each state by charging kernel pages:
``plenty``; ``under_min`` (free just under the min watermark: GFP_ATOMIC still
succeeds down to 3/8 of min); ``reserve`` (GFP_ATOMIC fails: the policy decides);
``reserve_full`` (no page left at all); ``cap`` (phillips: ``rx_reserve`` reserve
skbs already outstanding). Delivered frames must also reach the kernel socket.
"""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from testbed.mm import MemoryManager
from testbed.netdev import FlowKey

from .conftest import client_mac, in_ns, peer_mac, release, set_free, settle

pytestmark = pytest.mark.root

RX_RESERVE = 8
D = "delivered"
KINDS = ("A", "B", "C", "ARP", "E")
ALL_DELIVERED = dict.fromkeys(KINDS, D)
ALL_NOMEM = dict.fromkeys(KINDS, "NOMEM")

EXPECTED = {
    "none": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED, "reserve": ALL_NOMEM,
             "reserve_full": ALL_NOMEM},
    "reserve-only": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED,
                     "reserve": ALL_DELIVERED, "reserve_full": ALL_NOMEM,
                     "cap": ALL_DELIVERED},
    "phillips-2005": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED,
                      "reserve": {"A": D, "B": "NOT_MEMALLOC", "C": "NOT_MEMALLOC",
                                  "ARP": D, "E": D},
                      "reserve_full": ALL_NOMEM,
                      "cap": dict.fromkeys(KINDS, "RESERVE_CAP")},
    # threshold 0.5 of the reserve (the pages below the GFP_ATOMIC floor): a few frames
    # taken from it are within the threshold...
    "phillips-2005-threshold": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED,
                                "reserve": ALL_DELIVERED,
                                # ...but not once more than half of it is in use
                                "past_threshold": {"A": D, "B": "NOT_MEMALLOC",
                                                   "C": "NOT_MEMALLOC", "ARP": D, "E": D},
                                "reserve_full": ALL_NOMEM,
                                "cap": dict.fromkeys(KINDS, "RESERVE_CAP")},
    "gorman-3.6": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED,
                   "reserve": {"A": D, "B": "PFMEMALLOC", "C": D, "ARP": D,
                               "E": "PFMEMALLOC_PROTO"},
                   "reserve_full": ALL_NOMEM},
}


def frames(topo) -> dict[str, bytes]:
    cmac, pmac = client_mac(topo), peer_mac(topo)
    cip, pip = topo.ip["client"], topo.ip["peer"]
    eth = Ether(src=pmac, dst=cmac)
    return {
        "A": bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4000, dport=5000) / Raw(b"a" * 100)),
        "B": bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4001, dport=5001) / Raw(b"b" * 100)),
        "C": bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4002, dport=5002) / Raw(b"c" * 100)),
        "ARP": bytes(Ether(src=pmac, dst="ff:ff:ff:ff:ff:ff") /
                     ARP(op=1, hwsrc=pmac, psrc=pip, pdst=cip)),
        "E": bytes(Ether(src=pmac, dst=cmac, type=0x88B5) / Raw(b"e" * 60)),
    }


def outcome(before: dict, after: dict) -> str:
    rx0, rx1 = before["rx"], after["rx"]
    assert rx1["received"]["frames"] - rx0["received"]["frames"] == 1, (rx0, rx1)
    if rx1["delivered"]["frames"] > rx0["delivered"]["frames"]:
        return D
    changed = [r for r in rx1["reasons"] if rx1["reasons"][r]["frames"] > rx0["reasons"][r]["frames"]]
    assert len(changed) == 1, changed
    return changed[0]


def put_in_state(mm: MemoryManager, dev, state: str, held: list) -> None:
    for skb in held:
        mm.kfree_skb(skb)
    held.clear()
    zone = mm.zone
    if state == "plenty":
        set_free(mm, zone.managed_pages // 2)
    elif state == "under_min":
        set_free(mm, zone.wmark_min - 1)
        assert zone.free > zone.mark_atomic + 2
    elif state in ("reserve", "cap", "past_threshold"):
        set_free(mm, zone.mark_atomic - 1)
        if state == "past_threshold":   # more than threshold of the reserve taken
            set_free(mm, zone.mark_atomic - int(mm.policy.threshold * zone.mark_atomic) - 1)
        hold = {"reserve": 0, "cap": dev.rx_reserve, "past_threshold": 0}[state]
        for _ in range(hold):           # reserve skbs outstanding elsewhere (a queue, a ring)
            skb = mm.netdev_alloc_skb(dev, 1500)
            assert not isinstance(skb, type(None)) and getattr(skb, "reserve", False), skb
            held.append(skb)
        assert dev.rx_reserve_used == hold
    elif state == "reserve_full":
        set_free(mm, 0)
    else:
        raise AssertionError(state)


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_drop_rule_per_state(policy, topo, handler_factory, injector):
    mm = MemoryManager(16384, policy=policy, rx_reserve=RX_RESERVE, threshold=0.5)
    h = handler_factory(mm)
    sk_a, sk_b = mm.sock_create("iscsi"), mm.sock_create("download")
    sk_a.set_memalloc()
    cip, pip = topo.ip["client"], topo.ip["peer"]
    h.flows.register(FlowKey("udp", cip, 5000, pip, 4000), sk_a)
    h.flows.register(FlowKey("udp", cip, 5001, pip, 4001), sk_b)
    kernel = {}
    for kind, port in (("A", 5000), ("B", 5001), ("C", 5002)):
        s = in_ns(topo.ns["client"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        kernel[kind] = s
    fr = frames(topo)
    held: list = []
    got: dict[str, dict[str, str]] = {}
    try:
        for state in EXPECTED[policy]:
            put_in_state(mm, h.dev, state, held)
            got[state] = {}
            for kind in KINDS:
                before = h.counters()
                injector.send([fr[kind]])
                after = settle(h, before["rx"]["received"]["frames"] + 1)
                got[state][kind] = outcome(before, after)
                if kind in kernel:        # delivered frames, and only those, reach the socket
                    try:
                        data = kernel[kind].recv(2048)
                    except BlockingIOError:
                        import time
                        time.sleep(0.05)
                        try:
                            data = kernel[kind].recv(2048)
                        except BlockingIOError:
                            data = None
                    assert (data is not None) == (got[state][kind] == D), (state, kind)
            sk_a.consume(1 << 30)
            sk_b.consume(1 << 30)
        assert got == EXPECTED[policy]
        c = h.counters()
        assert c["errors"] == 0
        a = c["rx"]["classes"]["memalloc"]
        assert a["received"]["frames"] == len(EXPECTED[policy])     # A is the memalloc class
    finally:
        for skb in held:
            mm.kfree_skb(skb)
        for s in kernel.values():
            s.close()
    release(mm)
    assert mm.check_invariants() == []


def test_gorman_without_memalloc_socket_never_touches_the_reserve(topo, handler_factory, injector):
    """Until some socket is SOCK_MEMALLOC, no receive allocation uses the reserve."""
    mm = MemoryManager(16384, policy="gorman-3.6")
    h = handler_factory(mm)
    fr = frames(topo)
    put_in_state(mm, h.dev, "reserve", [])
    for kind in KINDS:
        before = h.counters()
        injector.send([fr[kind]])
        assert outcome(before, settle(h, before["rx"]["received"]["frames"] + 1)) == "NOMEM"
    assert h.dev.rx_reserve_used == 0
