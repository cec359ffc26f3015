"""Each policy's receive rules, driven by crafted frames against the real memory manager.

One frame of each kind goes onto the wire at a time and its fate is read from the
handler's counters (delivered, or dropped with which reason):

- ``A`` UDP for a registered SOCK_MEMALLOC flow (the iSCSI connection's role),
- ``B`` UDP for a registered flow whose socket is not memalloc (a downloader),
- ``C`` UDP for no registered socket (a closed port, for the emulated kernel),
- ``ICMP`` an echo request to the client,
- ``ARP`` a request for the client's address,
- ``E`` an unknown EtherType (0x88B5, local experimental).

The NIC's ring has one slot. Before each frame the memory manager is put in a state by
charging kernel pages and the slot is posted in that state (a frame taken straight from
the ring, then freed): ``plenty``; ``under_min`` (free just under the min watermark:
GFP_ATOMIC still succeeds down to 3/8 of min); ``reserve`` (GFP_ATOMIC fails: the policy
decides the refill); for phillips ``cap`` (``rx_reserve`` skbs already counted) and for
the threshold variant ``past_threshold`` (more than threshold x rx_reserve counted).
Delivered frames must also reach the kernel socket.
"""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from testbed.mm import MemoryManager, Skb
from testbed.netdev import FlowKey

from .conftest import client_mac, in_ns, peer_mac, release, set_free, settle, wait_for

pytestmark = pytest.mark.root

RX_RESERVE = 8
D = "delivered"
NB = "RX_NO_BUFFER"
KINDS = ("A", "B", "C", "ICMP", "ARP", "E")
ALL_DELIVERED = dict.fromkeys(KINDS, D)
ALL_NO_BUFFER = dict.fromkeys(KINDS, NB)
# phillips as posted: TCP/UDP with a socket and ICMP are checked; C (no socket), ARP and
# other EtherTypes pass no patched handler
PHILLIPS_DROPS = {"A": D, "B": "NOT_MEMALLOC", "C": D, "ICMP": "NOT_MEMALLOC", "ARP": D, "E": D}

EXPECTED = {
    "none": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED, "reserve": ALL_NO_BUFFER},
    "reserve-only": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED, "reserve": ALL_DELIVERED},
    "phillips-2005": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED,
                      "reserve": PHILLIPS_DROPS, "cap": ALL_NO_BUFFER},
    # threshold 0.5 of rx_reserve (8): one or two reserve skbs counted are within it...
    "phillips-2005-threshold": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED,
                                "reserve": ALL_DELIVERED,
                                # ...more than four are not
                                "past_threshold": PHILLIPS_DROPS, "cap": ALL_NO_BUFFER},
    # 3.6: the refill takes a reserve page for its fragment, but build_skb does not mark
    # the skb pfmemalloc, so sk_filter and __netif_receive_skb let every frame through
    "gorman-3.6": {"plenty": ALL_DELIVERED, "under_min": ALL_DELIVERED, "reserve": ALL_DELIVERED},
}
COUNTED = {"cap": RX_RESERVE, "past_threshold": 5, "reserve": 0}   # rx_reserve_used before


def frames(topo) -> dict[str, bytes]:
    cmac, pmac = client_mac(topo), peer_mac(topo)
    cip, pip = topo.ip["client"], topo.ip["peer"]
    eth = Ether(src=pmac, dst=cmac)
    return {
        "A": bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4000, dport=5000) / Raw(b"a" * 100)),
        "B": bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4001, dport=5001) / Raw(b"b" * 100)),
        "C": bytes(eth / IP(src=pip, dst=cip) / UDP(sport=4002, dport=5002) / Raw(b"c" * 100)),
        "ICMP": bytes(eth / IP(src=pip, dst=cip) / ICMP(id=7, seq=1) / Raw(b"i" * 32)),
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


def free_target(mm: MemoryManager, state: str) -> int:
    zone = mm.zone
    if state == "plenty":
        return zone.managed_pages // 2
    if state == "under_min":
        assert zone.wmark_min - 1 > zone.mark_atomic + 2
        return zone.wmark_min - 1
    return zone.mark_atomic - 1


