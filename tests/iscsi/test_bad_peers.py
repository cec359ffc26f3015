"""A broken target must end in a clear, typed error within the timeout: never a
hang, never an unhandled exception in a thread."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from testbed.iscsi import pdu, scsi
from testbed.iscsi.errors import (ConnectionLost, DigestError, IscsiError, IscsiTimeout,
                                  ProtocolError, ScsiError)
from testbed.iscsi.pdu import DATA_IN, NOP_IN, R2T, SCSI_RESPONSE, encode_pdu
from testbed.iscsi.session import Session, SessionConfig

from .fake_target import FakeTarget, Peer

IQN = "iqn.2026-11.org.testbed:fake"
TIMEOUT = 2.0


def session_for(fake: FakeTarget, **cfg) -> Session:
    cfg.setdefault("login_timeout", TIMEOUT)
    cfg.setdefault("command_timeout", TIMEOUT)
    cfg.setdefault("keepalive_interval", 0)
    cfg.setdefault("max_reconnects", 0)
    if fake.digests:
        cfg.update(header_digest=True, data_digest=True)
    return Session(fake.portal, IQN, SessionConfig(**cfg)).open()


@pytest.fixture(autouse=True)
def no_thread_leaks_exceptions():
    """Any exception escaping a thread fails the test."""
    seen = []
    old = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    yield
    threading.excepthook = old
    assert not seen, seen


def run_read(fake: FakeTarget, **cfg) -> BaseException:
    """Log in, issue one READ(16) of 4 KiB, return the error it ended with."""
    s = session_for(fake, **cfg)
    t0 = time.monotonic()
    try:
        with pytest.raises(IscsiError) as err:
            s.execute(scsi.read16(0, 8), 1, read_length=4096, timeout=4 * TIMEOUT)
        assert time.monotonic() - t0 < 2 * TIMEOUT + 1, "error came too late"
        return err.value
    finally:
        s.close(timeout=1)
        assert not fake.errors, fake.errors


def answer_with(raw_of: "callable", then_close: bool = False) -> "callable":
    """Read the command, send what ``raw_of`` makes of it, then close or stay silent."""
    def behaviour(peer: Peer) -> None:
        cmd = peer.read()
        peer.send_raw(raw_of(peer, cmd))
        if then_close:
            peer.sock.close()
        else:
            time.sleep(5)
    return behaviour


def good_data_in(peer: Peer, cmd, data: bytes = b"\xab" * 4096, **over) -> bytes:
    fields = dict(final=1, status_present=1, itt=cmd.itt, statsn=peer.statsn, datasn=0,
                  buffer_offset=0, exp_cmdsn=cmd.cmdsn + 1, max_cmdsn=cmd.cmdsn + 17)
    fields.update(over)
    return encode_pdu(DATA_IN, data, peer.digests, peer.digests, **fields)


def test_sane_fake_target_works():
    """The fake target itself is right: a correct answer reads fine."""
    with FakeTarget(answer_with(lambda p, c: good_data_in(p, c))) as fake:
        s = session_for(fake)
        try:
            assert s.execute(scsi.read16(0, 8), 1, read_length=4096, timeout=5) == b"\xab" * 4096
        finally:
            s.close(timeout=1)


def flip(raw: bytes, index: int) -> bytes:
    b = bytearray(raw)
    b[index] ^= 0x40
    return bytes(b)


CASES = {
    # name: (how the target answers the READ, digests on?, error type, text in the message)
    "truncated-header-then-close": (
        lambda p, c: good_data_in(p, c)[:20], False, ConnectionLost, "middle of a PDU"),
    "initiator-opcode-from-target": (
        lambda p, c: encode_pdu(pdu.SCSI_COMMAND, itt=c.itt), False, ProtocolError,
        "not expected in full feature phase"),
    "unknown-opcode": (
        lambda p, c: b"\x1c" + good_data_in(p, c)[1:], False, ProtocolError, "unknown opcode 0x1c"),
    "bad-header-digest": (
        lambda p, c: flip(good_data_in(p, c), 49), True, DigestError, "HeaderDigest"),
    "bad-data-digest": (
        lambda p, c: flip(good_data_in(p, c), -2), True, DigestError, "DataDigest"),
    "absurd-data-segment-length": (
        lambda p, c: good_data_in(p, c)[:5] + b"\xff\xff\xf0" + good_data_in(p, c)[8:],
        False, ProtocolError, "DataSegmentLength"),
    "data-past-the-buffer": (
        lambda p, c: good_data_in(p, c, buffer_offset=1024), False, ProtocolError, "BufferOffset"),
    "expcmdsn-beyond-what-was-sent": (
        lambda p, c: good_data_in(p, c, exp_cmdsn=c.cmdsn + 1000, max_cmdsn=c.cmdsn + 1100),
        False, ProtocolError, "ExpCmdSN"),
    "statsn-out-of-sequence": (
        lambda p, c: good_data_in(p, c, statsn=p.statsn + 77), False, ProtocolError, "StatSN"),
    "datasn-out-of-sequence": (
        lambda p, c: good_data_in(p, c, datasn=5), False, ProtocolError, "DataSN"),
    "unknown-task-tag": (
        lambda p, c: good_data_in(p, c, itt=c.itt + 999), False, ProtocolError, "ITT"),
    "reject": (
        lambda p, c: encode_pdu(pdu.REJECT, encode_pdu(pdu.SCSI_COMMAND, itt=c.itt), reason=9,
                                statsn=p.statsn, exp_cmdsn=c.cmdsn + 1, max_cmdsn=c.cmdsn + 17),
        False, ProtocolError, "invalid PDU field"),
    "garbage-sense": (
        lambda p, c: encode_pdu(SCSI_RESPONSE, b"\x00\x40" + b"\x01" * 10, itt=c.itt, status=2,
                                statsn=p.statsn, exp_cmdsn=c.cmdsn + 1, max_cmdsn=c.cmdsn + 17),
        False, ProtocolError, "SenseLength"),
    "truncated-header-then-nothing": (
        lambda p, c: good_data_in(p, c)[:30], False, IscsiTimeout, "not answered within"),
    "no-answer-at-all": (
        lambda p, c: b"", False, IscsiTimeout, "not answered within"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_target_ends_in_a_clear_error(name):
    raw_of, digests, etype, text = CASES[name]
    with FakeTarget(answer_with(raw_of, name.endswith("then-close")), digests=digests) as fake:
        err = run_read(fake)
    assert isinstance(err, etype), f"{type(err).__name__}: {err}"
    assert text in str(err), str(err)


def test_check_condition_is_a_scsi_error_not_a_session_error():
    sense = bytes([0x70, 0, 0x3, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0])
    seg = struct.pack(">H", len(sense)) + sense
    with FakeTarget(answer_with(lambda p, c: encode_pdu(
            SCSI_RESPONSE, seg, itt=c.itt, status=2, statsn=p.statsn,
            exp_cmdsn=c.cmdsn + 1, max_cmdsn=c.cmdsn + 17))) as fake:
        err = run_read(fake)
    assert isinstance(err, ScsiError)
    assert "MEDIUM ERROR" in str(err) and "UNRECOVERED READ ERROR" in str(err)


def test_silent_target_at_login_times_out():
    with FakeTarget(lambda peer: time.sleep(10), login=False) as fake:
        t0 = time.monotonic()
        with pytest.raises(IscsiTimeout):
            session_for(fake)
        assert time.monotonic() - t0 < TIMEOUT + 1


def test_target_closing_during_login_is_connection_lost():
    with FakeTarget(lambda peer: peer.sock.close(), login=False) as fake:
        with pytest.raises(ConnectionLost):
            session_for(fake)


def test_dead_target_found_by_keepalive():
    """Nothing outstanding, the target goes silent: the ping finds it within the timeout."""
    with FakeTarget(lambda peer: time.sleep(10)) as fake:
        s = session_for(fake, keepalive_interval=0.5, keepalive_timeout=1.0)
        try:
            t0 = time.monotonic()
            while s.failure is None and time.monotonic() - t0 < 5:
                time.sleep(0.05)
            assert isinstance(s.failure, IscsiTimeout), s.failure
            assert "NOP-Out ping" in str(s.failure)
            assert time.monotonic() - t0 < 0.5 + 1.0 + 1.0
        finally:
            s.close(timeout=1)


def test_window_never_opening_times_out():
    """MaxCmdSN stays below the next CmdSN: commands wait, then time out."""
    def behaviour(peer: Peer) -> None:
        cmd = peer.read()
        # answer, but close the window: MaxCmdSN = ExpCmdSN - 1
        peer.send_raw(good_data_in(peer, cmd, exp_cmdsn=cmd.cmdsn + 1, max_cmdsn=cmd.cmdsn))
        time.sleep(10)

    with FakeTarget(behaviour, window=1) as fake:
        s = session_for(fake)
        try:
            s.execute(scsi.read16(0, 8), 1, read_length=4096, timeout=5)
            t0 = time.monotonic()
            with pytest.raises(IscsiTimeout, match="window closed"):
                s.execute(scsi.read16(0, 8), 1, read_length=4096, timeout=10)
            assert time.monotonic() - t0 < TIMEOUT + 1
        finally:
            s.close(timeout=1)


def test_r2t_beyond_the_write_is_refused():
    def behaviour(peer: Peer) -> None:
        cmd = peer.read()
        peer.send(R2T, itt=cmd.itt, ttt=5, statsn=peer.statsn, exp_cmdsn=cmd.cmdsn + 1,
                  max_cmdsn=cmd.cmdsn + 17, r2tsn=0, buffer_offset=8192, desired_length=1 << 20)
        time.sleep(5)

    with FakeTarget(behaviour) as fake:
        s = session_for(fake)
        try:
            with pytest.raises(ProtocolError, match="DesiredDataTransferLength"):
                s.execute(scsi.write16(0, 32), 1, data=bytes(16384), timeout=5)
        finally:
            s.close(timeout=1)


def test_recovery_gives_up_on_a_target_that_stays_broken():
    """With reconnects allowed, a target that keeps sending bad digests exhausts them."""
    with FakeTarget(answer_with(lambda p, c: flip(good_data_in(p, c), -2)), digests=True,
                    keys={"DefaultTime2Wait": "0"}) as fake:
        s = session_for(fake, max_reconnects=2, max_task_retries=1, reconnect_backoff_max=0.2)
        try:
            with pytest.raises(DigestError):
                s.execute(scsi.read16(0, 8), 1, read_length=4096, timeout=20)
            # first connection, then one per re-issue; the command gave up after 1 re-issue
            assert fake.connections >= 2 and s.stats.reissued == 1
        finally:
            s.close(timeout=1)


def test_nop_in_ping_from_target_is_echoed():
    got = {}

    def behaviour(peer: Peer) -> None:
        peer.send(NOP_IN, b"hello", itt=pdu.RESERVED_TAG, ttt=0x1234, lun=pdu.lun_field(0),
                  statsn=peer.statsn, **peer.window())
        got["reply"] = peer.read()
        time.sleep(5)

    with FakeTarget(behaviour) as fake:
        s = session_for(fake)
        try:
            t0 = time.monotonic()
            while "reply" not in got and time.monotonic() - t0 < 3:
                time.sleep(0.02)
        finally:
            s.close(timeout=1)
    reply = got["reply"]
    assert reply.opcode == 0 and reply.immediate and reply.itt == pdu.RESERVED_TAG
    assert reply.ttt == 0x1234 and reply.data == b"hello"
