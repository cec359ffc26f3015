"""The iSCSI session in full feature phase: commands, windows, R2T, recovery.

Threading model
---------------
A :class:`Session` owns one :class:`~testbed.iscsi.connection.Connection` at a time
and one *receiver thread*. Any number of threads may :meth:`Session.submit`
commands; each returns a :class:`Task` at once and later runs its callback **on the
receiver thread** (so callbacks must be short and must not block). Every wait has a
timeout, and nothing escapes a thread: errors go to the commands they concern, and
an error that ends the session is kept in :attr:`Session.failure`.

Commands and the CmdSN window (RFC 7143 §4.2.2)
-----------------------------------------------
A non-immediate command may be sent only while ``CmdSN <= MaxCmdSN`` (serial
arithmetic, RFC 1982); commands beyond the window wait in ``_pending`` in order and
go out as soon as a response opens the window. Writes send immediate data (up to
FirstBurstLength and the target's MaxRecvDataSegmentLength), unsolicited Data-Out
when InitialR2T=No, then answer each R2T with Data-Out PDUs of at most the target's
MaxRecvDataSegmentLength. Reads copy each Data-In segment straight from the receive
buffer into the command's buffer. A UNIT ATTENTION (after every new login, tgtd
reports "power on, reset" once per LUN) makes the command go out again.

Keepalive
---------
When the target has sent nothing for ``keepalive_interval`` seconds the session
pings it (NOP-Out, I=1); no PDU within ``keepalive_timeout`` more means the target is
dead. NOP-In pings from the target are answered.

Error recovery level 0 (RFC 7143 §7.1.5, §6.3.5)
------------------------------------------------
A lost connection, a protocol or digest error, a command not answered within
``command_timeout`` or a dead target all end the connection. The session then waits
DefaultTime2Wait, logs in again with the same InitiatorName and ISID and TSIH=0
(*session reinstatement*: the target drops the old session and its tasks), clears the
UNIT ATTENTION with TEST UNIT READY and re-issues every command that was not
answered, in the original order, with fresh CmdSNs. Reconnects are bounded
(``max_reconnects``, with doubling backoff) and so are the re-issues of one command
(``max_task_retries``). A write whose callback reported success got GOOD status from
the target; a write that could not be done reports its error.

Hooks (``docs/architecture.md``)
--------------------------------
``socket_bound``/``socket_connected``/``socket_closed``/``bytes_received`` come from
the connection;
``recovery_started``/``recovery_ended`` (optional) mark each recovery episode. Memory:
a write charges ``pdu_alloc(48)`` for its command PDU when it is built: the data is
the caller's buffer (page-cache pages, which the kernel's initiator sends without a copy),
referenced until the target acknowledges it so it can be re-sent after recovery, and
already charged to whoever owns it; a read charges each Data-In segment it keeps. Everything is freed when the command completes. When
``pdu_alloc`` says no, the initiator sleeps briefly and tries again until the
command's timeout.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from . import scsi
from .connection import Connection, hook, parse_portal
from .errors import (ChapError, ConnectionLost, IscsiError, IscsiTimeout, LoginError,
                     NoMemory, ProtocolError, ScsiError, SessionFailed)
from .login import LoginConfig, login, random_isid
from .pdu import (BHS_LEN, DATA_OUT, LOGOUT_REQUEST, NOP_OUT, REJECT_REASONS, RESERVED_TAG,
                  SCSI_COMMAND, frame, lun_field, sn_le, sn_lt)
from .text import SessionParams

M32 = 0xFFFFFFFF
Buffer = Union[bytes, bytearray, memoryview]


@dataclass
class SessionConfig(LoginConfig):
    """Login offers (see :class:`LoginConfig`) plus the session's timeouts and limits."""
    login_timeout: float = 10.0
    command_timeout: float = 30.0       # a command unanswered this long ends the connection
    keepalive_interval: float = 5.0     # ping after this much silence (0 = never)
    keepalive_timeout: float = 5.0      # ... and declare the target dead this much later
    max_reconnects: int = 5             # login attempts per recovery (0 = no recovery)
    reconnect_backoff_max: float = 8.0
    max_task_retries: int = 3           # times one command may be re-issued
    max_ua_retries: int = 10            # UNIT ATTENTIONs one command may absorb
    source_address: Optional[str] = None
    source_port: int = 0                # 0: the kernel picks (a fixed one is reused after recovery)
    tick: float = 0.2                   # how often timers are checked when idle


