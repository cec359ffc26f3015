#!/usr/bin/env python3
"""Benchmark: the packet handler's per-frame steps, one by one, on recorded frames.

No wire and no root: the frames are built once with scapy (a 1514-byte TCP data
segment of a registered flow, its 66-byte ACK, a UDP datagram of no flow) and each step
of the receive path runs on them in a loop, the way the I/O thread calls it:

- ``parse``: :func:`testbed.netdev.headers.parse` (the one-unpack IPv4 fast path);
- ``flow lookup``: ``FlowRegistry.lookup_inbound``, a hit and a miss. The registry
  keeps each flow under its raw 5-tuple in both orientations, so a lookup is already
  one dict probe on the key the parse returns; ``5-tuple cache + lookup`` times a
  small dict in front of it (the issue's proposal) for comparison;
- ``skb alloc + free``: ``MemoryManager.netdev_alloc_skb`` then ``kfree_skb`` (two lock
  round trips), against the consumed list (the free handed to the next allocation:
  one), on ``gorman-3.6`` with plenty of memory;
- ``sk_filter``: the policy's protocol step;
- ``ip_proto``: the IPv4 protocol of a frame of no flow (``skb.ip_proto``, for
  phillips-2005's ICMP rule), read again with ``headers.ipv4_proto`` against taken from
  the key the parse already made (what the handler does for TCP and UDP).

Each figure is the median of ``--repeat`` loops of ``--frames`` frames, in us per frame.
Usage: ``bench/bench_parse.py [--frames 100000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from testbed.mm import MemoryManager  # noqa: E402
from testbed.netdev import FlowKey, headers  # noqa: E402
from testbed.netdev.device import VNET_HDR_LEN  # noqa: E402
from testbed.netdev.flows import FlowRegistry  # noqa: E402

CLIENT, TARGET = "10.0.0.1", "10.0.0.2"


def recorded_frames() -> dict[str, bytes]:
    """The frames, each behind the virtio header the rx ring hands over."""
    eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    vh = bytes(VNET_HDR_LEN)
    return {
        "tcp data 1514": vh + bytes(eth / IP(src=TARGET, dst=CLIENT)
                                    / TCP(sport=3260, dport=40000, flags="A") / Raw(bytes(1460))),
        "tcp ack 66": vh + bytes(eth / IP(src=TARGET, dst=CLIENT)
                                 / TCP(sport=3260, dport=40000, flags="A", options=[("NOP", None)] * 12)),
        "udp 142": vh + bytes(eth / IP(src=TARGET, dst=CLIENT) / UDP(sport=4000, dport=5000)
                              / Raw(bytes(100))),
    }


def per_frame(loop: Callable[[int], None], frames: int, repeat: int) -> float:
    """us per frame: the median over ``repeat`` runs of ``loop(frames)``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        loop(frames)
        times.append((time.perf_counter() - t0) / frames * 1e6)
    return statistics.median(times)


def parse_loop(frame: bytes) -> Callable[[int], None]:
    parse, end = headers.parse, len(frame)

    def loop(n: int) -> None:
        for _ in range(n):
            parse(frame, VNET_HDR_LEN, end)
    return loop


def ip_proto_loops(frame: bytes) -> dict[str, Callable[[int], None]]:
    end = len(frame)
    info = headers.parse(frame, VNET_HDR_LEN, end)
    ipv4_proto = headers.ipv4_proto

    def reread(n: int) -> None:
        for _ in range(n):
            ipv4_proto(frame, VNET_HDR_LEN, end)

    def from_key(n: int) -> None:
        proto = 0
        for _ in range(n):
            key = info[1]
            proto = key[0] if key is not None else ipv4_proto(frame, VNET_HDR_LEN, end)
        assert proto == headers.IPPROTO_TCP
    assert info[1][0] == ipv4_proto(frame, VNET_HDR_LEN, end)
    return {"ip_proto: ipv4_proto() again": reread, "ip_proto: from the parse key": from_key}


def lookup_loops(frame: bytes) -> dict[str, Callable[[int], None]]:
    mm = MemoryManager(16384, policy="gorman-3.6")
    flows = FlowRegistry()
    flows.register(FlowKey("tcp", CLIENT, 40000, TARGET, 3260), mm.sock_create("iscsi"))
    # Each frame's parse makes a new key tuple, equal to the stored one but not the same
    # object (a dict then compares it field by field): 256 such keys, used in turn.
    keys = [headers.parse(frame, VNET_HDR_LEN, len(frame))[1] for _ in range(256)]
    key = keys[0]
    misses = [(k[0], k[1], bytes([0, 1, 0, 2])) for k in keys]
    lookup = flows.lookup_inbound
    cache: dict[tuple, object] = {}

    # Every loop reads its callables and key from locals, as the I/O loop does, so
    # that the rows differ by the dict probes only.
    def hit(n: int) -> None:
        get, ks = lookup, keys
        for i in range(n):
            get(ks[i & 255])

    def missed(n: int) -> None:
        get, ks = lookup, misses
        for i in range(n):
            get(ks[i & 255])

    def cached(n: int) -> None:
        get, slow, ks = cache.get, lookup, keys
        for i in range(n):
            k = ks[i & 255]
            flow = get(k)
            if flow is None:
                flow = cache[k] = slow(k)
    assert lookup(key) is not None and lookup(misses[0]) is None
    return {"flow lookup (hit)": hit, "flow lookup (miss)": missed,
            "5-tuple cache + lookup (hit)": cached}


def skb_loops() -> dict[str, Callable[[int], None]]:
    mm = MemoryManager(262144, policy="gorman-3.6")
    dev = mm.register_netdev("bench0", 1500)
    alloc, kfree, sk_filter = mm.netdev_alloc_skb, mm.kfree_skb, mm.sk_filter

    def one_at_a_time(n: int) -> None:
        for _ in range(n):
            kfree(alloc(dev, 1514))

    def consumed(n: int) -> None:
        done: list = []
        put = done.append
        for _ in range(n):
            put(alloc(dev, 1514, done))
        mm.kfree_skb_list(done)

    skb = alloc(dev, 1514)

    def protocol_step(n: int) -> None:
        for _ in range(n):
            sk_filter(skb, None, headers.ETH_P_IP)
    return {"skb alloc + free (2 locks)": one_at_a_time,
            "skb alloc + free (consumed list, 1 lock)": consumed,
            "sk_filter (gorman-3.6)": protocol_step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.frames < 1 or args.repeat < 1:
        ap.error("--frames and --repeat must be >= 1")
    frames = recorded_frames()
    rows = [(f"parse, {name}", parse_loop(fr)) for name, fr in frames.items()]
    rows += list(lookup_loops(frames["tcp data 1514"]).items())
    rows += list(skb_loops().items())
    rows += list(ip_proto_loops(frames["tcp data 1514"]).items())
    print(f"bench_parse: the receive path's steps, us per frame (median of {args.repeat} x "
          f"{args.frames} frames)")
    for name, loop in rows:
        print(f"  {name:42s} {per_frame(loop, args.frames, args.repeat):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