def post_in_state(mm: MemoryManager, dev, state: str) -> None:
    """Leave the ring's slot posted (or empty) as the refill in ``state`` leaves it."""
    target = free_target(mm, state)
    set_free(mm, target)
    if state in COUNTED:
        dev.rx_reserve_used = COUNTED[state]
    primer = mm.netdev_alloc_skb(dev, 60)           # takes the slot; its refill posts anew
    if isinstance(primer, Skb):
        mm.kfree_skb(primer)
    set_free(mm, target)


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_receive_rules_per_state(policy, topo, handler_factory, injector):
    mm = MemoryManager(16384, policy=policy, rx_reserve=RX_RESERVE, threshold=0.5)
    h = handler_factory(mm, rx_ring=1)
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
    # the client answers the echo request: its kernel must not ask for the peer's MAC
    topo.exec("client", "ip", "neigh", "replace", pip, "lladdr", peer_mac(topo), "dev", "tap0",
              "nud", "permanent")
    got: dict[str, dict[str, str]] = {}
    try:
        for state in EXPECTED[policy]:
            got[state] = {}
            for kind in KINDS:
                post_in_state(mm, h.dev, state)
                before = h.counters()
                injector.send([fr[kind]])
                after = settle(h, before["rx"]["received"]["frames"] + 1)
                got[state][kind] = outcome(before, after)
                if kind in kernel:        # delivered frames, and only those, reach the socket
                    data = None
                    for _ in range(2):
                        try:
                            data = kernel[kind].recv(2048)
                            break
                        except BlockingIOError:
                            time.sleep(0.05)
                    assert (data is not None) == (got[state][kind] == D), (state, kind)
                sk_a.consume(1 << 30)
                sk_b.consume(1 << 30)
        assert got == EXPECTED[policy]
        c = h.counters()
        assert c["errors"] == 0
        a = c["rx"]["classes"]["memalloc"]
        assert a["received"]["frames"] == len(EXPECTED[policy])     # A is the memalloc class
        rx = c["rx"]
        assert rx["received"]["frames"] == rx["delivered"]["frames"] + rx["dropped"]["frames"]
        assert c["device"]["rx_no_buffer_count"] >= rx["reasons"][NB]["frames"]
    finally:
        for s in kernel.values():
            s.close()
    release(mm)
    assert mm.check_invariants() == []


def test_a_dry_ring_drops_every_class_until_memory_returns(topo, handler_factory, injector):
    """A frame that finds no posted buffer is dropped at the ring, storage frames too;
    the refill its interrupt triggers posts the ring again once memory is back."""
    mm = MemoryManager(16384, policy="none")
    h = handler_factory(mm, rx_ring=4)
    assert h.counters()["device"]["rx_ring_posted"] == 4
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()
    h.flows.register(FlowKey("udp", topo.ip["client"], 5000, topo.ip["peer"], 4000), sk)
    fr = frames(topo)
    set_free(mm, 0)
    base = h.counters()["rx"]["received"]["frames"]
    injector.send([fr["A"], fr["C"]] * 5)
    c = settle(h, base + 10)
    rx = c["rx"]
    assert rx["delivered"]["frames"] == 4 and rx["reasons"][NB]["frames"] == 6
    assert rx["classes"]["memalloc"]["reasons"][NB]["frames"] == 3
    assert c["device"]["rx_no_buffer_count"] == 6 and c["device"]["rx_ring_posted"] == 0
    assert c["device"]["alloc_rx_buff_failed"] >= 10
    sk.consume(1 << 30)
    release(mm)
    injector.send([fr["C"], fr["A"]])               # dropped; its refill posts four
    c = settle(h, base + 12)
    assert c["rx"]["reasons"][NB]["frames"] == 7 and c["rx"]["delivered"]["frames"] == 5
    assert wait_for(lambda: h.counters()["device"]["rx_ring_posted"] == 4)
    sk.consume(1 << 30)
    assert mm.check_invariants() == []


def test_gorman_without_memalloc_socket_never_touches_the_reserve(topo, handler_factory, injector):
    """Until some socket is SOCK_MEMALLOC, no receive allocation uses the reserve."""
    mm = MemoryManager(16384, policy="gorman-3.6")
    h = handler_factory(mm, rx_ring=1)
    fr = frames(topo)
    seen = set()
    for kind in KINDS:
        post_in_state(mm, h.dev, "reserve")
        before = h.counters()
        injector.send([fr[kind]])
        seen.add(outcome(before, settle(h, before["rx"]["received"]["frames"] + 1)))
        page = h.dev.frag_page
        assert page is None or not page.pfmemalloc
    assert seen <= {D, NB} and h.dev.rx_reserve_used == 0
    release(mm)
