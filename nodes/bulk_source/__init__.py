"""Bulk sources: the traffic that competes with storage for the client's buffers.

Runs in each bulk host::

    python -m nodes.bulk_source --mode tcp  [--port 5001] [--rate-mbit R]
    python -m nodes.bulk_source --mode http [--port 8080] [--rate-mbit R]
    python -m nodes.bulk_source --mode udp  --dest IP:PORT [--rate-mbit R] [--size 1400]
    python -m nodes.bulk_source --mode spoof --dest IP:PORT --spoof-src IP:PORT [--rate-mbit R]
        common: [--bind ADDR] [--stats FILE.ndjson] [--interval 1.0] [--duration S]

- ``tcp``: every client that connects gets an endless stream of generated data until
  it disconnects (a long-lived download).
- ``http``: ``GET /stream`` streams forever (close-delimited), ``GET /bytes/<n>``
  returns n bytes with a Content-Length (a finite download); anything else is
  answered 400/404/405 with a one-line reason.
- ``udp``: an unsolicited flood of ``--size``-byte datagrams to ``--dest``: nobody
  asked for it, which is the point (traffic a receiver must still allocate for).
- ``spoof``: forged TCP segments claiming another host's flow (``--spoof-src`` ->
  ``--dest``), e.g. the storage client's iSCSI connection: what can a SOCK_MEMALLOC
  filter do against traffic that looks like the flow it protects?

``--rate-mbit`` is per flow, in payload megabits per second; 0 means as fast as the
link allows. The :class:`Pacer` schedules each write at the time the bytes sent so far
are due, so the long-run rate is exact; a lag of up to 0.2 s (a CPU stall) is made up,
a longer one (a slow receiver, an idle flow) restarts the schedule instead of bursting.
The payload is one pre-built 64 KiB buffer, sent as memoryview slices: generating data
costs nothing per byte.

NDJSON to ``--stats``: a ``ready`` line once the source listens (or starts sending),
the readiness signal :mod:`testbed.launch` waits for; then every ``--interval`` seconds
``t``, ``bytes_sent`` (total), ``connections`` (open now), ``accepted`` and per-flow
figures, and a final ``stop`` line after SIGTERM/SIGINT or ``--duration``. A TCP flow's
figures include its socket's retransmission counts from ``TCP_INFO`` (:func:`tcp_info`):
``retrans`` segments retransmitted, ``rto`` retransmission timeouts and ``rto_ms`` time
spent recovering from them (None on kernels before 6.7, which do not count timeouts) --
how long the download's user waited because frames were lost.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Optional

from testbed.launch import BULK_PORTS

CHUNK = 64 * 1024
PAYLOAD = memoryview(bytes(range(256)) * (CHUNK // 256))
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0
POLL = 0.2             # how often blocked loops look at the stop flag
SPOOF_SEGMENTS = 256   # forged segments built ahead, sent in turn

# struct tcp_info (include/uapi/linux/tcp.h): byte offsets of the fields read here
TCPI_TOTAL_RETRANS = 100   # __u32, since the first tcp_info
TCPI_TOTAL_RTO = 240       # __u16 tcpi_total_rto, __u16 recoveries, __u32 rto_time (ms): 6.7
TCP_INFO_LEN = 248


def tcp_info(sock: socket.socket) -> Optional[dict[str, Optional[int]]]:
    """The retransmission figures of a TCP socket, or None when it has none (closed)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < TCPI_TOTAL_RETRANS + 4:
        return None
    (retrans,) = struct.unpack_from("=I", raw, TCPI_TOTAL_RETRANS)
    rto = rto_ms = None
    if len(raw) >= TCP_INFO_LEN:       # the kernel filled the RTO fields
        rto, _, rto_ms = struct.unpack_from("=HHI", raw, TCPI_TOTAL_RTO)
    return {"retrans": retrans, "rto": rto, "rto_ms": rto_ms}


