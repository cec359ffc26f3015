"""The connection's two directions are independent: a stuck send never stops the reader.

A real TCP connection on loopback to a peer that does not read: the initiator's send
buffer fills, :meth:`Connection.flush` returns at once with data left queued, and the
reader still receives what the peer sends (Linux's initiator reads responses in softirq
context whatever its transmit work is waiting for). When the peer starts reading, the
reader sends the rest as the socket drains; when it never does, the reader gives up
after ``send_timeout``.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from testbed.iscsi import pdu
from testbed.iscsi.connection import Connection
from testbed.iscsi.errors import IscsiTimeout

BIG = 16 << 20          # far more than loopback's socket buffers hold


@pytest.fixture
def pair():
    """(connection, the peer's socket) over loopback; both closed after the test."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    conn = Connection(server.getsockname(), tick=0.05)
    conn.open(5.0)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    peer, _ = server.accept()
    server.close()
    peer.settimeout(10)
    yield conn, peer
    conn.close()
    peer.close()


def nop_in(itt: int) -> bytes:
    return pdu.encode_pdu(pdu.NOP_IN, itt=itt)


def test_flush_does_not_wait_for_a_full_send_buffer(pair):
    conn, _peer = pair
    conn.queue([bytes(BIG)])
    t0 = time.monotonic()
    conn.flush()
    assert time.monotonic() - t0 < 1.0
    assert conn.unsent


def test_the_reader_reads_while_the_send_side_is_stuck(pair):
    conn, peer = pair
    conn.queue([bytes(BIG)])
    conn.flush()
    peer.sendall(nop_in(7))
    got = conn.reader.read_pdu(deadline=time.monotonic() + 5)
    assert (got.spec, got.itt) == (pdu.NOP_IN, 7)
    assert conn.unsent                  # the peer still reads nothing: all still queued


def test_the_reader_sends_the_rest_as_the_socket_drains(pair):
    conn, peer = pair
    conn.queue([bytes(BIG)])
    conn.flush()
    received = []

    def drain_then_answer() -> None:
        n = 0
        while n < BIG:
            n += len(peer.recv(1 << 20))
        received.append(n)
        peer.sendall(nop_in(9))          # only once everything arrived

    t = threading.Thread(target=drain_then_answer, daemon=True)
    t.start()
    got = conn.reader.read_pdu(deadline=time.monotonic() + 20)
    t.join(10)
    assert received == [BIG] and got.itt == 9 and not conn.unsent


def test_a_window_shut_for_send_timeout_ends_the_wait(pair):
    conn, _peer = pair
    conn.send_timeout = 0.5
    conn.queue([bytes(BIG)])
    t0 = time.monotonic()
    with pytest.raises(IscsiTimeout, match="accepted no data"):
        conn.reader.read_pdu(deadline=time.monotonic() + 10)
    assert time.monotonic() - t0 < 5


def test_another_thread_queueing_wakes_the_waiting_reader(pair):
    """Data queued while the reader waits (no write interest then) is sent without
    waiting for the reader's next tick."""
    conn, peer = pair
    conn.tick = 5.0                      # a tick would be far too late
    chunk = bytes(1 << 20)

    def queue_later() -> None:
        time.sleep(0.3)
        conn.queue([chunk])
        conn.flush()                     # sends part, wakes the reader for the rest

    def drain_then_answer() -> None:
        n = 0
        while n < len(chunk):
            n += len(peer.recv(1 << 20))
        peer.sendall(nop_in(11))

    threads = [threading.Thread(target=f, daemon=True) for f in (queue_later, drain_then_answer)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    got = conn.reader.read_pdu(deadline=time.monotonic() + 20)
    assert got.itt == 11 and time.monotonic() - t0 < 4.5
    for t in threads:
        t.join(5)
