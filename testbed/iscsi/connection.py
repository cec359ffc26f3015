"""One TCP connection to a target: socket, hooks, PDU framing in both directions.

A :class:`Connection` owns its socket. It binds explicitly (port 0, or a given
source address) so that the storage client's ``socket_bound`` hook sees the flow
before the first SYN, connects, calls ``socket_connected`` (where Linux's user space
hands the connected socket to the kernel's driver: open-iscsi's iscsid connects in
``iscsi_io_tcp_connect`` and only then sends ``ISCSI_UEVENT_BIND_CONN``, whose
``iscsi_sw_tcp_conn_bind`` sets the socket up; nbd-client likewise connects before
``NBD_SET_SOCK``), and then moves PDUs:

* **out**: callers :meth:`queue` the buffers of whole PDUs (see
  :func:`testbed.iscsi.pdu.frame`) and :meth:`flush` sends what the socket takes now,
  with as few ``sendmsg`` calls as the kernel allows, and never waits: what does not
  fit stays queued, in order. The reader sends the rest as the socket drains: while
  anything is unsent it waits for the socket to be writable as well as readable. So
  the receive side never stops reading because the send side is stuck, as in Linux's
  initiator, where responses are read in softirq context (``iscsi_sw_tcp_data_ready``)
  and a full send buffer only parks the transmit work until ``sk_write_space``
  (``iscsi_sw_tcp_write_space``, drivers/scsi/iscsi_tcp.c). A busy session batches
  naturally: the receiver thread queues the Data-Out and the commands its callbacks
  submit while it works through what it received, and flushes once before it waits.
  Only the login exchange (:meth:`send`, before the receiver runs) waits for its PDUs
  to go out, up to ``send_timeout``.
* **in**: :class:`PduReader` reads into one preallocated buffer with ``recv_into``
  (one call brings in as many PDUs as the socket holds), checks digests and bounds,
  and hands out each PDU with its data segment as a ``memoryview`` into that buffer,
  valid until the next read: the session copies read data straight from there into
  the command's buffer.

Every wait is bounded: the socket is non-blocking and the reader waits in ``select``
for at most a short *tick*, on which it calls the owner's ``on_tick`` (keepalive,
command timeouts) or raises :class:`IscsiTimeout` once the caller's deadline passed,
or once queued data made no progress for ``send_timeout`` (the target's window stayed
shut).
"""

from __future__ import annotations

