"""One TCP connection to a target: socket, hooks, PDU framing in both directions.

A :class:`Connection` owns its socket. It binds explicitly (port 0, or a given
source address) so that the storage client's ``socket_bound`` hook sees the flow
before the first SYN, connects, and then moves PDUs:

* **out**: callers :meth:`queue` the buffers of whole PDUs (see
  :func:`testbed.iscsi.pdu.frame`) and :meth:`flush` sends everything queued with
  as few ``sendmsg`` calls as the kernel allows. Whoever holds the send lock sends
  the PDUs the others queued too, so a busy session batches naturally: the receiver
  thread queues the Data-Out and the commands its callbacks submit while it works
  through what it received, and flushes once before it waits for more.
* **in**: :class:`PduReader` reads into one preallocated buffer with ``recv_into``
  (one call brings in as many PDUs as the socket holds), checks digests and bounds,
  and hands out each PDU with its data segment as a ``memoryview`` into that buffer,
  valid until the next read: the session copies read data straight from there into
  the command's buffer.

Every wait is bounded: the socket has a short timeout (the *tick*), on which the
reader calls the owner's ``on_tick`` (keepalive, command timeouts) or raises
:class:`IscsiTimeout` once the caller's deadline passed.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Optional

from .errors import ConnectionLost, IscsiTimeout, ProtocolError
from .pdu import (BHS_LEN, DIGEST_LEN, ISCSI_PORT, check_data_digest, check_header_digest,
                  decode_bhs, pad_len)

IOV_MAX = 512                     # buffers per sendmsg (Linux allows 1024)


class SessionHooks:
    """The storage client's view into the initiator; every method is optional.

    Subclass it (or pass any object with some of these methods). They run on the
    thread that does the work: ``bytes_received`` on the receiver thread, the
    others on whichever thread builds or frees the buffer. They must be short
    and must not call back into the session.
    """

    def socket_bound(self, sock: socket.socket, target: tuple[str, int]) -> None:
        """After bind, before connect, for every connection (reconnects too)."""

    def socket_closed(self, sock: socket.socket) -> None:
        """The connection's socket is being closed."""

    def bytes_received(self, sock: socket.socket, n: int) -> None:
        """``n`` bytes were read from the socket's receive queue."""

    def pdu_alloc(self, nbytes: int) -> bool:
        """The initiator wants to hold a PDU buffer of ``nbytes``; False = not now."""
        return True

    def pdu_free(self, nbytes: int) -> None:
        """A buffer charged with :meth:`pdu_alloc` is released."""


def hook(hooks: Any, name: str) -> Optional[Callable]:
    """The hook method ``name`` if ``hooks`` has one that is not a no-op default."""
    fn = getattr(hooks, name, None)
    if fn is None or getattr(fn, "__func__", None) is getattr(SessionHooks, name):
        return None
    return fn


def parse_portal(portal: str, default_port: int = ISCSI_PORT) -> tuple[str, int]:
    """``"10.0.0.2"``, ``"10.0.0.2:3261"``, ``"[::1]:3260"`` -> (host, port)."""
    text = portal.strip()
    if "," in text:                                   # SendTargets form "ip:port,tpgt"
        text = text.split(",", 1)[0]
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], portal)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, portal)
    if not host:
        raise ValueError(f"portal {portal!r}: no host")
    return host, port


