"""nodes.bulk_source on loopback: rates, HTTP answers, UDP flood, clean stop with counters."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from nodes.bulk_source import Pacer
from testbed.launch import has_ready_event, wait_ready

NODE = [sys.executable, "-m", "nodes.bulk_source"]


def free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(args, tmp_path):
    stats = tmp_path / "bulk.ndjson"
    p = subprocess.Popen(NODE + args + ["--bind", "127.0.0.1", "--stats", str(stats),
                                        "--interval", "0.5"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_ready(p, "bulk_source", stats)
    return p, stats


def stop(p, stats):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0, p.stderr.read()
    lines = [json.loads(l) for l in stats.read_text().splitlines()]
    assert lines[0]["event"] == "ready" and lines[-1]["event"] == "stop"
    assert lines[-1]["signal"] == signal.SIGTERM
    return lines


def receive(sock, seconds):
    """Read from ``sock`` for ``seconds``; returns (bytes, elapsed from first byte)."""
    sock.settimeout(1)
    total, first, end = 0, None, time.monotonic() + seconds
    while time.monotonic() < end:
        data = sock.recv(1 << 16)
        if not data:
            break
        first = first or time.monotonic()
        total += len(data)
    return total, time.monotonic() - first


def test_pacer_keeps_the_rate_and_does_not_burst_after_a_stall():
    now = [0.0]
    pacer = Pacer(8.0, clock=lambda: now[0])          # 1 MB/s
    assert pacer.chunk() == 10_000
    assert pacer.delay(10_000) == 0.0
    assert pacer.delay(10_000) == pytest.approx(0.01)
    now[0] = 5.0                                        # long stall: no catch-up
    assert pacer.delay(10_000) == 0.0
    assert pacer.delay(10_000) == pytest.approx(0.01)
    assert Pacer(0).delay(1 << 20) == 0.0


@pytest.mark.cli
def test_tcp_stream_at_rate(tmp_path):
    port = free_port()
    p, stats = start(["--mode", "tcp", "--port", str(port), "--rate-mbit", "40"], tmp_path)
    with socket.create_connection(("127.0.0.1", port)) as s:
        got, elapsed = receive(s, 2.5)
    mbit = got * 8 / elapsed / 1e6
    assert 37.6 < mbit < 42.4, mbit                     # within 6 % of 40 Mbit/s
    time.sleep(0.6)
    lines = stop(p, stats)
    final = lines[-1]
    assert final["accepted"] == 1 and final["connections"] == 0
    assert abs(final["bytes_sent"] - got) < 2 * 65536   # counted what it sent
    assert any(l.get("flows") for l in lines if l["event"] == "stats")


@pytest.mark.cli
def test_http_answers(tmp_path):
    port = free_port()
    p, stats = start(["--mode", "http", "--port", str(port)], tmp_path)

    def ask(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(1 << 16):
                data += chunk
            return data

    body = ask(b"GET /bytes/300000 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, payload = body.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 300000" in head
    assert len(payload) == 300000 and payload[:4] == bytes([0, 1, 2, 3])
    assert ask(b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert ask(b"POST /stream HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    bad = ask(b"\x16\x03\x01garbage\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400") and b"malformed request line" in bad
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        got, _ = receive(s, 0.5)
    assert got > 1_000_000
    stop(p, stats)


@pytest.mark.cli
def test_udp_flood_at_rate(tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.settimeout(1)
    dest = f"127.0.0.1:{rx.getsockname()[1]}"
    p, stats = start(["--mode", "udp", "--dest", dest, "--rate-mbit", "20", "--size", "1000"],
                     tmp_path)
    got, first, end = 0, None, time.monotonic() + 2.0
    while time.monotonic() < end:
        n = len(rx.recv(2048))
        assert n == 1000
        first = first or time.monotonic()
        got += n
    mbit = got * 8 / (time.monotonic() - first) / 1e6
    assert 18.8 < mbit < 21.2, mbit                     # within 6 %, even on a busy machine
    lines = stop(p, stats)
    flow = [l for l in lines if l["event"] == "stats" and l["flows"]][-1]["flows"][0]
    assert flow["peer"] == dest and flow["datagrams"] * 1000 == flow["bytes_sent"]
    rx.close()


@pytest.mark.cli
def test_duration_ends_by_itself(tmp_path):
    port = free_port()
    p = subprocess.run(NODE + ["--mode", "tcp", "--port", str(port), "--bind", "127.0.0.1",
                               "--duration", "0.5", "--stats", str(tmp_path / "s.ndjson")],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and has_ready_event(tmp_path / "s.ndjson")
    assert json.loads((tmp_path / "s.ndjson").read_text().splitlines()[-1])["event"] == "stop"


@pytest.mark.cli
@pytest.mark.parametrize("args, needle", [
    (["--mode", "udp"], "--mode udp needs --dest"),
    (["--mode", "udp", "--dest", "nowhere"], "is not IP:PORT"),
    (["--mode", "tcp", "--rate-mbit", "-3"], "--rate-mbit must be 0 or positive"),
    (["--mode", "ftp"], "invalid choice"),
])
def test_bad_arguments(args, needle):
    r = subprocess.run(NODE + args, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.cli
def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = subprocess.run(NODE + ["--mode", "tcp", "--bind", "127.0.0.1", "--port",
                                   str(s.getsockname()[1])], capture_output=True, text=True,
                           timeout=10)
    assert r.returncode == 1 and "Address already in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
