"""Spoofing: a bulk host sends frames that claim the iSCSI flow's addresses and ports.

The handler classifies by 5-tuple, as the kernel's socket lookup does, so such frames
are class memalloc: under pressure they get reserve skbs and pass the protocol step.
This test measures what they cost the reserve and what the kernel stack does with them
(the figures are printed; docs/architecture.md, "Packet handler", quotes them):

- *blind* spoofing (random sequence and acknowledgement numbers): each frame holds a
  reserve skb only while the handler processes it (or while it waits in the delay
  line), is charged to no socket (it is not in order), and the kernel discards it,
  answering each with a duplicate ACK (``tcp_send_dupack``: out-of-window segments
  that carry data are not rate-limited), which goes out on the memalloc flow and so
  takes a transmit skb from the reserve too (where the era lets a memalloc socket
  transmit from it: 3.6). With a delay line the frames in flight hold reserve skbs: a
  burst can leave the NIC's ring without buffers (RX_NO_BUFFER drops, legitimate frames
  included);
- a *sniffing* attacker who sends at exactly ``rcv_nxt`` gets its bytes charged to
  the iSCSI socket. The kernel drops the segment (no valid ACK), so the reader never
  reads them and they stay charged until the connection closes.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from testbed.mm import MemoryManager, Use
from testbed.netdev import FlowKey

from .conftest import Injector, in_ns, release, set_free, settle, wait_for
from tests.support.vethnet import VethNet

pytestmark = pytest.mark.root

N_SPOOF = 2000


def _nstat(topo: VethNet) -> dict[str, int]:
    out = topo.exec("client", "nstat", "-az", "--json")
    data = json.loads(out)
    return {k: v for d in data.values() for k, v in d.items()}


def _mac(topo: VethNet, host: str) -> str:
    dev = "tap0" if host == "client" else f"{host}-eth0"
    return json.loads(topo.exec(host, "ip", "-j", "link", "show", dev))[0]["address"]


@pytest.fixture
def three():
    t = VethNet(["target", "bulk"])
    try:
        yield t
    finally:
        t.close()


def _echo_server(topo: VethNet) -> socket.socket:
    srv = in_ns(topo.ns["target"], lambda: socket.socket())
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 3260))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
    threading.Thread(target=serve, daemon=True).start()
    return srv


def mem_delivered(h, c0: dict) -> int:
    return (h.counters()["rx"]["classes"]["memalloc"]["delivered"]["frames"]
            - c0["rx"]["classes"]["memalloc"]["delivered"]["frames"])


def _sampler(dev, stop: threading.Event, peak: list) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], dev.rx_reserve_used)
        time.sleep(0.0005)


@pytest.mark.parametrize("policy,delay_ms", [("gorman-3.6", 0.0), ("gorman-3.6", 10.0),
                                             ("phillips-2005", 0.0)])
def test_spoofed_iscsi_frames(three, policy, delay_ms):
    from testbed.netdev import PacketHandler
    topo = three
    mm = MemoryManager(16384, policy=policy, rx_reserve=50)
    h = PacketHandler(mm, "client-eth0", "tap0", delay_ms=(delay_ms, 0.0), run_id=topo.run,
                      netns=topo.ns["client"])
    srv = _echo_server(topo)
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()
    bulk = Injector(topo.ns["bulk"], "bulk-eth0")
    c = in_ns(topo.ns["client"], lambda: socket.socket())
    c.settimeout(3)
    with h:
        try:
            c.bind((topo.ip["client"], 0))
            cport = c.getsockname()[1]
            key = FlowKey("tcp", topo.ip["client"], cport, topo.ip["target"], 3260)
            flow = h.flows.register(key, sk)
            c.connect((topo.ip["target"], 3260))
            c.sendall(b"login")
            assert c.recv(64) == b"login"
            sk.consume(5)
            set_free(mm, mm.zone.mark_atomic - 1)            # under pressure: in the reserve
            free0, charged0 = mm.zone.free, flow.charged_bytes
            k0, c0 = _nstat(topo), h.counters()
            eth = Ether(src=_mac(topo, "bulk"), dst=_mac(topo, "client"))
            rng = random.Random(2)
            spoof = [bytes(eth / IP(src=topo.ip["target"], dst=topo.ip["client"]) /
                           TCP(sport=3260, dport=cport, flags="PA", seq=rng.getrandbits(32),
                               ack=rng.getrandbits(32), window=8192) / Raw(b"\x21" * 48))
                     for _ in range(N_SPOOF)]
            stop, peak = threading.Event(), [0]
            sampler = threading.Thread(target=_sampler, args=(h.dev, stop, peak), daemon=True)
            sampler.start()
            low = [free0]
            for i in range(0, N_SPOOF, 200):
                bulk.send(spoof[i:i + 200])
                low[0] = min(low[0], mm.zone.free)
                time.sleep(0.01)
            c1 = settle(h, c0["rx"]["received"]["frames"] + N_SPOOF, timeout=20)
            assert wait_for(lambda: _nstat(topo).get("TcpOutSegs", 0) - k0.get("TcpOutSegs", 0)
                            >= mem_delivered(h, c0) - 5, 2.0)
            stop.set()
            sampler.join()
            time.sleep(0.2)
            k1 = _nstat(topo)
            c1 = h.counters()
            mem = c1["rx"]["classes"]["memalloc"]
            got = mem["received"]["frames"] - c0["rx"]["classes"]["memalloc"]["received"]["frames"]
            delivered = mem_delivered(h, c0)
            nomem = (mem["reasons"]["RX_NO_BUFFER"]["frames"]
                     - c0["rx"]["classes"]["memalloc"]["reasons"]["RX_NO_BUFFER"]["frames"])
            tx_mem = (c1["tx"]["classes"]["memalloc"]["received"]["frames"]
                      - c0["tx"]["classes"]["memalloc"]["received"]["frames"])
            tx_nomem = (c1["tx"]["classes"]["memalloc"]["reasons"]["NOMEM"]["frames"]
                        - c0["tx"]["classes"]["memalloc"]["reasons"]["NOMEM"]["frames"])
            kernel = {k: k1.get(k, 0) - k0.get(k, 0) for k in
                      ("TcpInSegs", "TcpOutSegs", "TcpExtTCPChallengeACK",
                       "TcpExtTCPACKSkippedChallenge", "TcpExtTCPACKSkippedSeq",
                       "TcpExtPAWSEstab", "TcpExtTCPOFOQueue", "TcpExtTCPOFODrop",
                       "TcpExtTCPACKSkippedPAWS", "TcpExtTCPAbortOnData")}
            figures = {"policy": policy, "delay_ms": delay_ms, "spoofed": N_SPOOF,
                       "classified_memalloc": got, "delivered": delivered, "dropped_nomem": nomem,
                       "dupacks_from_stack": tx_mem, "dupacks_dropped_nomem": tx_nomem,
                       "reserve_skbs_peak": peak[0], "free_pages_min_drop": free0 - low[0],
                       "charged_bytes": flow.charged_bytes - charged0,
                       "uncharged_segments": flow.uncharged_segments,
                       "rx_reserve_used_after": h.dev.rx_reserve_used, "kernel": kernel}
            print("spoof figures:", json.dumps(figures))
            # they pass as iSCSI frames; so do the target's retransmissions when the
            # client's ACKs cannot be sent (2005: a memalloc socket has no transmit reserve)
            extra = 0 if mm.era.sk_memalloc_tx else 10
            assert N_SPOOF <= got <= N_SPOOF + extra
            assert delivered + nomem == got
            if not delay_ms:
                assert delivered == got
            else:         # frames waiting in the delay line hold reserve skbs
                assert peak[0] > 5
            assert flow.charged_bytes == charged0                  # ...but are charged to no one
            # and the reserve comes back, but for the ring's buffers refilled from it
            assert h.dev.rx_reserve_used <= h.dev.rx_ring
            assert kernel["TcpInSegs"] >= delivered * 0.95          # the stack saw them
            assert abs(kernel["TcpOutSegs"] - delivered) <= delivered * 0.05 + 5   # dup ACKs
            assert tx_mem >= delivered * 0.95 - 5                  # on the memalloc flow
            if not delay_ms and mm.era.sk_memalloc_tx:
                assert tx_nomem == 0                               # sent from the reserve
            # The real connection is unharmed (in 2005 its own segments need memory back:
            # a memalloc socket sends from the reserves only in 3.6).
            if not mm.era.sk_memalloc_tx:
                release(mm)
            c.sendall(b"still here")
            assert c.recv(64) == b"still here"
            sk.consume(10)

            # A sniffing attacker: exactly rcv_nxt, no valid ACK.
            before = sk.rmem_bytes
            bulk.send([bytes(eth / IP(src=topo.ip["target"], dst=topo.ip["client"]) /
                             TCP(sport=3260, dport=cport, flags="", seq=flow.rcv_nxt) /
                             Raw(b"\x22" * 1000))])
            assert wait_for(lambda: sk.rmem_bytes == before + 1000, 2.0)
            time.sleep(0.2)
            c.settimeout(0.3)
            with pytest.raises(socket.timeout):
                c.recv(64)                            # the kernel never delivered those bytes
            print("sniffing attacker: 1000 bytes stay charged:", sk.rmem_bytes - before)
        finally:
            c.close()
            srv.close()
            bulk.close()
        release(mm)
    sk.close()
    assert mm.used[Use.SKB] == 0 and mm.check_invariants() == []
