"""A deliberately broken iSCSI target for the bad-peer tests.

It listens on 127.0.0.1 (a free port), accepts connections on its own thread, logs
the initiator in properly (two Login Responses, no keys beyond what the test asks
for) and then lets a *behaviour* function answer the first command however badly the
test wants. Everything it starts it stops in :meth:`close`.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

from testbed.iscsi import pdu
from testbed.iscsi.pdu import (BHS_LEN, DIGEST_LEN, LOGIN_RESPONSE, encode_pdu, pad_len)
from testbed.iscsi.text import decode_text, encode_text


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("initiator closed")
        buf += chunk
    return buf


class Peer:
    """One accepted connection, with the state a target keeps."""

    def __init__(self, sock: socket.socket, digests: bool, window: int = 16) -> None:
        self.sock, self.digests, self.window_size = sock, digests, window
        self.statsn = 0
        self.exp_cmdsn = 0
        self.in_ffp = False

    def read(self):
        raw = recv_exact(self.sock, BHS_LEN)
        p = pdu.decode_bhs(raw)
        dig = self.digests and self.in_ffp
        rest = 4 * p.ahs_len + (DIGEST_LEN if dig else 0) + p.dsl + pad_len(p.dsl) + \
            (DIGEST_LEN if dig and p.dsl else 0)
        body = recv_exact(self.sock, rest) if rest else b""
        return pdu.decode_pdu(raw + body, dig, dig)

    def send(self, spec, data: bytes = b"", **fields) -> None:
        dig = self.digests and self.in_ffp
        self.sock.sendall(encode_pdu(spec, data, dig, dig, **fields))

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def login(self, keys: Optional[dict] = None) -> None:
        """Answer the security stage, then the operational stage to full feature."""
        while True:
            req = self.read()
            assert req.opcode == 0x03, req
            offered = dict(decode_text(req.data))
            self.exp_cmdsn = req.cmdsn
            reply = {}
            if req.csg == 1:
                reply = dict(keys or {})
                if self.digests:
                    reply.update(HeaderDigest="CRC32C", DataDigest="CRC32C")
                reply = {k: v for k, v in reply.items() if k in offered or k.startswith("Max")}
            final = req.csg == 1
            self.send(LOGIN_RESPONSE, encode_text(reply.items()), transit=1, csg=req.csg,
                      nsg=3 if final else 1, isid=req.isid, tsih=b"\x00\x01" if final else b"\0\0",
                      itt=req.itt, statsn=self.statsn, exp_cmdsn=self.exp_cmdsn,
                      max_cmdsn=self.exp_cmdsn + self.window_size - 1)
            self.statsn += 1
            if final:
                self.in_ffp = True
                return

    def window(self) -> dict:
        return {"exp_cmdsn": self.exp_cmdsn, "max_cmdsn": self.exp_cmdsn + self.window_size - 1}


Behaviour = Callable[[Peer], None]


class FakeTarget:
    """Serve ``behaviour`` on every connection until closed."""

    def __init__(self, behaviour: Behaviour, digests: bool = False, login: bool = True,
                 keys: Optional[dict] = None, window: int = 16) -> None:
        self.behaviour, self.digests, self.do_login, self.keys = behaviour, digests, login, keys
        self.window = window
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def portal(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            threading.Thread(target=self._handle, args=(sock,), daemon=True).start()

    def _handle(self, sock: socket.socket) -> None:
        peer = Peer(sock, self.digests, self.window)
        try:
            if self.do_login:
                peer.login(self.keys)
            self.behaviour(peer)
        except (ConnectionError, OSError):
            pass
        except BaseException as exc:        # a broken test server must say so
            self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self) -> "FakeTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
