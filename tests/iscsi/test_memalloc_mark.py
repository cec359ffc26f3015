"""When the storage client's connections become SOCK_MEMALLOC, and what a closed one leaves.

Real TCP connections on loopback through :class:`Connection` and the storage client's
:class:`KernelSocketHooks` on a memory manager of each era. 3.6's block driver marks the
socket user space has already connected (``nbd_do_it``; open-iscsi's iscsid connects before
``ISCSI_UEVENT_BIND_CONN``), so the handshake runs on a plain socket; Phillips' 2005 memalloc
task marks its socket as it creates it. No era's release of a socket lowers
``sk_memalloc_socks()`` (3.6 ``__sk_free`` never calls ``sk_clear_memalloc``), so it stays
true between a lost connection and its reinstatement's.
"""

from __future__ import annotations

import socket

import pytest

from nodes.storage_client.agent import KernelSocketHooks
from testbed.iscsi.connection import Connection
from testbed.iscsi.errors import ConnectionLost
from testbed.mm.gfp import GFP_NOIO, Gfp
from testbed.mm.manager import MemoryManager


class Recorder(KernelSocketHooks):
    """The hooks, noting the socket's mark and the count as each hook returns."""

    def __init__(self, policy: str) -> None:
        super().__init__(MemoryManager(8192, policy=policy), None, "127.0.0.1")
        self.seen: list[tuple[str, bool, int, bool]] = []

    def note(self, hook: str, sock: socket.socket) -> None:
        sk = self._socks[id(sock)][1]
        connected = True
        try:
            sock.getpeername()
        except OSError:
            connected = False
        self.seen.append((hook, sk.memalloc, self.mm.memalloc_socks, connected))

    def socket_bound(self, sock, target):
        super().socket_bound(sock, target)
        self.note("bound", sock)

    def socket_connected(self, sock):
        super().socket_connected(sock)
        self.note("connected", sock)


@pytest.fixture
def server():
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv
    srv.close()


def connect(hooks: Recorder, srv: socket.socket) -> Connection:
    conn = Connection(srv.getsockname(), hooks)
    conn.open(5.0)
    peer, _ = srv.accept()
    peer.close()
    return conn


def test_3_6_marks_the_socket_once_it_is_connected(server):
    hooks = Recorder("gorman-3.6")
    conn = connect(hooks, server)
    try:
        assert hooks.seen == [("bound", False, 0, False), ("connected", True, 1, True)]
        sk = hooks._current_sock()
        assert sk.sk_allocation == GFP_NOIO | Gfp.MEMALLOC      # nbd's, with the mark's
    finally:
        conn.close()


def test_2005_marks_the_socket_as_it_is_created(server):
    hooks = Recorder("phillips-2005")
    conn = connect(hooks, server)
    try:
        assert hooks.seen == [("bound", True, 1, False), ("connected", True, 1, True)]
        assert hooks._current_sock().sk_allocation == GFP_NOIO   # no transmit reserve in 2005
    finally:
        conn.close()


def test_a_lost_connection_leaves_sk_memalloc_socks_true_for_its_successor(server):
    """The reinstatement's SYN-ACK arrives while the old socket's count still stands, so
    3.6's ring refill may still add __GFP_MEMALLOC (the policy's storage receive mark)."""
    hooks = Recorder("gorman-3.6")
    mm = hooks.mm
    first = connect(hooks, server)
    old = hooks._current_sock()
    first.close()
    assert old.closed and mm.memalloc_socks == 1 and mm.sk_memalloc_socks()
    assert mm.policy.storage_rx_mark(mm.register_netdev("eth0")) == 0
    second = connect(hooks, server)
    try:
        assert hooks.seen[2:] == [("bound", False, 1, False), ("connected", True, 2, True)]
        assert mm.check_invariants() == []
    finally:
        second.close()
    assert mm.memalloc_socks == 2


def test_a_connect_that_fails_never_marks_its_socket(server):
    port = server.getsockname()[1]
    server.close()                                   # nothing listens: refused
    hooks = Recorder("gorman-3.6")
    with pytest.raises(ConnectionLost):
        Connection(("127.0.0.1", port), hooks).open(5.0)
    assert [s[0] for s in hooks.seen] == ["bound"]
    assert hooks.mm.memalloc_socks == 0 and not hooks._socks      # closed and forgotten