import os
import select
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

    def socket_connected(self, sock: socket.socket) -> None:
        """After connect, before the login, for every connection that connected: the
        kernel's bind of the connected socket (``iscsi_sw_tcp_conn_bind``)."""

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
        self._on_connected = hook(hooks, "socket_connected")
        self._on_closed = hook(hooks, "socket_closed")
        self._pdu_free = hook(hooks, "pdu_free")
        self.sock: Optional[socket.socket] = None
        self.header_digest = False
        self.data_digest = False
        self.exp_statsn = 0
        self._send_lock = threading.Lock()
        self._outq_lock = threading.Lock()
        self._outq: list = []             # views of the PDUs not yet sent, in order
        self._queued = self._sent = 0     # bytes ever queued, ever sent
        self._charges: list[tuple[int, int]] = []   # (queued bytes at a PDU's end, charge)
        self._send_progress = time.monotonic()   # when the socket last took data
        self._wake_r: Optional[int] = None     # a pipe that wakes the reader's select
        self._wake_w: Optional[int] = None
        self._waiting = False             # the reader waits without write interest
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
            if self._on_connected:
                self._on_connected(sock)
        except socket.timeout:
            self._close_sock(sock)
            raise IscsiTimeout(f"connect to {host}:{port} timed out after {timeout:.1f}s") from None
        except OSError as exc:
            self._close_sock(sock)
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)           # every wait is the reader's select (module doc)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
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
            charged = sum(c for _, c in self._charges)
            self._charges = []
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None
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
        """Queue the buffers of whole PDUs; ``charged`` bytes are freed once they are sent."""
        views = [p if isinstance(p, bytes) else memoryview(p).cast("B") for p in parts]
        with self._outq_lock:
            if not self._outq:
                self._send_progress = time.monotonic()   # the wait for the window starts now
            self._outq.extend(views)
            self._queued += sum(len(v) for v in views)
            if charged:
                self._charges.append((self._queued, charged))

    @property
    def unsent(self) -> bool:
        """Queued data the socket has not taken yet."""
        return bool(self._outq)

    def flush(self) -> None:
        """Send what the socket takes now (also what other threads queued); never waits.

        Raises :class:`IscsiTimeout` when queued data made no progress for
        ``send_timeout``, and :class:`ConnectionLost` when the socket failed.
        """
        with self._send_lock:
            try:
                self._send_some()
            finally:
                freed = self._sent_charges()
        if freed and self._pdu_free:
            self._pdu_free(freed)

    def _send_some(self) -> None:
        """Send until the queue is empty or the socket is full (send lock held)."""
        if self.closed or self.sock is None:
            raise ConnectionLost("connection is closed")
        sock = self.sock
        while True:
            with self._outq_lock:
                batch = self._outq[:IOV_MAX]
            if not batch:
                return
            try:
                sent = sock.sendmsg(batch)
            except BlockingIOError:
                if time.monotonic() - self._send_progress > self.send_timeout:
                    raise IscsiTimeout(f"target {self.target[0]}:{self.target[1]} accepted no "
                                       f"data for {self.send_timeout:.0f}s") from None
                self._wake_reader()
                return
            except OSError as exc:
                raise ConnectionLost(f"send to {self.target[0]}:{self.target[1]} failed: "
                                     f"{exc.strerror or exc}") from None
            self._send_progress = time.monotonic()
            with self._outq_lock:
                self._consume(sent)

    def _wake_reader(self) -> None:
        """Data is left for the reader to send: make its select look at writability."""
        if self._waiting and self._wake_w is not None:
            try:
                os.write(self._wake_w, b"w")
            except (BlockingIOError, OSError):
                pass                      # a wake-up is pending already, or we are closing

    def _sent_charges(self) -> int:
        """Take the charges of the PDUs sent in full; their sum."""
        with self._outq_lock:
            done = [c for end, c in self._charges if end <= self._sent]
            if done:
                self._charges = self._charges[len(done):]
        return sum(done)

    def _consume(self, sent: int) -> None:
        """Drop ``sent`` bytes from the front of the queue (both locks held)."""
        self._sent += sent
        q, i = self._outq, 0
        while sent and i < len(q):
            n = len(q[i])
            if sent >= n:
                sent -= n
                i += 1
            else:
                q[i] = memoryview(q[i])[sent:]
                sent = 0
        del q[:i]

    def send(self, parts: list, charged: int = 0) -> None:
        """Queue ``parts`` and wait until they are all sent (the login exchange)."""
        self.queue(parts, charged)
        while True:
            self.flush()
            if not self.unsent:
                return
            select.select([], [self.sock], [], self.tick)


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
        conn = self.conn
        while self.end - self.start < need:
            if self.before_wait is not None:
                self.before_wait()
            if not self._wait_readable(sock, deadline):
                continue
            try:
                n = sock.recv_into(self.mv[self.end:])
            except BlockingIOError:
                continue
            except OSError as exc:
                if conn.closed:
                    raise ConnectionLost("connection closed locally") from None
                raise ConnectionLost(f"receive from {conn.target[0]}:{conn.target[1]} "
                                     f"failed: {exc.strerror or exc}") from None
            if n == 0:
                have = self.end - self.start
                where = f" in the middle of a PDU ({have} of {need} bytes)" if have else ""
                raise ConnectionLost(f"target {conn.target[0]}:{conn.target[1]} "
                                     f"closed the connection{where}")
            self.end += n
            self.last_rx = time.monotonic()
            if self._on_recv is not None:
                self._on_recv(sock, n)

    def _wait_readable(self, sock: socket.socket, deadline: Optional[float]) -> bool:
        """Wait up to a tick for data; send queued data as the socket drains meanwhile.

        True when the socket is readable. On a tick with nothing to read: the caller's
        deadline is checked, then the owner's ``on_tick`` runs.
        """
        conn = self.conn
        conn._waiting = not conn.unsent   # flush() in another thread wakes us (_wake_reader)
        writers = [] if conn._waiting else [sock]
        wake = conn._wake_r
        try:
            readable, writable, _ = select.select([sock] if wake is None else [sock, wake],
                                                  writers, [], conn.tick)
        except (OSError, ValueError) as exc:      # closed under us by another thread
            raise ConnectionLost(f"connection to {conn.target[0]}:{conn.target[1]}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        finally:
            conn._waiting = False
        if wake is not None and wake in readable:
            try:
                os.read(wake, 512)
            except (BlockingIOError, OSError):
                pass
            return sock in readable
        if readable:
            return True
        if writable:
            conn.flush()                  # the window opened: send more, then wait again
            return False
        if deadline is not None and time.monotonic() >= deadline:
            raise IscsiTimeout(f"target {conn.target[0]}:{conn.target[1]} "
                               "sent nothing before the deadline")
        if conn.unsent:
            conn.flush()                  # raises once the window stayed shut send_timeout
        if self.on_tick is not None:
            self.on_tick()
        return False

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