class Pacer:
    """Releases bytes at ``rate_mbit`` (0 = unpaced), never more than a short burst ahead."""

    MAX_LAG = 0.2      # seconds of lag after which the schedule restarts (no catch-up burst)

    def __init__(self, rate_mbit: float, clock: Callable[[], float] = time.monotonic):
        self.bytes_per_s = rate_mbit * 1e6 / 8
        self.clock = clock
        self.base = clock()
        self.sent = 0

    def chunk(self, limit: int = CHUNK) -> int:
        """Size of the next write: about 10 ms of data at the rate, within 1 KiB..limit."""
        if not self.bytes_per_s:
            return limit
        return max(1024, min(limit, int(self.bytes_per_s / 100)))

    def delay(self, nbytes: int) -> float:
        """Seconds to wait before ``nbytes`` more may go (and account for them)."""
        if not self.bytes_per_s:
            return 0.0
        now = self.clock()
        due = self.base + self.sent / self.bytes_per_s
        if now - due > self.MAX_LAG:           # we fell behind: restart the schedule
            self.base, self.sent, due = now, 0, now
        self.sent += nbytes
        return max(0.0, due - now)


@dataclass
class Flow:
    """One connection (tcp, http) or the flood (udp)."""

    id: int
    peer: str
    bytes_sent: int = 0
    datagrams: int = 0
    errors: int = 0
    open: bool = True
    last_bytes: int = 0      # at the previous report, for the per-interval rate
    sock: Optional[socket.socket] = None            # a TCP flow's, for its TCP_INFO
    tcp: Optional[dict[str, Optional[int]]] = None  # its figures when last read

    def read_tcp(self) -> None:
        """Refresh :attr:`tcp` from the socket (kept as it was once the socket closed)."""
        if self.sock is not None:
            self.tcp = tcp_info(self.sock) or self.tcp


@dataclass
class Counters:
    """Flows by id; closed flows are reported once more, then folded into closed_bytes."""

    flows: dict[int, Flow] = field(default_factory=dict)
    accepted: int = 0
    closed_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_flow(self, peer: str) -> Flow:
        with self.lock:
            self.accepted += 1
            flow = Flow(self.accepted, peer)
            self.flows[flow.id] = flow
            return flow

    def snapshot(self, interval: float) -> dict[str, object]:
        """Totals and per-flow figures since the previous snapshot."""
        with self.lock:
            report = []
            for f in list(self.flows.values()):
                sent = f.bytes_sent
                item = {"id": f.id, "peer": f.peer, "bytes_sent": sent,
                        "mbit_s": round((sent - f.last_bytes) * 8 / interval / 1e6, 3)}
                if f.datagrams or f.errors:
                    item.update(datagrams=f.datagrams, errors=f.errors)
                if f.open:
                    f.read_tcp()
                if f.tcp is not None:
                    item.update(f.tcp)
                report.append(item)
                f.last_bytes = sent
                if not f.open:
                    self.closed_bytes += sent
                    del self.flows[f.id]
            open_bytes = sum(f.bytes_sent for f in self.flows.values())
            return {"bytes_sent": self.closed_bytes + open_bytes,
                    "connections": len(self.flows), "accepted": self.accepted,
                    "flows": report}


