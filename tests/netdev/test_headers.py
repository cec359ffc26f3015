"""The fast header parse against scapy-built frames (no root needed)."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from testbed.netdev import FlowKey, headers

VH = 10


def parse(frame: bytes):
    buf = bytes(VH) + frame + b"\xee" * 64      # the parser must stop at `end`, not the buffer
    return headers.parse(buf, VH, VH + len(frame)), buf


def test_tcp_ipv4_key_matches_flowkey():
    f = bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=3260, dport=40000, seq=7,
                                                                 flags="PA") / Raw(b"x" * 100))
    info, buf = parse(f)
    assert info[0] == headers.ETH_P_IP
    key = FlowKey("tcp", "10.0.0.1", 40000, "10.0.0.2", 3260)
    assert info[1] == key.raw(inbound=True)
    assert headers.tcp_segment(buf, info[2], info[3]) == (7, 0, 0x18, 8192, 100)
    out, _ = parse(bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=3260)))
    assert out[1] == key.raw(inbound=False)


def test_tcp_window_scale_option():
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    info, buf = parse(bytes(Ether() / IP() / TCP(flags="S", options=opts)))
    assert headers.tcp_wscale(buf, info[2]) == 7
    info, buf = parse(bytes(Ether() / IP() / TCP(flags="S", options=[("MSS", 1460)])))
    assert headers.tcp_wscale(buf, info[2]) is None
    info, buf = parse(bytes(Ether() / IP() / TCP(flags="S", options=[("WScale", 20)])))
    assert headers.tcp_wscale(buf, info[2]) == 14                # RFC 7323 caps the shift


def test_udp_ipv6_vlan_and_padding():
    f = bytes(Ether() / Dot1Q(vlan=5) / IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=1, dport=2) / Raw(b"y" * 9))
    info, buf = parse(f)
    assert info[0] == headers.ETH_P_8021Q                      # outer type, as skb->protocol
    assert info[1] == FlowKey("udp", "fd00::1", 2, "fd00::2", 1).raw(inbound=True)
    assert headers.udp_payload_len(buf, info[2]) == 9
    small = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=5, dport=6))
    padded = small + bytes(60 - len(small))                    # Ethernet minimum-size padding
    assert parse(padded)[0][1] == parse(small)[0][1]


def test_other_protocols_have_no_key_but_are_well_formed():
    for f in (Ether() / ARP(), Ether() / IP() / ICMP(), Ether(type=0x88B5) / Raw(b"z"),
              Ether() / IP(flags="MF", frag=0) / UDP(), Ether() / IP(frag=100) / Raw(b"q" * 40)):
        info, _ = parse(bytes(f))
        assert info is not None and info[1] is None, f.summary()
        assert headers.explain(bytes(f)) == ""


MALFORMED = {
    "short ethernet": b"\x01" * 13,
    "truncated ipv4": bytes(Ether() / IP())[:30],
    "ihl < 5": bytes(Ether() / IP(ihl=4) / UDP()),
    "tot_len beyond frame": bytes(Ether() / IP(len=1000) / UDP()),
    "tot_len < header": bytes(Ether() / IP(len=10) / UDP()),
    "version 5": bytes(Ether(type=0x800) / Raw(b"\x55" + bytes(40))),
    "tcp doff 3": bytes(Ether() / IP() / TCP(dataofs=3)),
    "tcp doff beyond": bytes(Ether() / IP() / TCP(dataofs=15)),
    "udp len 4": bytes(Ether() / IP() / UDP(len=4)),
    "udp len beyond": bytes(Ether() / IP() / UDP(len=300)),
    "truncated tcp": bytes(Ether() / IP(proto=6, len=30) / Raw(bytes(10))),
    "ipv6 payload beyond": bytes(Ether() / IPv6(plen=500) / UDP()),
    "short arp": bytes(Ether(type=0x806) / Raw(bytes(10))),
    "truncated vlan": bytes(Ether(type=0x8100) / Raw(b"\x00")),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_frames_are_rejected_and_explained(name):
    frame = MALFORMED[name]
    assert parse(frame)[0] is None
    why = headers.explain(frame)
    assert why and ":" in why, why


def test_random_bytes_never_raise():
    rng = random.Random(5)
    for _ in range(20000):
        n = rng.randrange(0, 200)
        frame = bytes(rng.getrandbits(8) for _ in range(n))
        if n >= 14 and rng.random() < 0.7:
            frame = frame[:12] + struct.pack("!H", rng.choice((0x800, 0x86DD, 0x806, 0x8100))) + frame[14:]
        info, _ = parse(frame)
        assert (info is None) == bool(headers.explain(frame)), frame.hex()


def test_header_layouts_are_declared_once():
    assert headers.IPV4.struct.size == 20 and headers.TCP.struct.size == 20
    assert headers.IPV4.offset("saddr") == 12 and headers.TCP.offset("doff_flags") == 12
    with pytest.raises(KeyError):
        headers.UDP.offset("nope")