class Task:
    """One command in the session (SCSI, NOP-Out ping or Logout)."""

    __slots__ = ("itt", "cdb", "lun", "lun_field", "edtl", "read", "data", "callback",
                 "cmdsn", "buf", "received", "next_datasn", "next_r2tsn", "result", "error",
                 "issued_at", "submitted_at", "retries", "ua_retries", "tx_charge", "rx_charge",
                 "done", "event", "kind", "status", "sense")

    def __init__(self, kind: str, cdb: Optional[scsi.Cdb], lun: int, read_length: int,
                 data: Optional[Buffer], callback: Optional[Callable[["Task"], None]]) -> None:
        self.kind, self.cdb, self.lun = kind, cdb, lun
        self.lun_field = lun_field(lun)
        self.data = memoryview(data).cast("B") if data is not None else None
        self.read = read_length > 0
        self.edtl = len(self.data) if self.data is not None else read_length
        self.callback = callback
        self.itt = self.cmdsn = 0
        self.buf: Optional[bytearray] = None
        self.received = self.next_datasn = self.next_r2tsn = 0
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.issued_at: Optional[float] = None
        self.submitted_at = time.monotonic()
        self.retries = self.ua_retries = self.tx_charge = self.rx_charge = 0
        self.done = False
        self.event: Optional[threading.Event] = None
        self.status: Optional[int] = None
        self.sense: Optional[scsi.Sense] = None

    @property
    def name(self) -> str:
        return self.cdb.name if self.cdb else self.kind

    def describe(self) -> str:
        return f"{self.name} (ITT 0x{self.itt:08x}, CmdSN {self.cmdsn}, LUN {self.lun})"

    def wait(self, timeout: float) -> Any:
        """Block until done (raise its error) or ``timeout`` seconds passed."""
        if self.event is None:
            raise RuntimeError("wait() needs a task submitted with wait=True")
        if not self.event.wait(timeout):
            raise IscsiTimeout(f"{self.describe()} not completed after {timeout:.1f}s")
        if self.error is not None:
            raise self.error
        return self.result

    def _reset_progress(self) -> None:
        self.received = self.next_datasn = self.next_r2tsn = 0
        self.issued_at = None


@dataclass
class SessionStats:
    commands: int = 0
    reissued: int = 0
    recoveries: int = 0
    ua_retries: int = 0
    pings_sent: int = 0
    target_pings_answered: int = 0
    callback_errors: int = 0
    memory_waits: int = 0


READY, RECOVERING, FAILED, CLOSED = "ready", "recovering", "failed", "closed"


