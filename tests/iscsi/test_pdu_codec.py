"""The PDU layouts: fast codec and scapy layers agree byte for byte; the decoder
survives anything (property-based, hypothesis)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from testbed.iscsi import layers, pdu
from testbed.iscsi.connection import Connection, PduReader
from testbed.iscsi.errors import IscsiError, ProtocolError, DigestError
from tests.support.pdus import decode_outcome, decoder_input, pdu_case


@pytest.fixture(autouse=True)
def _no_layer_digests():
    yield
    layers.set_digests(False, False)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pdu_case())
def test_fast_codec_and_scapy_layers_agree_byte_for_byte(case):
    spec, fields, data, hd, dd = case
    fast = pdu.encode_pdu(spec, data, hd, dd, **fields)
    layers.set_digests(hd, dd)
    slow = layers.build(spec, data, **fields)
    assert fast == slow, spec.name
    # and both decoders read the same fields back
    mine = pdu.decode_pdu(fast, hd, dd)
    theirs = layers.ISCSI(fast)
    assert type(theirs).__name__ == f"ISCSI_{spec.name}"
    for name in spec.field_names:
        assert getattr(mine, name) == theirs.getfieldval(name), name
        if name in fields:
            assert getattr(mine, name) == fields[name], name
    assert mine.data == data == theirs.data


@pytest.mark.parametrize("spec", pdu.ALL_SPECS, ids=lambda s: s.name)
def test_every_layout_is_48_bytes_and_names_the_opcode(spec):
    assert spec.struct.size == pdu.BHS_LEN
    raw = spec.pack()
    assert raw[0] & 0x3F == spec.opcode
    assert pdu.decode_bhs(raw).spec is spec


def test_login_request_carries_the_immediate_bit_tgtd_requires():
    assert pdu.LOGIN_REQUEST.pack()[0] == 0x43


def test_capture_on_port_3260_dissects_as_iscsi():
    a = pdu.encode_pdu(pdu.SCSI_COMMAND, b"x" * 5, itt=7, cmdsn=9, write=1, lun=pdu.lun_field(1))
    b = pdu.encode_pdu(pdu.NOP_OUT, itt=8)
    pkt = IP(bytes(IP(dst="127.0.0.1") / TCP(sport=40000, dport=3260) / (a + b)))
    assert pkt[layers.ISCSI_ScsiCommand].itt == 7
    assert pkt[layers.ISCSI_ScsiCommand].data == b"xxxxx"
    assert pkt[layers.ISCSI_NopOut].itt == 8
    back = IP(bytes(IP(src="127.0.0.1") / TCP(sport=3260, dport=40000) /
                    pdu.encode_pdu(pdu.R2T, itt=7, desired_length=4096)))
    assert back[layers.ISCSI_R2T].desired_length == 4096


def test_digests_are_crc32c_little_endian():
    assert pdu.crc32c(b"123456789") == 0xE3069283
    raw = pdu.encode_pdu(pdu.NOP_OUT, b"ping", True, True, itt=1)
    assert raw[48:52] == struct.pack("<I", pdu.crc32c(raw[:48]))
    assert raw[-4:] == struct.pack("<I", pdu.crc32c(b"ping"))
    bad = bytearray(raw)
    bad[-1] ^= 1
    with pytest.raises(DigestError, match="DataDigest"):
        pdu.decode_pdu(bytes(bad), True, True)
    bad = bytearray(raw)
    bad[20] ^= 1
    with pytest.raises(DigestError, match="HeaderDigest"):
        pdu.decode_pdu(bytes(bad), True, True)


def test_serial_number_arithmetic_wraps():
    assert pdu.sn_lt(0xFFFFFFFF, 0) and pdu.sn_lt(1, 2) and not pdu.sn_lt(2, 1)
    assert pdu.sn_le(5, 5) and not pdu.sn_lt(5, 5)
    assert pdu.sn_lt(0xFFFFFF00, 0x10)


def test_lun_field_addressing():
    assert pdu.lun_field(1) == bytes([0, 1, 0, 0, 0, 0, 0, 0])
    assert pdu.lun_field(300) == bytes([0x41, 0x2C, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        pdu.lun_field(20000)


# ------------------------------------------------------------------ fuzz

# 1,500 cases here, like the codec's other properties (make check's time); make fuzz
# decodes 10,000 and counts each outcome (tests/support/fuzz.py)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decoder_input())
def test_fuzz_decoder_raises_only_project_errors(case):
    kind, what = decode_outcome(*case)
    assert kind in ("decoded", "typed"), (kind, what, case)


class _PieceSock:
    """A real socket that hands a PduReader its bytes in random-size pieces.

    The bytes are in the receive queue of one end of a socket pair, whose peer has shut
    down its sending side (so the reader sees the end of the stream); each
    ``recv_into`` takes at most the next cut.
    """

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.sock, peer = socket.socketpair()
        peer.sendall(data)
        peer.close()
        self.sock.setblocking(False)
        self.cuts = cuts

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, view: memoryview) -> int:
        step = self.cuts.pop() if self.cuts else len(view)
        return self.sock.recv_into(view[:max(1, min(step, len(view)))])

    def close(self) -> None:
        self.sock.close()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), max_size=20), st.booleans(),
       st.booleans(), st.integers(0, 1000))
def test_fuzz_stream_reader_raises_only_project_errors(raw, cuts, hd, dd, max_dsl):
    conn = Connection(("127.0.0.1", 9))
    conn.sock = sock = _PieceSock(raw, cuts)
    conn.header_digest, conn.data_digest = hd, dd
    reader = PduReader(conn, max_dsl=max_dsl)
    try:
        for _ in range(50):
            reader.read_pdu()
    except IscsiError:
        return
    finally:
        sock.close()
    pytest.fail("the reader consumed 50 PDUs from 400 bytes")


def test_reader_rejects_absurd_data_segment_length():
    conn = Connection(("127.0.0.1", 9))
    raw = bytearray(pdu.encode_pdu(pdu.DATA_IN, itt=1))
    raw[5:8] = b"\xff\xff\xff"
    conn.sock = sock = _PieceSock(bytes(raw), [])
    with pytest.raises(ProtocolError, match="DataSegmentLength"):
        PduReader(conn, max_dsl=262144).read_pdu()
    sock.close()