class Stop:
    """Set by SIGTERM/SIGINT or the duration; every loop polls it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: Optional[int] = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal = signum
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


# -- sending --------------------------------------------------------------------------


def stream(sock: socket.socket, flow: Flow, pacer: Pacer, stop: Stop,
           total: Optional[int] = None) -> None:
    """Send generated data (``total`` bytes, or until the peer leaves or we stop)."""
    sock.settimeout(POLL)
    left = total
    while not stop.is_set() and (left is None or left > 0):
        n = pacer.chunk() if left is None else min(pacer.chunk(), left)
        wait = pacer.delay(n)
        if wait and stop.event.wait(wait):
            return
        view = PAYLOAD[:n]
        while view and not stop.is_set():
            try:
                sent = sock.send(view)
            except socket.timeout:
                continue
            except OSError:
                return                   # the peer went away
            view = view[sent:]
            flow.bytes_sent += sent
            if left is not None:
                left -= sent


def serve_tcp(conn: socket.socket, flow: Flow, args: argparse.Namespace, stop: Stop) -> None:
    stream(conn, flow, Pacer(args.rate_mbit), stop)


def serve_http(conn: socket.socket, flow: Flow, args: argparse.Namespace, stop: Stop) -> None:
    try:
        method, path = read_request(conn)
    except ValueError as exc:
        respond(conn, 400, str(exc))
        return
    if method != "GET":
        respond(conn, 405, f"method {method} not allowed: use GET")
        return
    if path == "/stream":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Connection: close\r\n\r\n")
        stream(conn, flow, Pacer(args.rate_mbit), stop)
    elif m := re.fullmatch(r"/bytes/(\d{1,15})", path):
        n = int(m.group(1))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % n)
        stream(conn, flow, Pacer(args.rate_mbit), stop, total=n)
    else:
        respond(conn, 404, f"no resource {path}: try /stream or /bytes/<n>")


def read_request(conn: socket.socket) -> tuple[str, str]:
    """Method and path of an HTTP/1.x request; ValueError names what is wrong."""
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        try:
            chunk = conn.recv(1024)
        except socket.timeout:
            raise ValueError(f"request header not complete after {REQUEST_TIMEOUT:g}s") from None
        if not chunk:
            raise ValueError("connection closed before the request header ended")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"request header longer than {MAX_REQUEST} bytes")
    line = data.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    m = re.fullmatch(r"([A-Z]+) (\S+) HTTP/1\.[01]", line)
    if not m:
        raise ValueError(f"malformed request line {line[:80]!r}")
    return m.group(1), m.group(2)


def respond(conn: socket.socket, status: int, reason: str) -> None:
    phrase = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    body = (reason + "\n").encode()
    try:
        conn.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
    except OSError:
        pass


def listen(args: argparse.Namespace, counters: Counters, stop: Stop,
           handler: Callable[..., None]) -> Callable[[], None]:
    """Accept connections in a thread, one thread per connection; returns a joiner."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(64)
    srv.settimeout(POLL)
    workers: list[threading.Thread] = []

    def handle(conn: socket.socket, flow: Flow) -> None:
        try:
            handler(conn, flow, args, stop)
        finally:
            flow.read_tcp()          # the final figures, before the socket goes
            flow.open = False
            conn.close()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except socket.timeout:
                continue
            flow = counters.new_flow(f"{peer[0]}:{peer[1]}")
            flow.sock = conn
            t = threading.Thread(target=handle, args=(conn, flow), daemon=True)
            workers.append(t)
            t.start()
        srv.close()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()

    def join() -> None:
        acceptor.join(timeout=2)
        for t in workers:
            t.join(timeout=2)
    return join