def _port(text: str, portal: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"portal {portal!r}: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"portal {portal!r}: port {port} is outside 1..65535")
    return port


class Connection:
    """A connected socket to one portal, with framing and the send queue."""

    def __init__(self, target: tuple[str, int], hooks: Any = None,
                 source: Optional[str] = None, tick: float = 0.2, source_port: int = 0) -> None:
        self.target = target
        self.source = source
        self.source_port = source_port
        self.tick = tick
        self.hooks = hooks
        self._on_bound = hook(hooks, "socket_bound")
        self._on_closed = hook(hooks, "socket_closed")
        self._pdu_free = hook(hooks, "pdu_free")
        self.sock: Optional[socket.socket] = None
        self.header_digest = False
        self.data_digest = False
        self.exp_statsn = 0
        self._send_lock = threading.Lock()
        self._outq_lock = threading.Lock()
        self._outq: list = []
        self._out_charged = 0
        self.send_timeout = 30.0
        self.reader: Optional[PduReader] = None
        self.closed = False

    # ---- life cycle

    def open(self, timeout: float) -> None:
        host, port = self.target
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionLost(f"cannot resolve portal {host}:{port}: {exc}") from None
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source_port:            # reconnecting from the same port after recovery
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.source or ("::" if family == socket.AF_INET6 else "0.0.0.0"),
                       self.source_port))
            if self._on_bound:
                self._on_bound(sock, (host, port))
            sock.settimeout(timeout)
            sock.connect(addr)
        except socket.timeout:
            self._close_sock(sock)
            raise IscsiTimeout(f"connect to {host}:{port} timed out after {timeout:.1f}s") from None
        except OSError as exc:
            self._close_sock(sock)
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        sock.settimeout(self.tick)
        self.sock = sock
        self.reader = PduReader(self)

    def _close_sock(self, sock: socket.socket) -> None:
        if self._on_closed:
            try:
                self._on_closed(sock)
            except Exception:        # a hook's failure must not hide the close
                pass
        sock.close()

    def close(self) -> None:
        """Close the socket (idempotent); queued PDUs are dropped and uncharged."""
        if self.closed:
            return
        self.closed = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._close_sock(sock)
        with self._outq_lock:
            self._outq = []
            charged, self._out_charged = self._out_charged, 0
        if charged and self._pdu_free:
            self._pdu_free(charged)

    def shutdown(self) -> None:
        """Wake a reader blocked on this socket (used by close from another thread)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- sending

    def queue(self, parts: list, charged: int = 0) -> None:
        """Queue the buffers of whole PDUs; ``charged`` bytes are freed once sent."""
        with self._outq_lock:
            self._outq.extend(parts)
            self._out_charged += charged

    def flush(self) -> None:
        """Send everything queued (also what other threads queued meanwhile)."""
        with self._send_lock:
            while True:
                with self._outq_lock:
                    parts, self._outq = self._outq, []
                    charged, self._out_charged = self._out_charged, 0
                if not parts:
                    return
                try:
                    self._sendmsg_all(parts)
                finally:
                    if charged and self._pdu_free:
                        self._pdu_free(charged)

    def send(self, parts: list, charged: int = 0) -> None:
        self.queue(parts, charged)
        self.flush()

    def _sendmsg_all(self, parts: list) -> None:
        if self.closed or self.sock is None:
            raise ConnectionLost("connection is closed")
        sock = self.sock
        views = [memoryview(p).cast("B") if not isinstance(p, bytes) else p for p in parts]
        deadline = time.monotonic() + self.send_timeout
        i = 0
        while i < len(views):
            batch = views[i:i + IOV_MAX]
            try:
                sent = sock.sendmsg(batch)
            except socket.timeout:
                if time.monotonic() > deadline:
                    raise IscsiTimeout(f"target {self.target[0]}:{self.target[1]} accepted no data "
                                       f"for {self.send_timeout:.0f}s") from None
                continue
            except OSError as exc:
                raise ConnectionLost(f"send to {self.target[0]}:{self.target[1]} failed: "
                                     f"{exc.strerror or exc}") from None
            while sent:
                n = len(views[i])
                if sent >= n:
                    sent -= n
                    i += 1
                else:
                    views[i] = memoryview(views[i])[sent:]
                    sent = 0


class PduReader:
    """Reads whole PDUs from a connection's socket into one reusable buffer."""

    def __init__(self, conn: Connection, max_dsl: int = 8192) -> None:
        self.conn = conn
        self.max_dsl = max_dsl
        self._on_recv = hook(conn.hooks, "bytes_received")
        self._alloc(max_dsl)
        self.start = self.end = 0
        self.on_tick: Optional[Callable[[], None]] = None
        self.before_wait: Optional[Callable[[], None]] = None
        self.last_rx = time.monotonic()

    def _alloc(self, max_dsl: int) -> None:
        cap = max(1 << 20, 4 * (max_dsl + BHS_LEN + 1024))
        self.buf = bytearray(cap)
        self.mv = memoryview(self.buf)

    def set_max_dsl(self, max_dsl: int) -> None:
        """Largest data segment the target may send (our MaxRecvDataSegmentLength)."""
        self.max_dsl = max_dsl
        if 4 * (max_dsl + BHS_LEN + 1024) > len(self.buf):
            pending = bytes(self.mv[self.start:self.end])
            self._alloc(max_dsl)
            self.buf[:len(pending)] = pending
            self.start, self.end = 0, len(pending)

    def buffered(self) -> int:
        return self.end - self.start

    def _fill(self, need: int, deadline: Optional[float]) -> None:
        """Make ``need`` bytes available from ``self.start`` on."""
        sock = self.conn.sock
        if sock is None:
            raise ConnectionLost("connection is not open")
        if self.start + need > len(self.buf):
            n = self.end - self.start
            self.buf[:n] = self.mv[self.start:self.end]
            self.start, self.end = 0, n
        while self.end - self.start < need:
            if self.before_wait is not None:
                self.before_wait()
            try:
                n = sock.recv_into(self.mv[self.end:])
            except socket.timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise IscsiTimeout(f"target {self.conn.target[0]}:{self.conn.target[1]} "
                                       "sent nothing before the deadline") from None
                if self.on_tick is not None:
                    self.on_tick()
                continue
            except OSError as exc:
                if self.conn.closed:
                    raise ConnectionLost("connection closed locally") from None
                raise ConnectionLost(f"receive from {self.conn.target[0]}:{self.conn.target[1]} "
                                     f"failed: {exc.strerror or exc}") from None
            if n == 0:
                have = self.end - self.start
                where = f" in the middle of a PDU ({have} of {need} bytes)" if have else ""
                raise ConnectionLost(f"target {self.conn.target[0]}:{self.conn.target[1]} "
                                     f"closed the connection{where}")
            self.end += n
            self.last_rx = time.monotonic()
            if self._on_recv is not None:
                self._on_recv(sock, n)

    def read_pdu(self, deadline: Optional[float] = None) -> Any:
        """The next PDU; its ``data`` is a memoryview valid until the next call."""
        self._fill(BHS_LEN, deadline)
        start = self.start
        pdu = decode_bhs(self.buf, start)
        hdr_end = start + BHS_LEN + 4 * pdu.ahs_len
        conn = self.conn
        dsl = pdu.dsl
        if dsl > self.max_dsl:
            raise ProtocolError(pdu.spec.title, "DataSegmentLength",
                                f"{dsl} bytes exceeds our MaxRecvDataSegmentLength {self.max_dsl}")
        data_start = hdr_end + (DIGEST_LEN if conn.header_digest else 0)
        padded = data_start + dsl + pad_len(dsl)
        total = padded + (DIGEST_LEN if conn.data_digest and dsl else 0) - start
        if total > len(self.buf):
            raise ProtocolError(pdu.spec.title, "TotalAHSLength", f"{pdu.ahs_len} words is absurd")
        if total > BHS_LEN:
            self._fill(total, deadline)
            # _fill may have moved the bytes to the front of the buffer
            shift = self.start - start
            start, hdr_end, data_start, padded = (start + shift, hdr_end + shift,
                                                  data_start + shift, padded + shift)
        if conn.header_digest:
            check_header_digest(self.buf, hdr_end, start, pdu.spec.title)
        if conn.data_digest and dsl:
            check_data_digest(self.buf, data_start, padded, pdu.spec.title)
        if pdu.ahs_len:
            pdu.ahs = bytes(self.mv[start + BHS_LEN:hdr_end])
        if dsl:
            pdu.data = self.mv[data_start:data_start + dsl]
        self.start = start + total
        if self.start == self.end:
            self.start = self.end = 0
        return pdu
