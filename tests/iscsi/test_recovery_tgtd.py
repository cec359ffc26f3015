"""ERL 0 recovery against a real tgtd, and the storage client's hooks.

The main scenario: tgtd is killed (SIGKILL) in the middle of a stream of writes and
a new tgtd is started on the same port and the same LUN file. The stream must
complete after session reinstatement, and every write that was acknowledged must
be on the LUN.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from testbed.iscsi import scsi
from testbed.iscsi.connection import SessionHooks
from testbed.iscsi.errors import NoMemory, SessionFailed

pytestmark = pytest.mark.tgtd

BS = 512


class WriteStream:
    """``total`` writes of ``blocks`` blocks, ``qd`` in flight, sequential LBAs."""

    def __init__(self, session, total: int, qd: int, blocks: int = 16) -> None:
        self.session, self.total, self.qd, self.blocks = session, total, qd, blocks
        self.acked: dict[int, bytes] = {}
        self.failed: list[BaseException] = []
        self.next = 0
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.outstanding = 0

    def start(self) -> "WriteStream":
        for _ in range(self.qd):
            self._issue()
        return self

    def _issue(self) -> None:
        with self.lock:
            if self.next >= self.total:
                return
            i, self.next = self.next, self.next + 1
            self.outstanding += 1
        lba = i * self.blocks
        data = os.urandom(self.blocks * BS)
        self.session.submit(scsi.write16(lba, self.blocks), 1, data=data,
                            callback=lambda t, lba=lba, data=data: self._done(t, lba, data))

    def _done(self, task, lba: int, data: bytes) -> None:
        with self.lock:
            self.outstanding -= 1
            if task.error is None:
                self.acked[lba] = data
            else:
                self.failed.append(task.error)
            last = self.outstanding == 0 and self.next >= self.total
        if last:
            self.finished.set()
        elif task.error is None:
            self._issue()
        elif self.outstanding == 0:
            self.finished.set()


def test_tgtd_killed_and_restarted_mid_stream(make_tgt):
    first = make_tgt()
    port, lun = first.daemon.port, first.lun_path
    s = first.session(command_timeout=5, max_reconnects=10, reconnect_backoff_max=1)
    try:
        s.test_unit_ready(1)
        stream = WriteStream(s, total=3000, qd=16).start()
        deadline = time.monotonic() + 10
        while len(stream.acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(stream.acked) >= 300, "the stream did not get going"
        first.daemon.kill()
        acked_at_kill = len(stream.acked)
        time.sleep(1.0)
        second = make_tgt(port=port, lun_path=lun)
        assert stream.finished.wait(60), "the stream did not complete after the restart"
        assert not stream.failed, stream.failed[:3]
        assert len(stream.acked) == 3000 and acked_at_kill < 3000
        assert s.stats.recoveries >= 1 and s.stats.reissued >= 1
        s.synchronize_cache(1)
        for lba, data in stream.acked.items():
            assert s.read(1, lba, len(data) // BS, BS) == data, f"LBA {lba}"
            assert second.backing(lba * BS, len(data)) == data, f"LBA {lba} in the file"
    finally:
        s.close()


def test_connection_dropped_by_target_is_reinstated(tgt):
    with tgt.session(max_reconnects=3) as s:
        s.test_unit_ready(1)
        s.write(1, 0, b"a" * 4096, BS)
        conns = tgt.daemon.connections(tid=1)
        assert len(conns) == 1
        tgt.daemon.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "conn", "--tid", "1",
                          "--sid", str(conns[0].sid), "--cid", str(conns[0].cid))
        assert s.read(1, 0, 8, BS) == b"a" * 4096     # waits out the recovery
        assert s.stats.recoveries == 1
        # reinstatement: one session on the target, not the old one plus a new one
        assert len(tgt.daemon.connections(tid=1)) == 1


def test_writes_that_cannot_be_done_are_reported_failed(tgt):
    s = tgt.session(command_timeout=2, max_reconnects=2, reconnect_backoff_max=0.5)
    try:
        s.test_unit_ready(1)
        tgt.daemon.kill()
        t0 = time.monotonic()
        task = s.submit(scsi.write16(0, 8), 1, data=bytes(4096), wait=True)
        with pytest.raises(SessionFailed, match="not recovered"):
            task.wait(30)
        assert time.monotonic() - t0 < 15
        assert s.failure is not None
        with pytest.raises(SessionFailed):
            s.test_unit_ready(1)
    finally:
        s.close()


class RecordingHooks(SessionHooks):
    def __init__(self, refuse_for: float = 0.0) -> None:
        self.bound, self.closed = [], []
        self.received = 0
        self.held = 0
        self.allocs = 0
        self.refused = 0
        self.refuse_until = time.monotonic() + refuse_for
        self.lock = threading.Lock()

    def socket_bound(self, sock, target):
        # bound, not yet connected: the client can register the flow first
        assert sock.getsockname()[1] != 0
        with pytest.raises(OSError) as err:
            sock.getpeername()
        assert err.value.errno == errno.ENOTCONN
        self.bound.append((sock.getsockname(), target))

    def socket_closed(self, sock):
        self.closed.append(sock)

    def bytes_received(self, sock, n):
        self.received += n

    def pdu_alloc(self, nbytes):
        with self.lock:
            if time.monotonic() < self.refuse_until:
                self.refused += 1
                return False
            self.held += nbytes
            self.allocs += 1
            return True

    def pdu_free(self, nbytes):
        with self.lock:
            self.held -= nbytes
            assert self.held >= 0


def test_hooks_see_every_connection_and_every_buffer(tgt):
    from testbed.iscsi.session import Session, SessionConfig
    hooks = RecordingHooks()
    s = Session(tgt.portal, tgt.iqn, SessionConfig(login_timeout=5, max_reconnects=3),
                hooks=hooks).open()
    try:
        s.test_unit_ready(1)
        data = os.urandom(300 * 1024)
        s.write(1, 0, data, BS)
        assert s.read(1, 0, len(data) // BS, BS) == data
        conns = tgt.daemon.connections(tid=1)
        tgt.daemon.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "conn", "--tid", "1",
                          "--sid", str(conns[0].sid), "--cid", str(conns[0].cid))
        assert s.read(1, 0, 8, BS) == data[:4096]
        assert len(hooks.bound) == 2 and hooks.bound[0][1] == tgt.portal
        assert len(hooks.closed) == 1
        assert hooks.received > len(data) * 1
        assert hooks.allocs > 0 and hooks.held == 0      # every buffer given back
    finally:
        s.close()
    assert len(hooks.closed) == 2


def test_memory_pressure_slows_but_does_not_break(tgt):
    from testbed.iscsi.session import Session, SessionConfig
    hooks = RecordingHooks(refuse_for=0.5)
    with Session(tgt.portal, tgt.iqn, SessionConfig(login_timeout=5, command_timeout=5),
                 hooks=hooks) as s:
        t0 = time.monotonic()
        s.test_unit_ready(1)
        s.write(1, 0, b"z" * 8192, BS)
        assert time.monotonic() - t0 >= 0.4 and hooks.refused > 0
        assert s.read(1, 0, 16, BS) == b"z" * 8192
        assert hooks.held == 0
        hooks.refuse_until = time.monotonic() + 60      # no memory at all, from now on
        t0 = time.monotonic()
        with pytest.raises(NoMemory, match="no memory"):
            s.write(1, 0, b"y" * 8192, BS)
        assert time.monotonic() - t0 < 8
        hooks.refuse_until = 0
        assert s.read(1, 0, 16, BS) == b"z" * 8192       # nothing half-written