class Session:
    """A Normal session with one target, its receiver thread and its recovery."""

    def __init__(self, portal: Union[str, tuple[str, int]], target: str,
                 config: Optional[SessionConfig] = None, hooks: Any = None,
                 isid: Optional[bytes] = None) -> None:
        self.portal = parse_portal(portal) if isinstance(portal, str) else portal
        self.config = config or SessionConfig()
        self.config.target_name = target
        self.target = target
        self.hooks = hooks
        self._pdu_alloc = hook(hooks, "pdu_alloc")
        self._pdu_free = hook(hooks, "pdu_free")
        self.isid = isid or random_isid()
        self.tsih = b"\0\0"
        self.params = SessionParams()
        self.stats = SessionStats()
        self.state = CLOSED
        self.recovering_since: Optional[float] = None   # monotonic: the last recovery's start
        self.failure: Optional[BaseException] = None
        self._lock = threading.Lock()
        self._tasks: dict[int, Task] = {}
        self._pending: collections.deque[Task] = collections.deque()
        self._itt = itertools.count(1)
        self._cmdsn = 1
        self._exp_cmdsn = 1
        self._max_cmdsn = 1
        self._luns: set[int] = set()
        self._ping_sent: Optional[float] = None
        self._ping_itts: set[int] = set()
        self._next_tick = 0.0
        self._closing = threading.Event()
        self._conn: Optional[Connection] = None
        self._thread: Optional[threading.Thread] = None
        self._rx_ident: Optional[int] = None
        self._handlers = {0x20: self._on_nop_in, 0x21: self._on_scsi_response,
                          0x25: self._on_data_in, 0x26: self._on_logout_response,
                          0x31: self._on_r2t, 0x32: self._on_async, 0x3F: self._on_reject}

    # ------------------------------------------------------------------ life cycle

    def open(self) -> "Session":
        """Connect and log in; raises LoginError/ChapError/IscsiTimeout on failure."""
        self._conn = self._connect()
        self.state = READY
        self._closing.clear()
        self._thread = threading.Thread(target=self._run, name=f"iscsi-rx {self.target}",
                                        daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "Session":
        return self if self.state == READY else self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> Connection:
        cfg = self.config
        conn = Connection(self.portal, self.hooks, source=cfg.source_address,
                          source_port=cfg.source_port, tick=cfg.tick)
        conn.send_timeout = cfg.command_timeout
        conn.open(cfg.login_timeout)
        try:
            res = login(conn, cfg, self.isid, b"\0\0", self._cmdsn, self._new_itt(),
                        cfg.login_timeout)
        except BaseException:
            conn.close()
            raise
        self.params, self.tsih = res.params, res.tsih
        with self._lock:
            self._exp_cmdsn = res.exp_cmdsn
            self._max_cmdsn = res.max_cmdsn
            if res.exp_cmdsn != self._cmdsn:
                conn.close()
                raise ProtocolError("Login Response", "ExpCmdSN",
                                    f"{res.exp_cmdsn}, but the login carried CmdSN {self._cmdsn}")
        return conn

    def close(self, timeout: float = 10.0) -> None:
        """Log out (if logged in), stop the receiver thread, fail what is left."""
        if self.state == READY and self._thread is not None and self._thread.is_alive():
            try:
                task = Task("Logout", None, 0, 0, None, None)
                task.event = threading.Event()
                self._submit_task(task, immediate=True)
                task.wait(timeout)
            except IscsiError:
                pass
        self._closing.set()
        conn = self._conn
        if conn is not None:
            conn.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if conn is not None:
            conn.close()
        self._fail(SessionFailed(f"session with {self.target} was closed"), CLOSED)

    # ------------------------------------------------------------------ submitting

    def submit(self, cdb: scsi.Cdb, lun: int = 1, *, read_length: int = 0,
               data: Optional[Buffer] = None,
               callback: Optional[Callable[[Task], None]] = None, wait: bool = False) -> Task:
        """Queue a SCSI command; ``callback(task)`` runs on the receiver thread when done.

        ``task.result`` is the data read (bytearray) or None; ``task.error`` an
        IscsiError (ScsiError for a bad status). With ``wait=True`` the task can be
        waited for with ``task.wait(timeout)``.
        """
        task = Task("SCSI", cdb, lun, read_length, data, callback)
        if wait:
            task.event = threading.Event()
        if task.data is not None and self._pdu_alloc is not None:
            n = BHS_LEN         # the data is the caller's (see the module docstring)
            self._charge(n, task.submitted_at + self.config.command_timeout, task.describe())
            task.tx_charge = n
        self._submit_task(task)
        return task

    def execute(self, cdb: scsi.Cdb, lun: int = 1, *, read_length: int = 0,
                data: Optional[Buffer] = None, timeout: Optional[float] = None) -> Any:
        """Submit and wait; return the data read (or None); raise the command's error."""
        task = self.submit(cdb, lun, read_length=read_length, data=data, wait=True)
        return task.wait(timeout if timeout is not None else self.longest_wait())

    def longest_wait(self) -> float:
        """An upper bound of how long a command can take, recoveries included."""
        c = self.config
        per_recovery = c.max_reconnects * (c.login_timeout + c.reconnect_backoff_max) + \
            self.params.default_time2wait
        return (c.max_task_retries + 1) * (c.command_timeout + per_recovery) + \
            c.keepalive_interval + c.keepalive_timeout + 5.0

    def _submit_task(self, task: Task, immediate: bool = False) -> None:
        with self._lock:
            if self.state in (FAILED, CLOSED):
                self._release(task)
                raise SessionFailed(f"session with {self.target} is {self.state}"
                                    + (f": {self.failure}" if self.failure else ""))
            task.itt = self._new_itt()
            self._tasks[task.itt] = task
            if task.kind == "SCSI":
                self._luns.add(task.lun)
            self.stats.commands += 1
            if immediate:
                self._issue(task)
            else:
                self._pending.append(task)
                self._drain()
            conn = self._conn
        if conn is not None and threading.get_ident() != self._rx_ident:
            try:
                conn.flush()
            except IscsiError:
                pass            # the receiver thread sees the broken connection and recovers

    def _new_itt(self) -> int:
        while True:
            itt = next(self._itt) & M32
            if itt not in (0, RESERVED_TAG) and itt not in self._tasks:
                return itt

    def _charge(self, nbytes: int, deadline: float, what: str) -> None:
        """pdu_alloc with short sleeps until ``deadline``: pressure slows, never crashes."""
        if self._pdu_alloc is None:
            return
        delay = 0.0005
        while not self._pdu_alloc(nbytes):
            self.stats.memory_waits += 1
            if time.monotonic() >= deadline or self._closing.is_set():
                raise NoMemory(f"{what}: no memory for a {nbytes}-byte PDU buffer "
                               f"before the command's timeout")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _release(self, task: Task) -> None:
        if self._pdu_free is not None:
            n = task.tx_charge + task.rx_charge
            task.tx_charge = task.rx_charge = 0
            if n:
                self._pdu_free(n)

    # ------------------------------------------------------------------ sending (lock held)

    def _drain(self) -> None:
        """Send the waiting commands the CmdSN window allows."""
        pending = self._pending
        while pending and self.state == READY and sn_le(self._cmdsn, self._max_cmdsn):
            task = pending.popleft()
            if not task.done:
                self._issue(task)

    def _issue(self, task: Task) -> None:
        conn, p = self._conn, self.params
        task.issued_at = time.monotonic()
        task.cmdsn = self._cmdsn
        if task.kind == "Logout":
            conn.queue(frame(LOGOUT_REQUEST.pack(itt=task.itt, cmdsn=self._cmdsn,
                                                 exp_statsn=conn.exp_statsn), b"", p.header_digest))
            return
        self._cmdsn = (self._cmdsn + 1) & M32
        edtl, data = task.edtl, task.data
        if task.read:
            if task.buf is None:
                task.buf = bytearray(edtl)
        imm = unsolicited = 0
        if data is not None:
            if p.immediate_data:
                imm = min(edtl, p.first_burst_length, p.target_mrdsl)
            if not p.initial_r2t:
                unsolicited = min(edtl, p.first_burst_length) - imm
        bhs = SCSI_COMMAND.pack(final=0 if unsolicited else 1, read=int(task.read),
                                write=int(data is not None), lun=task.lun_field, itt=task.itt,
                                edtl=edtl, cmdsn=task.cmdsn, exp_statsn=conn.exp_statsn,
                                cdb=task.cdb.raw, dsl=imm)
        conn.queue(frame(bhs, data[:imm] if imm else b"", p.header_digest, p.data_digest))
        if unsolicited:
            self._queue_data_out(task, RESERVED_TAG, imm, unsolicited)

    def _queue_data_out(self, task: Task, ttt: int, offset: int, length: int) -> None:
        """Data-Out PDUs for [offset, offset+length), each at most the target's MRDSL."""
        conn, p = self._conn, self.params
        seg, end, datasn = p.target_mrdsl, offset + length, 0
        hd, dd, data = p.header_digest, p.data_digest, task.data
        parts: list = []
        while offset < end:
            n = min(seg, end - offset)
            bhs = DATA_OUT.pack(final=int(offset + n == end), lun=task.lun_field, itt=task.itt,
                                ttt=ttt, exp_statsn=conn.exp_statsn, datasn=datasn,
                                buffer_offset=offset, dsl=n)
            parts += frame(bhs, data[offset:offset + n], hd, dd)
            offset += n
            datasn += 1
        conn.queue(parts)

    # ------------------------------------------------------------------ receiver thread

    def _run(self) -> None:
        self._rx_ident = threading.get_ident()
        try:
            while not self._closing.is_set():
                conn = self._conn
                try:
                    self._serve(conn)
                except (IscsiError, OSError) as exc:
                    if self._closing.is_set():
                        return
                    if not isinstance(exc, IscsiError):
                        exc = ConnectionLost(f"connection to {self.target}: {exc}")
                    if not self._recover(conn, exc):
                        return
        except BaseException as exc:      # a bug must not kill the thread silently
            self._fail(SessionFailed(f"internal error in the receiver thread: {exc!r}"), FAILED)

    def _serve(self, conn: Connection) -> None:
        reader = conn.reader
        reader.on_tick = self._tick
        reader.before_wait = conn.flush
        handlers = self._handlers
        self._next_tick = time.monotonic() + self.config.tick
        while not self._closing.is_set():
            pdu = reader.read_pdu()
            handler = handlers.get(pdu.opcode)
            if handler is None:
                raise ProtocolError(pdu.spec.title, "opcode",
                                    f"0x{pdu.opcode:02x} is not expected in full feature phase")
            handler(pdu)
            if reader.last_rx >= self._next_tick:
                self._tick()

    def _task_for(self, pdu: Any, kind: str = "SCSI") -> Task:
        task = self._tasks.get(pdu.itt)
        if task is None or task.kind != kind:
            raise ProtocolError(pdu.spec.title, "ITT",
                                f"0x{pdu.itt:08x} is not a {kind} command in progress")
        return task

    def _window(self, pdu: Any) -> None:
        """Take ExpCmdSN/MaxCmdSN (lock held); they only move forward (§4.2.2.1)."""
        exp, mx = pdu.exp_cmdsn, pdu.max_cmdsn
        if sn_lt(mx, (exp - 1) & M32):
            return                               # RFC: ignore an invalid window
        if sn_lt(self._cmdsn, exp):
            raise ProtocolError(pdu.spec.title, "ExpCmdSN",
                                f"{exp} acknowledges commands never sent (next CmdSN is {self._cmdsn})")
        if sn_lt(self._exp_cmdsn, exp):
            self._exp_cmdsn = exp
        if sn_lt(self._max_cmdsn, mx):
            self._max_cmdsn = mx
            if self._pending:
                self._drain()

    def _status_sn(self, pdu: Any, strict: bool = True) -> None:
        """StatSN of a status-bearing PDU must be the next one (§4.2.2.2)."""
        conn = self._conn
        if pdu.statsn == conn.exp_statsn:
            conn.exp_statsn = (pdu.statsn + 1) & M32
        elif strict:
            raise ProtocolError(pdu.spec.title, "StatSN",
                                f"{pdu.statsn}, expected {conn.exp_statsn}")

    def _on_data_in(self, pdu: Any) -> None:
        task = self._task_for(pdu)
        n, off = pdu.dsl, pdu.buffer_offset
        if not task.read:
            raise ProtocolError("SCSI Data-In", "ITT", f"{task.describe()} reads no data")
        if pdu.datasn != task.next_datasn:
            raise ProtocolError("SCSI Data-In", "DataSN", f"{pdu.datasn}, expected {task.next_datasn}")
        if off + n > task.edtl:
            raise ProtocolError("SCSI Data-In", "BufferOffset",
                                f"{off}+{n} bytes runs past the {task.edtl} bytes expected")
        task.next_datasn += 1
        if n:
            if self._pdu_alloc is not None and task.error is None:
                try:
                    self._charge(n, task.issued_at + self.config.command_timeout, task.describe())
                    task.rx_charge += n
                except NoMemory as exc:
                    task.error = exc
            task.buf[off:off + n] = pdu.data
            task.received += n
        with self._lock:
            if pdu.status_present:
                self._status_sn(pdu)
            self._window(pdu)
        if pdu.status_present:
            if not pdu.final:
                raise ProtocolError("SCSI Data-In", "F bit", "status present (S=1) without F=1")
            resid = pdu.residual if (pdu.underflow or pdu.overflow) else 0
            self._scsi_done(task, pdu.status, None, resid if pdu.underflow else 0)

    def _on_scsi_response(self, pdu: Any) -> None:
        task = self._task_for(pdu)
        sense = scsi.sense_from_segment(pdu.data) if pdu.dsl else None
        with self._lock:
            self._status_sn(pdu)
            self._window(pdu)
        if pdu.response != 0:
            self._complete(task, None, IscsiError(
                f"{task.describe()}: target reports iSCSI response 0x{pdu.response:02x} "
                "(target failure)"))
            return
        self._scsi_done(task, pdu.status, sense, pdu.residual if pdu.underflow else 0)

    def _scsi_done(self, task: Task, status: int, sense: Optional[scsi.Sense],
                   residual: int) -> None:
        task.status, task.sense = status, sense
        if status == scsi.STATUS_GOOD:
            result = None
            if task.read:
                want = task.edtl - residual
                if task.received < want:
                    self._complete(task, None, ProtocolError(
                        "SCSI Response", "ResidualCount",
                        f"{task.describe()} got {task.received} bytes, {want} announced"))
                    return
                result = task.buf if want == task.edtl else task.buf[:want]
            self._complete(task, result, task.error)
            return
        if (sense is not None and sense.key == scsi.UNIT_ATTENTION
                and task.ua_retries < self.config.max_ua_retries):
            task.ua_retries += 1
            self.stats.ua_retries += 1
            self._reissue(task)
            return
        self._complete(task, None, ScsiError(task.name, status, sense, f"LUN {task.lun}"))

    def _reissue(self, task: Task) -> None:
        with self._lock:
            task._reset_progress()
            self._release_rx(task)
            self._pending.appendleft(task)
            self._drain()

    def _release_rx(self, task: Task) -> None:
        if task.rx_charge and self._pdu_free is not None:
            self._pdu_free(task.rx_charge)
        task.rx_charge = 0

    def _on_r2t(self, pdu: Any) -> None:
        task = self._task_for(pdu)
        off, length = pdu.buffer_offset, pdu.desired_length
        if task.data is None:
            raise ProtocolError("R2T", "ITT", f"{task.describe()} writes no data")
        if pdu.r2tsn != task.next_r2tsn:
            raise ProtocolError("R2T", "R2TSN", f"{pdu.r2tsn}, expected {task.next_r2tsn}")
        if length == 0 or off + length > task.edtl:
            raise ProtocolError("R2T", "DesiredDataTransferLength",
                                f"{off}+{length} is outside the {task.edtl} bytes of the write")
        if length > self.params.max_burst_length:
            raise ProtocolError("R2T", "DesiredDataTransferLength",
                                f"{length} exceeds MaxBurstLength {self.params.max_burst_length}")
        task.next_r2tsn += 1
        with self._lock:
            self._window(pdu)
            self._queue_data_out(task, pdu.ttt, off, length)

    def _on_nop_in(self, pdu: Any) -> None:
        if pdu.itt == RESERVED_TAG:              # the target pings us
            with self._lock:
                self._window(pdu)
                if pdu.ttt != RESERVED_TAG:
                    self.stats.target_pings_answered += 1
                    bhs = NOP_OUT.pack(lun=pdu.lun, itt=RESERVED_TAG, ttt=pdu.ttt,
                                       cmdsn=self._cmdsn, exp_statsn=self._conn.exp_statsn,
                                       dsl=pdu.dsl)
                    self._conn.queue(frame(bhs, bytes(pdu.data), self.params.header_digest,
                                           self.params.data_digest))
            return
        if pdu.itt not in self._ping_itts:
            raise ProtocolError("NOP-In", "ITT", f"0x{pdu.itt:08x} answers no ping of ours")
        self._ping_itts.discard(pdu.itt)
        with self._lock:
            self._status_sn(pdu, strict=False)
            self._window(pdu)

    def _on_logout_response(self, pdu: Any) -> None:
        task = self._task_for(pdu, "Logout")
        with self._lock:
            self._status_sn(pdu, strict=False)
        err = None if pdu.response == 0 else IscsiError(
            f"logout refused by the target (response {pdu.response})")
        self._complete(task, None, err)
        if err is None:
            self._closing.set()

    def _on_reject(self, pdu: Any) -> None:
        reason = REJECT_REASONS.get(pdu.reason, f"reason 0x{pdu.reason:02x}")
        with self._lock:
            self._status_sn(pdu, strict=False)
            self._window(pdu)
        rejected = bytes(pdu.data)
        itt = int.from_bytes(rejected[16:20], "big") if len(rejected) >= 20 else RESERVED_TAG
        task = self._tasks.get(itt)
        if task is None:
            raise ProtocolError("Reject", "Reason", f"target rejected a PDU: {reason}")
        self._complete(task, None, ProtocolError("Reject", "Reason",
                                                 f"target rejected {task.describe()}: {reason}"))

    def _on_async(self, pdu: Any) -> None:
        with self._lock:
            self._status_sn(pdu, strict=False)
            self._window(pdu)
        if pdu.event in (1, 2, 3):
            what = {1: "requests logout", 2: "drops the connection", 3: "drops all connections"}
            raise ConnectionLost(f"target {what[pdu.event]} (Async Message event {pdu.event})")

    # ------------------------------------------------------------------ completion

    def _complete(self, task: Task, result: Any, error: Optional[BaseException]) -> None:
        with self._lock:
            if self._tasks.pop(task.itt, None) is None:
                return
        self._finish(task, result, error)

    def _finish(self, task: Task, result: Any, error: Optional[BaseException]) -> None:
        task.result, task.error, task.done = result, error, True
        self._release(task)
        if task.event is not None:
            task.event.set()
        if task.callback is not None:
            try:
                task.callback(task)
            except Exception:            # a caller's bug must not stop the session
                self.stats.callback_errors += 1

    # ------------------------------------------------------------------ timers

    def _tick(self) -> None:
        now = time.monotonic()
        cfg = self.config
        self._next_tick = now + cfg.tick
        with self._lock:
            for task in self._tasks.values():
                if task.issued_at is not None and now - task.issued_at > cfg.command_timeout:
                    raise IscsiTimeout(f"{task.describe()} not answered within "
                                       f"{cfg.command_timeout:.1f}s")
            if self._pending and self.state == READY:
                oldest = self._pending[0].submitted_at
                if now - oldest > cfg.command_timeout:
                    raise IscsiTimeout(
                        f"CmdSN window closed for {now - oldest:.1f}s "
                        f"(next CmdSN {self._cmdsn}, MaxCmdSN {self._max_cmdsn})")
        last_rx = self._conn.reader.last_rx
        if self._ping_sent is not None and last_rx >= self._ping_sent:
            self._ping_sent = None               # the target spoke: it is alive
        if self._ping_sent is not None:
            if now - self._ping_sent > cfg.keepalive_timeout:
                raise IscsiTimeout(f"target {self.target} sent nothing for {now - last_rx:.1f}s "
                                   f"and did not answer a NOP-Out ping within "
                                   f"{cfg.keepalive_timeout:.1f}s")
        elif cfg.keepalive_interval and now - last_rx > cfg.keepalive_interval:
            self._ping(now)

    def _ping(self, now: float) -> None:
        with self._lock:
            itt = self._new_itt()
            self._ping_itts.add(itt)
            self._ping_sent = now
            self.stats.pings_sent += 1
            self._conn.queue(frame(NOP_OUT.pack(itt=itt, cmdsn=self._cmdsn,
                                                exp_statsn=self._conn.exp_statsn),
                                   b"", self.params.header_digest))

    # ------------------------------------------------------------------ recovery (ERL 0)

    def _recover(self, conn: Connection, cause: IscsiError) -> bool:
        """Reinstate the session and re-issue what was not answered; False if given up."""
        cfg = self.config
        with self._lock:
            if self.state != READY:
                return False
            self.state = RECOVERING
            self.recovering_since = time.monotonic()
            issued = sorted((t for t in self._tasks.values() if t.issued_at is not None),
                            key=lambda t: (t.cmdsn - self._exp_cmdsn) & M32)
            waiting = list(self._pending)
            self._pending.clear()
            self._ping_sent, self._ping_itts = None, set()
        conn.close()
        if cfg.max_reconnects <= 0:
            self._fail(cause, FAILED)
            return False
        self.stats.recoveries += 1
        self._recovery_hook("recovery_started", str(cause))
        expired = []
        for task in issued:
            task._reset_progress()
            self._release_rx(task)
            if task.kind != "SCSI":
                expired.append(task)
                continue
            task.retries += 1
            if task.retries > cfg.max_task_retries:
                expired.append(task)
        for task in expired:
            self._complete(task, None, cause)
        delay = float(self.params.default_time2wait)
        last: IscsiError = cause
        new_conn = None
        for _ in range(cfg.max_reconnects):
            if self._closing.wait(delay):
                break
            try:
                new_conn = self._connect()
                break
            except ChapError as exc:             # wrong secrets will not improve
                last = exc
                break
            except (IscsiError, OSError) as exc:
                last = exc if isinstance(exc, IscsiError) else ConnectionLost(str(exc))
                if isinstance(exc, LoginError) and exc.status_class == 2 and \
                        exc.status_detail in (2, 3, 4):
                    break                        # forbidden / not found / removed: give up
            delay = min(max(delay * 2, 0.5), cfg.reconnect_backoff_max)
        if new_conn is not None and self._closing.is_set():
            new_conn.close()                     # closed while we were logging in
            new_conn = None
        if new_conn is None:
            if not self._closing.is_set():
                failure = SessionFailed(f"session with {self.target} lost ({cause}) and not "
                                        f"recovered: {last}")
                self._fail(failure, FAILED)
            self._recovery_hook("recovery_ended", False, 0)
            return False
        with self._lock:
            self._conn = new_conn
            tur = []
            for lun in sorted(self._luns):
                t = Task("SCSI", scsi.test_unit_ready(), lun, 0, None, None)
                t.itt = self._new_itt()
                self._tasks[t.itt] = t
                tur.append(t)
            again = [t for t in issued if not t.done]
            self.stats.reissued += len(again)
            # commands submitted during the recovery queue after the re-issued ones
            self._pending = collections.deque(tur + again + waiting + list(self._pending))
            self.state = READY
            self._drain()
        self._recovery_hook("recovery_ended", True, len(again))
        return True

    def _recovery_hook(self, name: str, *args: Any) -> None:
        """Tell the owner about a recovery episode (the storage client records it as
        an event): ``recovery_started(cause)`` when the connection is given up,
        ``recovery_ended(reinstated, reissued)`` when it is reinstated or given up on.
        Optional methods of the hooks object; an error in one is counted, never raised
        into the receiver thread."""
        fn = getattr(self.hooks, name, None)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            self.stats.callback_errors += 1

    def _fail(self, error: BaseException, state: str) -> None:
        with self._lock:
            if self.state in (FAILED, CLOSED):
                if state == CLOSED:
                    self.state = CLOSED
                return
            self.state = state
            if state == FAILED:
                self.failure = error
            tasks = list(self._tasks.values())
            self._tasks.clear()
            self._pending.clear()
        for task in tasks:
            if not task.done:
                self._finish(task, None, error)

    # ------------------------------------------------------------------ conveniences

    def test_unit_ready(self, lun: int = 1) -> None:
        self.execute(scsi.test_unit_ready(), lun)

    def inquiry(self, lun: int = 1) -> scsi.InquiryData:
        return scsi.parse_inquiry(self.execute(scsi.inquiry(), lun, read_length=255))

    def read_capacity(self, lun: int = 1) -> scsi.Capacity:
        return scsi.parse_read_capacity16(
            self.execute(scsi.read_capacity16(), lun, read_length=32))

    def report_luns(self) -> list[int]:
        return scsi.parse_report_luns(self.execute(scsi.report_luns(), 0, read_length=4096))

    def read(self, lun: int, lba: int, blocks: int, block_size: int) -> bytearray:
        return self.execute(scsi.read16(lba, blocks), lun, read_length=blocks * block_size)

    def write(self, lun: int, lba: int, data: Buffer, block_size: int) -> None:
        n = len(memoryview(data).cast("B"))
        if n % block_size:
            raise ValueError(f"write of {n} bytes is not a multiple of the {block_size}-byte block")
        self.execute(scsi.write16(lba, n // block_size), lun, data=data)

    def synchronize_cache(self, lun: int = 1) -> None:
        self.execute(scsi.synchronize_cache10(), lun)
