#!/usr/bin/env python3
"""Benchmark: iperf3 through the packet handler next to the plain forwarder, one run.

Two namespaces joined by a veth (offloads off, as the backend sets them). In turn:

- *direct*: the client's address on its wire, no user-space hop (RTT reference);
- *plain*: :class:`PlainForwarder`, the handler's own I/O (TAP, rx ring, one thread)
  with nothing else: no parse, no flow lookup, no memory manager, no counters;
- *handler*: :class:`PacketHandler` with the real memory manager (``gorman-3.6``,
  1 GiB, no pressure): an skb allocated and freed per frame, parse, classification,
  the protocol step, counters.

For each: iperf3 TCP throughput into the client (``-R``: the receive path carries the
data, the transmit path the ACKs) and out of it, and the ICMP round-trip time (p50 of
200 pings). Rounds alternate plain and handler so that drift hits both; the median of
the rounds is printed, with the ratio handler/plain and the RTT each adds over direct.
``--bursts 1,8,32,64`` repeats both for each burst size: the frames the I/O thread takes
from one end (rx ring slots, TAP reads) before serving the other, the same for both.
Throughput on a shared 2-core machine swings with its load, so the CPU time the
forwarding thread spends per frame (user + system, from /proc, frames from the wire's
counters) is printed too: it moves much less, and its user part is the Python cost.

``--sendmmsg`` adds the transmit batching that was tried and not kept: one ``send`` per
frame against ``sendmmsg`` (through ctypes) per batch on the client's packet socket,
1514-byte frames to the peer (an EtherType nobody handles), in us per frame.

Usage: ``bench/bench_netdev.py [--seconds 4] [--rounds 2] [--bursts 1,8,32,64]
[--sendmmsg]`` (root).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import socket
import os
import statistics
import sys
import threading
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from testbed.mm import MemoryManager  # noqa: E402
from testbed.netdev import PacketHandler, netns  # noqa: E402
from testbed.netdev.handler import BURST  # noqa: E402
from tests.support import pinger as probe  # noqa: E402
from tests.support.forwarder import PlainForwarder  # noqa: E402
from tests.support.vethnet import VethNet  # noqa: E402

PORT = 5201
DEFAULT_BURSTS = f"1,8,32,{BURST}"     # make bench: the cost by burst size (issue 17)


def thread_cpu(prefix: str) -> tuple[float, float]:
    """(user + system, user) seconds of our thread whose name starts with ``prefix``."""
    tid = next(t.native_id for t in threading.enumerate() if t.name.startswith(prefix))
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck, int(fields[11]) / tck


def wire_frames(topo: VethNet) -> int:
    link = json.loads(topo.exec("client", "ip", "-j", "-s", "link", "show", "client-eth0"))[0]
    return link["stats64"]["rx"]["packets"] + link["stats64"]["tx"]["packets"]


def iperf(topo: VethNet, seconds: float, reverse: bool) -> float:
    srv = topo.popen("peer", "iperf3", "-s", "-1", "-p", str(PORT))
    try:
        time.sleep(0.3)
        out = topo.exec("client", "iperf3", "-c", topo.ip["peer"], "-p", str(PORT),
                        "-t", f"{seconds:g}", "-J", *(["-R"] if reverse else []),
                        timeout=seconds + 20)
        srv.wait(10)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait(5)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def rtt_p50(topo: VethNet) -> float:
    probe.ping(topo.ns["client"], topo.ip["peer"], 5, 0.002)          # ARP, caches
    return probe.p50(probe.ping(topo.ns["client"], topo.ip["peer"], 200, 0.002)) * 1e3


def measure(topo: VethNet, seconds: float, thread: str) -> dict:
    out = {}
    for d, reverse in (("rx", True), ("tx", False)):
        c0, f0 = thread_cpu(thread), wire_frames(topo)
        out[d] = iperf(topo, seconds, reverse)
        c1, frames = thread_cpu(thread), wire_frames(topo) - f0
        out[d + "_cpu"] = (c1[0] - c0[0]) / frames * 1e6
        out[d + "_user"] = (c1[1] - c0[1]) / frames * 1e6
    out["rtt"] = rtt_p50(topo)
    return out


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


def send_batching(topo: VethNet, frames_per_run: int = 51200, repeat: int = 3) -> None:
    """Print us per frame: ``send`` per frame against ``sendmmsg`` per batch of 8/32/64."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    sendmmsg = libc.sendmmsg
    sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int]
    link = json.loads(topo.exec("peer", "ip", "-j", "link", "show", "peer-eth0"))[0]
    pmac = bytes.fromhex(link["address"].replace(":", ""))
    with netns.enter(topo.ns["client"]):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind(("client-eth0", 0))
        frames = [pmac + bytes(6) + b"\x88\xb5" + bytes([i]) * 1500 for i in range(64)]
        print(f"transmit batching (sendmmsg via ctypes), us per frame, {repeat} runs of "
              f"{frames_per_run} frames:")
        for _ in range(repeat):
            send, t0 = sock.send, time.perf_counter()
            for i in range(frames_per_run):
                send(frames[i & 63])
            row = [f"send {(time.perf_counter() - t0) / frames_per_run * 1e6:.2f}"]
            for b in (8, 32, 64):
                iov, msgs = (IoVec * b)(), (MMsgHdr * b)()
                for j in range(b):
                    msgs[j].msg_hdr.msg_iov = ctypes.pointer(iov[j])
                    msgs[j].msg_hdr.msg_iovlen = 1
                fd, t0 = sock.fileno(), time.perf_counter()
                for _ in range(frames_per_run // b):
                    for j, data in enumerate(frames[:b]):   # point an iovec at each frame
                        iov[j].iov_base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
                        iov[j].iov_len = len(data)
                    if sendmmsg(fd, msgs, b, 0) != b:
                        raise OSError(ctypes.get_errno(), "sendmmsg sent less than its batch")
                row.append(f"sendmmsg/{b} {(time.perf_counter() - t0) / frames_per_run * 1e6:.2f}")
            print("  " + ", ".join(row))
    finally:
        sock.close()


def parse_bursts(text: str) -> list[int]:
    """``--bursts 1,8,32,64``: the burst sizes to measure, each a whole number >= 1."""
    try:
        bursts = [int(b) for b in text.split(",")]
    except ValueError:
        raise SystemExit(f"bench_netdev: --bursts {text!r}: not a comma-separated list of numbers")
    if not bursts or min(bursts) < 1:
        raise SystemExit(f"bench_netdev: --bursts {text!r}: every burst must be >= 1")
    return bursts


def one_round(topo: VethNet, seconds: float, burst: int, runs: dict, last: dict) -> None:
    """Plain forwarder, then the handler, both taking ``burst`` frames per end and turn."""
    with PlainForwarder("client-eth0", "tap0", run_id=topo.run, netns=topo.ns["client"],
                        burst=burst):
        runs["plain", burst].append(measure(topo, seconds, "plain-forwarder"))
    mm = MemoryManager(262144, policy="gorman-3.6")
    with PacketHandler(mm, "client-eth0", "tap0", run_id=topo.run, netns=topo.ns["client"],
                       burst=burst) as h:
        runs["handler", burst].append(measure(topo, seconds, "netdev-io"))
        last["counters"] = h.counters()
    assert mm.check_invariants() == [], mm.check_invariants()


def report(args: argparse.Namespace, bursts: list[int], direct: float, runs: dict,
           counters: Optional[dict]) -> None:
    keys = ("rx", "tx", "rtt", "rx_cpu", "rx_user", "tx_cpu", "tx_user")
    med = {k: {m: statistics.median(r[m] for r in v) for m in keys} for k, v in runs.items()}
    print(f"bench_netdev: iperf3 TCP through the client's user-space NIC, {args.rounds} "
          f"rounds x {args.seconds:g} s, median; RTT p50 direct {direct:.3f} ms")
    print(f"{'burst':>5s} {'':8s} {'rx Mbit/s':>10s} {'tx Mbit/s':>10s} {'added RTT ms':>13s}"
          f" {'rx us/frame':>12s} {'(user)':>7s} {'tx us/frame':>12s} {'(user)':>7s}")
    for b in bursts:
        for k in ("plain", "handler"):
            m = med[k, b]
            print(f"{b:5d} {k:8s} {m['rx']:10.0f} {m['tx']:10.0f} {m['rtt'] - direct:13.3f}"
                  f" {m['rx_cpu']:12.2f} {m['rx_user']:7.2f} {m['tx_cpu']:12.2f} {m['tx_user']:7.2f}")
        p, h = med["plain", b], med["handler", b]
        print(f"{b:5d} {'ratio':8s} {h['rx'] / p['rx']:10.2f} {h['tx'] / p['tx']:10.2f}"
              f" {'':13s} {p['rx_cpu'] / h['rx_cpu']:12.2f} {'':7s} {p['tx_cpu'] / h['tx_cpu']:12.2f}")
    print("ratio = handler / plain for Mbit/s, plain / handler for CPU per frame (higher is "
          "better for the handler); us/frame: the forwarding thread's user + system CPU")
    if counters is not None:
        rx, tx = counters["rx"], counters["tx"]
        print(f"handler counters (last run): rx {rx['received']['frames']} frames, "
              f"{rx['dropped']['frames']} dropped, {rx['missed']} missed by the ring; "
              f"tx {tx['received']['frames']} frames, {tx['dropped']['frames']} dropped")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sendmmsg", action="store_true",
                    help="also time send per frame against sendmmsg per batch")
    ap.add_argument("--bursts", default=DEFAULT_BURSTS,
                    help="comma-separated burst sizes (frames per end and turn), e.g. 1,8,32,64")
    args = ap.parse_args()
    bursts = parse_bursts(args.bursts)
    if os.geteuid() != 0:
        print("bench_netdev: needs root (namespaces); skipped")
        return 0
    topo = VethNet(["peer"])
    runs: dict[tuple[str, int], list[dict]] = {(k, b): [] for b in bursts for k in ("plain", "handler")}
    last: dict = {}
    try:
        direct = rtt_p50(topo)
        for _ in range(args.rounds):
            for b in bursts:
                one_round(topo, args.seconds, b, runs, last)
        report(args, bursts, direct, runs, last.get("counters"))
        if args.sendmmsg:
            send_batching(topo)
    finally:
        topo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
