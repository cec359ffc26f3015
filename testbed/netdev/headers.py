"""Fast header parse: just enough of each frame to find its flow, with ``struct``.

The receive path runs once per frame, so it cannot dissect with scapy (about 90 us a
frame here); it unpacks fixed header layouts with precompiled :class:`struct.Struct`
objects instead (about 1 us for a TCP/IPv4 frame). The layouts are declared once,
below, as named fields (:class:`Header`); the parser uses them by name, never by
scattered offsets.

:func:`parse` answers the question the handler asks of every frame: *which flow is
this, and is it well formed?* It returns a :data:`Parsed` tuple::

    (ethertype, key, l4_offset, l4_end)

- ``ethertype``: the outer EtherType (what ``skb->protocol`` would be; gorman-3.6's
  protocol check uses it);
- ``key``: ``(ip_proto, src_ip + dst_ip, src_port + dst_port)`` as raw bytes for TCP
  and UDP (first fragments only), else ``None``. The flow registry keeps each
  registered flow under both orientations, so a lookup is one dict probe;
- ``l4_offset`` / ``l4_end``: where the transport header starts and the IP payload
  ends (for the TCP sequence accounting of registered flows).

A frame whose headers contradict themselves (truncated header, IHL < 5, total length
beyond the frame, TCP data offset < 5, UDP length < 8, ...) gives ``None``: the kernel
would drop it in ``ip_rcv``/``tcp_v4_rcv``, the handler counts it as ``MALFORMED``.
:func:`explain` says why, on the slow path, for logs and tests. Frames of other
protocols (unknown EtherTypes, ICMP, IPv6 extension headers) are well formed and simply
have no flow key: they belong to class "other".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Union

Buffer = Union[bytes, bytearray, memoryview]
Parsed = tuple  # (ethertype, key | None, l4_offset, l4_end)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True)
class Header:
    """A fixed header layout: (field name, struct code) pairs in wire order."""

    name: str
    fields: tuple[tuple[str, str], ...]

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct("!" + "".join(code for _, code in self.fields))

    def offset(self, name: str) -> int:
        """Byte offset of field ``name`` inside the header."""
        fmt = "!"
        for fname, code in self.fields:
            if fname == name:
                return struct.calcsize(fmt)
            fmt += code
        raise KeyError(f"{self.name} has no field {name!r}")

    def unpack(self, buf: Buffer, offset: int = 0) -> dict:
        """Slow path: the header as a dict of named fields."""
        return dict(zip((n for n, _ in self.fields), self.struct.unpack_from(buf, offset)))


ETHERNET = Header("ethernet", (("dst", "6s"), ("src", "6s"), ("type", "H")))
VLAN = Header("802.1q", (("tci", "H"), ("type", "H")))
IPV4 = Header("ipv4", (("ver_ihl", "B"), ("tos", "B"), ("tot_len", "H"), ("id", "H"),
                       ("frag_off", "H"), ("ttl", "B"), ("proto", "B"), ("check", "H"),
                       ("saddr", "4s"), ("daddr", "4s")))
IPV6 = Header("ipv6", (("ver_tc_flow", "I"), ("payload_len", "H"), ("nexthdr", "B"),
                       ("hop_limit", "B"), ("saddr", "16s"), ("daddr", "16s")))
TCP = Header("tcp", (("source", "H"), ("dest", "H"), ("seq", "I"), ("ack_seq", "I"),
                     ("doff_flags", "H"), ("window", "H"), ("check", "H"), ("urg_ptr", "H")))
UDP = Header("udp", (("source", "H"), ("dest", "H"), ("len", "H"), ("check", "H")))
ARP = Header("arp", (("htype", "H"), ("ptype", "H"), ("hlen", "B"), ("plen", "B"),
                     ("oper", "H"), ("sha", "6s"), ("spa", "4s"), ("tha", "6s"), ("tpa", "4s")))

ETH_LEN = ETHERNET.struct.size          # 14
VLAN_LEN = VLAN.struct.size             # 4
IPV4_MIN = IPV4.struct.size             # 20
IPV6_LEN = IPV6.struct.size             # 40
TCP_MIN = TCP.struct.size               # 20
UDP_LEN = UDP.struct.size               # 8
ARP_LEN = ARP.struct.size               # 28

# Precompiled pieces the hot path uses (named after the fields they read).
_ETH_TYPE = struct.Struct("!H")
_ETH_TYPE_AT = ETHERNET.offset("type")
_VLAN_TYPE_AT = VLAN.offset("type")
_V4_HEAD = struct.Struct("!BxHxxHxB")   # ver_ihl, tot_len, frag_off, proto
assert _V4_HEAD.size == IPV4.offset("check")
_V4_ADDRS_AT = IPV4.offset("saddr")
_V6_HEAD = struct.Struct("!xxxxHB")     # payload_len, nexthdr
_V6_ADDRS_AT = IPV6.offset("saddr")
_TCP_DOFF = struct.Struct("!H")
_TCP_DOFF_AT = TCP.offset("doff_flags")
_TCP_SEGMENT = struct.Struct("!4xIIHH")    # seq, ack_seq, doff_flags, window
assert _TCP_SEGMENT.size == TCP.offset("check")
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_WINDOW = 0, 1, 3
_UDP_LEN = struct.Struct("!H")
_UDP_LEN_AT = UDP.offset("len")
_IP_MF_OFFSET = 0x3FFF                  # more-fragments flag | fragment offset

# The common case in one unpack: Ethernet type + the IPv4 fields parse() needs + both
# addresses (type, ver_ihl, tot_len, frag_off, proto, saddr+daddr), then the transport
# ports with the field that bounds the header (TCP data offset byte, UDP length).
_ETH_V4 = struct.Struct("!12xHBxHxxHxBxx8s")
assert _ETH_V4.size == ETH_LEN + IPV4.offset("daddr") + 4
_TCP_PORTS_DOFF = struct.Struct("!4s8xB")
_UDP_PORTS_LEN = struct.Struct("!4sH")


def parse(buf: Buffer, start: int, end: int) -> Optional[Parsed]:
    """Parse the frame ``buf[start:end]``; None when malformed (see module doc)."""
    if end - start >= 34:                   # fast path: untagged IPv4, TCP or UDP
        ethertype, ver_ihl, tot_len, frag, proto, addrs = _ETH_V4.unpack_from(buf, start)
        if ethertype == ETH_P_IP and ver_ihl == 0x45 and not frag & _IP_MF_OFFSET:
            l4 = start + 34
            l4_end = start + ETH_LEN + tot_len
            if tot_len >= IPV4_MIN and l4_end <= end:
                if proto == IPPROTO_TCP:
                    if l4_end - l4 >= TCP_MIN:
                        ports, doff = _TCP_PORTS_DOFF.unpack_from(buf, l4)
                        doff = (doff >> 4) << 2
                        if doff >= TCP_MIN and l4 + doff <= l4_end:
                            return (ethertype, (proto, addrs, ports), l4, l4_end)
                    return None
                if proto == IPPROTO_UDP:
                    if l4_end - l4 >= UDP_LEN:
                        ports, ulen = _UDP_PORTS_LEN.unpack_from(buf, l4)
                        if ulen >= UDP_LEN and l4 + ulen <= l4_end:
                            return (ethertype, (proto, addrs, ports), l4, l4_end)
                    return None
    elif end - start < ETH_LEN:
        return None
    ethertype = _ETH_TYPE.unpack_from(buf, start + _ETH_TYPE_AT)[0]
    l3 = start + ETH_LEN
    etype = ethertype
    while etype == ETH_P_8021Q or etype == ETH_P_8021AD:
        if end - l3 < VLAN_LEN:
            return None
        etype = _ETH_TYPE.unpack_from(buf, l3 + _VLAN_TYPE_AT)[0]
        l3 += VLAN_LEN
    if etype == ETH_P_IP:
        if end - l3 < IPV4_MIN:
            return None
        ver_ihl, tot_len, frag, proto = _V4_HEAD.unpack_from(buf, l3)
        hlen = (ver_ihl & 15) << 2
        if ver_ihl >> 4 != 4 or hlen < IPV4_MIN or tot_len < hlen or l3 + tot_len > end:
            return None
        l4 = l3 + hlen
        l4_end = l3 + tot_len
        if frag & _IP_MF_OFFSET:
            return (ethertype, None, l4, l4_end)   # fragments: no ports to key on
        addrs = bytes(buf[l3 + _V4_ADDRS_AT:l3 + _V4_ADDRS_AT + 8])
    elif etype == ETH_P_IPV6:
        if end - l3 < IPV6_LEN:
            return None
        payload_len, proto = _V6_HEAD.unpack_from(buf, l3)
        if buf[l3] >> 4 != 6:
            return None
        l4 = l3 + IPV6_LEN
        l4_end = l4 + payload_len
        if l4_end > end:
            return None
        addrs = bytes(buf[l3 + _V6_ADDRS_AT:l3 + _V6_ADDRS_AT + 32])
    elif etype == ETH_P_ARP:
        return (ethertype, None, 0, 0) if end - l3 >= ARP_LEN else None
    else:
        return (ethertype, None, 0, 0)
    if proto == IPPROTO_TCP:
        if l4_end - l4 < TCP_MIN:
            return None
        doff = (_TCP_DOFF.unpack_from(buf, l4 + _TCP_DOFF_AT)[0] >> 12) << 2
        if doff < TCP_MIN or l4 + doff > l4_end:
            return None
    elif proto == IPPROTO_UDP:
        if l4_end - l4 < UDP_LEN:
            return None
        ulen = _UDP_LEN.unpack_from(buf, l4 + _UDP_LEN_AT)[0]
        if ulen < UDP_LEN or l4 + ulen > l4_end:
            return None
    else:
        return (ethertype, None, l4, l4_end)
    return (ethertype, (proto, addrs, bytes(buf[l4:l4 + 4])), l4, l4_end)


def ipv4_proto(buf: Buffer, start: int, end: int) -> int:
    """The protocol of an untagged IPv4 frame :func:`parse` accepted; 0 for a fragment or
    any other frame (the kernel's protocol handlers see a datagram once reassembled)."""
    if end - start < ETH_LEN + IPV4_MIN or _ETH_TYPE.unpack_from(buf, start + _ETH_TYPE_AT)[0] != ETH_P_IP:
        return 0
    _, _, frag, proto = _V4_HEAD.unpack_from(buf, start + ETH_LEN)
    return 0 if frag & _IP_MF_OFFSET else proto


def tcp_segment(buf: Buffer, l4: int, l4_end: int) -> tuple[int, int, int, int, int]:
    """(seq, ack_seq, flags, window, payload length) of a TCP header :func:`parse` accepted."""
    seq, ack, doff_flags, window = _TCP_SEGMENT.unpack_from(buf, l4)
    return seq, ack, doff_flags & 0x3F, window, l4_end - l4 - ((doff_flags >> 12) << 2)


def tcp_wscale(buf: Buffer, l4: int) -> Optional[int]:
    """The window-scale option's shift in a SYN's options, or None (slow path: SYNs only)."""
    end = l4 + ((buf[l4 + 12] >> 4) << 2)
    i = l4 + TCP_MIN
    while i < end:
        kind = buf[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2:        # truncated or a zero length: stop
            break
        if kind == TCPOPT_WINDOW and buf[i + 1] == 3 and i + 2 < end:
            return min(buf[i + 2], 14)            # RFC 7323: larger shifts are read as 14
        i += buf[i + 1]
    return None


def udp_payload_len(buf: Buffer, l4: int) -> int:
    """Payload length of a UDP header that :func:`parse` accepted."""
    return _UDP_LEN.unpack_from(buf, l4 + _UDP_LEN_AT)[0] - UDP_LEN


def explain(frame: Buffer) -> str:
    """Slow path: why :func:`parse` rejects ``frame`` ('' if it does not)."""
    end = len(frame)
    if end < ETH_LEN:
        return f"ethernet: {end} bytes, shorter than the {ETH_LEN}-byte header"
    eth = ETHERNET.unpack(frame)
    etype, l3 = eth["type"], ETH_LEN
    while etype in (ETH_P_8021Q, ETH_P_8021AD):
        if end - l3 < VLAN_LEN:
            return f"802.1q: tag truncated at byte {l3}"
        etype = VLAN.unpack(frame, l3)["type"]
        l3 += VLAN_LEN
    if etype == ETH_P_IP:
        if end - l3 < IPV4_MIN:
            return f"ipv4: header truncated ({end - l3} of {IPV4_MIN} bytes)"
        ip = IPV4.unpack(frame, l3)
        hlen = (ip["ver_ihl"] & 15) * 4
        if ip["ver_ihl"] >> 4 != 4:
            return f"ipv4: version {ip['ver_ihl'] >> 4}"
        if hlen < IPV4_MIN:
            return f"ipv4: ihl {hlen // 4} < 5"
        if ip["tot_len"] < hlen:
            return f"ipv4: tot_len {ip['tot_len']} < header length {hlen}"
        if l3 + ip["tot_len"] > end:
            return f"ipv4: tot_len {ip['tot_len']} beyond the frame ({end - l3} bytes)"
        if ip["frag_off"] & _IP_MF_OFFSET:
            return ""       # a fragment: its transport header is checked after reassembly
        proto, l4, l4_end = ip["proto"], l3 + hlen, l3 + ip["tot_len"]
    elif etype == ETH_P_IPV6:
        if end - l3 < IPV6_LEN:
            return f"ipv6: header truncated ({end - l3} of {IPV6_LEN} bytes)"
        ip6 = IPV6.unpack(frame, l3)
        if ip6["ver_tc_flow"] >> 28 != 6:
            return f"ipv6: version {ip6['ver_tc_flow'] >> 28}"
        proto, l4 = ip6["nexthdr"], l3 + IPV6_LEN
        l4_end = l4 + ip6["payload_len"]
        if l4_end > end:
            return f"ipv6: payload_len {ip6['payload_len']} beyond the frame"
    elif etype == ETH_P_ARP:
        return "" if end - l3 >= ARP_LEN else f"arp: {end - l3} of {ARP_LEN} bytes"
    else:
        return ""
    if proto == IPPROTO_TCP:
        if l4_end - l4 < TCP_MIN:
            return f"tcp: header truncated ({l4_end - l4} of {TCP_MIN} bytes)"
        doff = (TCP.unpack(frame, l4)["doff_flags"] >> 12) * 4
        if doff < TCP_MIN or l4 + doff > l4_end:
            return f"tcp: data offset {doff} bytes outside 20..{l4_end - l4}"
    elif proto == IPPROTO_UDP:
        if l4_end - l4 < UDP_LEN:
            return f"udp: header truncated ({l4_end - l4} of {UDP_LEN} bytes)"
        ulen = UDP.unpack(frame, l4)["len"]
        if ulen < UDP_LEN or l4 + ulen > l4_end:
            return f"udp: len {ulen} outside 8..{l4_end - l4}"
    return ""