def udp_sender(args: argparse.Namespace) -> tuple[Callable[[], int], Callable[[], None]]:
    """``send()`` one datagram of ``--size`` bytes to ``--dest``; and ``close()``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.bind != "0.0.0.0":
        sock.bind((args.bind, 0))
    payload = PAYLOAD[:args.size]
    return (lambda: sock.sendto(payload, args.dest)), sock.close


def spoof_sender(args: argparse.Namespace) -> tuple[Callable[[], int], Callable[[], None]]:
    """``send()`` one forged TCP segment that claims the flow ``--spoof-src`` -> ``--dest``.

    The segments carry the real flow's addresses and ports but sequence numbers the
    real sender never used (the attacker cannot see the flow), with ACK|PSH set and
    ``--size`` bytes of payload. They are built once, with scapy, and sent in turn
    through a raw socket: forging costs nothing per segment.
    """
    from scapy.layers.inet import IP, TCP
    (src, sport), (dst, dport) = args.spoof_src, args.dest
    rng = random.Random(args.seed)
    segments = [bytes(IP(src=src, dst=dst, id=rng.getrandbits(16)) /
                      TCP(sport=sport, dport=dport, flags="PA", seq=rng.getrandbits(32),
                          ack=rng.getrandbits(32), window=502) / bytes(PAYLOAD[:args.size]))
                for _ in range(SPOOF_SEGMENTS)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    turn = iter(range(1 << 62))

    def send() -> int:
        sock.sendto(segments[next(turn) % SPOOF_SEGMENTS], (dst, 0))
        return args.size
    return send, sock.close


def flood(args: argparse.Namespace, counters: Counters, stop: Stop) -> Callable[[], None]:
    """Send unsolicited packets to ``--dest`` in a thread (udp, spoof); returns a joiner."""
    host, port = args.dest
    send, close = (spoof_sender if args.mode == "spoof" else udp_sender)(args)
    flow = counters.new_flow(f"{host}:{port}")

    def loop() -> None:
        pacer = Pacer(args.rate_mbit)
        try:
            while not stop.is_set():
                wait = pacer.delay(args.size)
                if wait and stop.event.wait(wait):
                    break
                try:
                    flow.bytes_sent += send()
                    flow.datagrams += 1
                except OSError:
                    flow.errors += 1     # e.g. ENOBUFS when the qdisc is full
        finally:
            flow.open = False
            close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return lambda: t.join(timeout=2)


# -- command line ---------------------------------------------------------------------


def _dest(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--dest {value!r} is not IP:PORT")
    return host, int(port)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nodes.bulk_source",
                                description="Bulk TCP/HTTP download servers and UDP floods.")
    p.add_argument("--mode", required=True, choices=("tcp", "http", "udp", "spoof"))
    p.add_argument("--port", type=int, help="listen port (default: "
                   + ", ".join(f"{mode} {port}" for mode, port in BULK_PORTS.items()) + ")")
    p.add_argument("--bind", default="0.0.0.0", help="local address")
    p.add_argument("--rate-mbit", type=float, default=0.0, help="per flow; 0 = link speed")
    p.add_argument("--dest", type=_dest, help="udp, spoof: IP:PORT to flood")
    p.add_argument("--spoof-src", type=_dest, help="spoof: IP:PORT the segments claim to be from")
    p.add_argument("--seed", type=int, default=1, help="spoof: seed of the forged numbers")
    p.add_argument("--size", type=int, default=1400, help="udp, spoof: payload bytes")
    p.add_argument("--stats", help="NDJSON file for counters")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between counters")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: never)")
    args = p.parse_args(argv)
    if args.rate_mbit < 0:
        p.error(f"--rate-mbit must be 0 or positive, got {args.rate_mbit:g}")
    if args.interval <= 0 or args.duration < 0:
        p.error("--interval must be positive and --duration 0 or positive")
    if args.mode in ("udp", "spoof"):
        if args.dest is None:
            p.error(f"--mode {args.mode} needs --dest IP:PORT")
        if args.mode == "spoof" and args.spoof_src is None:
            p.error("--mode spoof needs --spoof-src IP:PORT (the flow to claim)")
        most = 1400 if args.mode == "spoof" else 65507
        if not 1 <= args.size <= most:
            p.error(f"--size must be 1..{most} bytes, got {args.size}")
    else:
        args.port = args.port if args.port is not None else BULK_PORTS[args.mode]
        if not 0 < args.port < 65536:
            p.error(f"--port must be 1..65535, got {args.port}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    stop = Stop()
    counters = Counters()
    out: Optional[IO[str]] = open(args.stats, "a", buffering=1) if args.stats else None
    start = time.monotonic()

    def write(event: str, **fields: object) -> None:
        if out:
            out.write(json.dumps({"t": round(time.monotonic() - start, 3), "event": event,
                                  "mode": args.mode, **fields}) + "\n")
    try:
        if args.mode in ("udp", "spoof"):
            join = flood(args, counters, stop)
            write("ready", dest=f"{args.dest[0]}:{args.dest[1]}", rate_mbit=args.rate_mbit,
                  size=args.size)
        else:
            join = listen(args, counters, stop, serve_tcp if args.mode == "tcp" else serve_http)
            write("ready", port=args.port, rate_mbit=args.rate_mbit)
    except OSError as exc:
        print(f"bulk_source: error: {args.mode} on {args.bind}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    last = time.monotonic()
    while not stop.is_set():
        stop.event.wait(max(0.0, last + args.interval - time.monotonic()))
        if args.duration and time.monotonic() - start >= args.duration:
            stop.event.set()
        now = time.monotonic()
        if now - last >= args.interval or stop.is_set():
            write("stats", **counters.snapshot(max(1e-3, now - last)))
            last = now
    join()
    write("stop", signal=stop.signal, **counters.snapshot(max(1e-3, time.monotonic() - last)))
    if out:
        out.close()
    return 0
