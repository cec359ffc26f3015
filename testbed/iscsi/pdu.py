"""iSCSI PDU layouts, described once, and the fast codec built from them.

Every Basic Header Segment (BHS) of RFC 7143 §11 is 48 bytes, drawn in the RFC as
twelve rows of 32 bits. This module writes each PDU the initiator sends or receives
the same way: a :class:`PduSpec` is a list of rows, each row a list of named bit
fields that add up to 32 bits, or a raw byte string (LUN, ISID, CDB). From that one
description two things are built:

* the **fast codec** used by the I/O loop: a ``struct.Struct`` for the whole BHS
  (one ``I`` per row, ``Ns`` per raw field) and two small functions generated from
  the rows (as ``collections.namedtuple`` generates its class): ``pack(**fields)``
  and ``unpack(buf, offset)``. A decode is one ``unpack_from`` and a few shifts,
  about a microsecond, where scapy needs about 90;
* the **scapy layers** in :mod:`testbed.iscsi.layers`, whose ``fields_desc`` are
  generated from the same rows, so a capture of the testbed dissects in scapy.
  ``tests/iscsi/test_pdu_codec.py`` proves the two agree byte for byte.

The framing around the BHS (AHS, header digest, data segment, padding, data digest,
§11.2) is done by :func:`frame` (sending) and :class:`PduReader` in
:mod:`testbed.iscsi.connection` (receiving).

Field names follow the RFC in snake case: ``itt`` (Initiator Task Tag), ``ttt``,
``cmdsn``, ``exp_statsn``, ``edtl`` (Expected Data Transfer Length), ``dsl``
(DataSegmentLength), ``ahs_len`` (TotalAHSLength, in 4-byte words).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

import crc32c as _crc32c

from .errors import DigestError, ProtocolError

BHS_LEN = 48
DIGEST_LEN = 4
RESERVED_TAG = 0xFFFFFFFF          # ITT/TTT value meaning "none"
ISCSI_PORT = 3260                  # IANA's iSCSI port: the one definition, all import it


# --------------------------------------------------------------------------- description

@dataclass(frozen=True)
class Bits:
    """A field of ``width`` bits inside a 32-bit row."""
    name: str
    width: int


@dataclass(frozen=True)
class Raw:
    """A field of ``size`` opaque bytes (LUN, ISID, TSIH, CDB), kept as ``bytes``."""
    name: str
    size: int


Row = tuple[Bits, ...]
Item = Union[Row, Raw]


def row(*fields: tuple[str, int]) -> Row:
    """One 32-bit row: ``row(("f1", 8), ("f2", 24))``."""
    return tuple(Bits(n, w) for n, w in fields)


def u32(name: str) -> Row:
    return row((name, 32))


def rsvd(n: int) -> Row:
    return u32(f"reserved{n}")


def head(byte1: Iterable[tuple[str, int]], bytes2_3: Iterable[tuple[str, int]]) -> tuple[Row, Row]:
    """Bytes 0-7, common to every PDU: I bit and opcode, flags, lengths (§11.2.1)."""
    return (row(("reserved_b0", 1), ("immediate", 1), ("opcode", 6), *byte1, *bytes2_3),
            row(("ahs_len", 8), ("dsl", 24)))


class PduSpec:
    """One PDU type: opcode, names and its 48-byte layout; owns its fast codec.

    ``defaults`` are the values :meth:`pack` uses for fields not given (opcode,
    the I bit of Login, reserved tags).
    """

    def __init__(self, opcode: int, name: str, title: str, items: Iterable[Item],
                 defaults: Optional[dict[str, Any]] = None) -> None:
        self.opcode, self.name, self.title = opcode, name, title
        self.items: tuple[Item, ...] = tuple(items)
        self.defaults = {"opcode": opcode, **(defaults or {})}
        self._check_layout()
        self.field_names: tuple[str, ...] = tuple(
            f.name for it in self.items for f in (it if isinstance(it, tuple) else (it,)))
        self.widths: dict[str, int] = {
            f.name: (f.width if isinstance(f, Bits) else 8 * f.size)
            for it in self.items for f in (it if isinstance(it, tuple) else (it,))}
        self.raw_fields = frozenset(it.name for it in self.items if isinstance(it, Raw))
        self.struct = struct.Struct(">" + "".join(
            "I" if isinstance(it, tuple) else f"{it.size}s" for it in self.items))
        self.pdu_class = _make_pdu_class(self)
        self.source = _codec_source(self)
        namespace: dict[str, Any] = {"_st": self.struct, "_cls": self.pdu_class}
        exec(self.source, namespace)           # noqa: S102 - generated from the spec above
        self.pack: Callable[..., bytes] = namespace["pack"]
        self.unpack: Callable[[Any, int], Any] = namespace["unpack"]

    def _check_layout(self) -> None:
        size = 0
        for it in self.items:
            if isinstance(it, tuple):
                width = sum(f.width for f in it)
                if width != 32:
                    raise ValueError(f"{self.name}: row {[f.name for f in it]} is {width} bits, not 32")
                size += 4
            else:
                size += it.size
        if size != BHS_LEN:
            raise ValueError(f"{self.name}: BHS layout is {size} bytes, not {BHS_LEN}")

    def __repr__(self) -> str:
        return f"<PduSpec 0x{self.opcode:02x} {self.name}>"


def _make_pdu_class(spec: PduSpec) -> type:
    """A slotted class for decoded PDUs: one attribute per field, plus ahs and data."""
    names = spec.field_names

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in names
                          if not n.startswith("reserved") and n != "opcode")
        return f"{spec.name}({shown}, data={len(self.data)}B)"

    def fields(self: Any) -> dict[str, Any]:
        return {n: getattr(self, n) for n in names}

    return type(spec.name, (), {"__slots__": names + ("ahs", "data"), "spec": spec,
                                "__repr__": __repr__, "fields": fields})


def _codec_source(spec: PduSpec) -> str:
    """Python source of ``pack`` and ``unpack`` for one spec (kept as ``spec.source``)."""
    args, pack_vals, unpack_lines, assigns = [], [], [], []
    for idx, it in enumerate(spec.items):
        word = f"w{idx}"
        if isinstance(it, Raw):
            args.append(f"{it.name}={bytes(it.size)!r}")
            pack_vals.append(it.name)
            assigns.append(f"    p.{it.name} = {word}")
            continue
        shift, parts = 32, []
        for f in it:
            shift -= f.width
            mask = (1 << f.width) - 1
            args.append(f"{f.name}={spec.defaults.get(f.name, 0)!r}")
            parts.append(f"(({f.name} & {mask:#x}) << {shift})" if shift else f"({f.name} & {mask:#x})")
            get = f"{word} >> {shift}" if shift else word
            assigns.append(f"    p.{f.name} = ({get}) & {mask:#x}" if shift + f.width < 32
                           else f"    p.{f.name} = {get}")
        pack_vals.append(" | ".join(parts))
    words = ", ".join(f"w{i}" for i in range(len(spec.items)))
    return "\n".join([
        f"def pack(*, {', '.join(args)}):",
        f"    return _st.pack({', '.join(pack_vals)})",
        "",
        "def unpack(buf, offset=0):",
        f"    {words}, = _st.unpack_from(buf, offset)",
        "    p = _cls.__new__(_cls)",
        *assigns,
        "    p.ahs = b''",
        "    p.data = b''",
        "    return p",
        ""])


# --------------------------------------------------------------------------- the PDUs
# Byte offsets are those of RFC 7143 §11; the notes in docs/iscsi-notes.md §1.2 list
# them in one table. Initiator -> target opcodes are 0x00-0x1f, target -> initiator 0x20-0x3f.

_F = ("final", 1)
_LUN = Raw("lun", 8)

NOP_OUT = PduSpec(0x00, "NopOut", "NOP-Out", [
    *head([_F, ("reserved_b1", 7)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ttt"), u32("cmdsn"), u32("exp_statsn"),
    rsvd(32), rsvd(36), rsvd(40), rsvd(44)],
    defaults={"immediate": 1, "final": 1, "ttt": RESERVED_TAG})

SCSI_COMMAND = PduSpec(0x01, "ScsiCommand", "SCSI Command", [
    *head([_F, ("read", 1), ("write", 1), ("reserved_b1", 2), ("attr", 3)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("edtl"), u32("cmdsn"), u32("exp_statsn"), Raw("cdb", 16)],
    defaults={"final": 1, "attr": 1})

TASK_MGMT_REQUEST = PduSpec(0x02, "TaskMgmtRequest", "Task Management Function Request", [
    *head([_F, ("function", 7)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ref_task_tag"), u32("cmdsn"), u32("exp_statsn"),
    u32("ref_cmdsn"), u32("exp_datasn"), rsvd(40), rsvd(44)],
    defaults={"immediate": 1, "final": 1, "ref_task_tag": RESERVED_TAG})

LOGIN_REQUEST = PduSpec(0x03, "LoginRequest", "Login Request", [
    *head([("transit", 1), ("cont", 1), ("reserved_b1", 2), ("csg", 2), ("nsg", 2)],
          [("version_max", 8), ("version_min", 8)]),
    Raw("isid", 6), Raw("tsih", 2), u32("itt"), row(("cid", 16), ("reserved_20", 16)),
    u32("cmdsn"), u32("exp_statsn"), rsvd(32), rsvd(36), rsvd(40), rsvd(44)],
    defaults={"immediate": 1})

TEXT_REQUEST = PduSpec(0x04, "TextRequest", "Text Request", [
    *head([_F, ("cont", 1), ("reserved_b1", 6)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ttt"), u32("cmdsn"), u32("exp_statsn"),
    rsvd(32), rsvd(36), rsvd(40), rsvd(44)],
    defaults={"final": 1, "ttt": RESERVED_TAG})

DATA_OUT = PduSpec(0x05, "DataOut", "SCSI Data-Out", [
    *head([_F, ("reserved_b1", 7)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ttt"), rsvd(24), u32("exp_statsn"), rsvd(32),
    u32("datasn"), u32("buffer_offset"), rsvd(44)],
    defaults={"ttt": RESERVED_TAG})

LOGOUT_REQUEST = PduSpec(0x06, "LogoutRequest", "Logout Request", [
    *head([_F, ("reason", 7)], [("reserved_b2", 16)]),
    rsvd(8), rsvd(12), u32("itt"), row(("cid", 16), ("reserved_20", 16)),
    u32("cmdsn"), u32("exp_statsn"), rsvd(32), rsvd(36), rsvd(40), rsvd(44)],
    defaults={"immediate": 1, "final": 1})

NOP_IN = PduSpec(0x20, "NopIn", "NOP-In", [
    *head([_F, ("reserved_b1", 7)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ttt"), u32("statsn"), u32("exp_cmdsn"), u32("max_cmdsn"),
    rsvd(36), rsvd(40), rsvd(44)],
    defaults={"final": 1})

SCSI_RESPONSE = PduSpec(0x21, "ScsiResponse", "SCSI Response", [
    *head([_F, ("reserved_b1", 2), ("bidi_overflow", 1), ("bidi_underflow", 1),
           ("overflow", 1), ("underflow", 1), ("reserved_b1b", 1)],
          [("response", 8), ("status", 8)]),
    rsvd(8), rsvd(12), u32("itt"), u32("snack_tag"), u32("statsn"), u32("exp_cmdsn"),
    u32("max_cmdsn"), u32("exp_datasn"), u32("bidi_residual"), u32("residual")],
    defaults={"final": 1})

TASK_MGMT_RESPONSE = PduSpec(0x22, "TaskMgmtResponse", "Task Management Function Response", [
    *head([_F, ("reserved_b1", 7)], [("response", 8), ("reserved_b3", 8)]),
    rsvd(8), rsvd(12), u32("itt"), rsvd(20), u32("statsn"), u32("exp_cmdsn"),
    u32("max_cmdsn"), rsvd(36), rsvd(40), rsvd(44)],
    defaults={"final": 1})

LOGIN_RESPONSE = PduSpec(0x23, "LoginResponse", "Login Response", [
    *head([("transit", 1), ("cont", 1), ("reserved_b1", 2), ("csg", 2), ("nsg", 2)],
          [("version_max", 8), ("version_active", 8)]),
    Raw("isid", 6), Raw("tsih", 2), u32("itt"), rsvd(20), u32("statsn"),
    u32("exp_cmdsn"), u32("max_cmdsn"),
    row(("status_class", 8), ("status_detail", 8), ("reserved_38", 16)),
    rsvd(40), rsvd(44)])

TEXT_RESPONSE = PduSpec(0x24, "TextResponse", "Text Response", [
    *head([_F, ("cont", 1), ("reserved_b1", 6)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ttt"), u32("statsn"), u32("exp_cmdsn"), u32("max_cmdsn"),
    rsvd(36), rsvd(40), rsvd(44)])

DATA_IN = PduSpec(0x25, "DataIn", "SCSI Data-In", [
    *head([_F, ("ack", 1), ("reserved_b1", 3), ("overflow", 1), ("underflow", 1),
           ("status_present", 1)], [("reserved_b2", 8), ("status", 8)]),
    _LUN, u32("itt"), u32("ttt"), u32("statsn"), u32("exp_cmdsn"), u32("max_cmdsn"),
    u32("datasn"), u32("buffer_offset"), u32("residual")],
    defaults={"ttt": RESERVED_TAG})

LOGOUT_RESPONSE = PduSpec(0x26, "LogoutResponse", "Logout Response", [
    *head([_F, ("reserved_b1", 7)], [("response", 8), ("reserved_b3", 8)]),
    rsvd(8), rsvd(12), u32("itt"), rsvd(20), u32("statsn"), u32("exp_cmdsn"),
    u32("max_cmdsn"), rsvd(36), row(("time2wait", 16), ("time2retain", 16)), rsvd(44)],
    defaults={"final": 1})

R2T = PduSpec(0x31, "R2T", "Ready To Transfer (R2T)", [
    *head([_F, ("reserved_b1", 7)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), u32("ttt"), u32("statsn"), u32("exp_cmdsn"), u32("max_cmdsn"),
    u32("r2tsn"), u32("buffer_offset"), u32("desired_length")],
    defaults={"final": 1})

ASYNC_MESSAGE = PduSpec(0x32, "AsyncMessage", "Asynchronous Message", [
    *head([_F, ("reserved_b1", 7)], [("reserved_b2", 16)]),
    _LUN, u32("itt"), rsvd(20), u32("statsn"), u32("exp_cmdsn"), u32("max_cmdsn"),
    row(("event", 8), ("vcode", 8), ("param1", 16)),
    row(("param2", 16), ("param3", 16)), rsvd(44)],
    defaults={"final": 1, "itt": RESERVED_TAG})

REJECT = PduSpec(0x3F, "Reject", "Reject", [
    *head([_F, ("reserved_b1", 7)], [("reason", 8), ("reserved_b3", 8)]),
    rsvd(8), rsvd(12), u32("itt"), rsvd(20), u32("statsn"), u32("exp_cmdsn"),
    u32("max_cmdsn"), u32("datasn"), rsvd(40), rsvd(44)],
    defaults={"final": 1, "itt": RESERVED_TAG})

ALL_SPECS: tuple[PduSpec, ...] = (
    NOP_OUT, SCSI_COMMAND, TASK_MGMT_REQUEST, LOGIN_REQUEST, TEXT_REQUEST, DATA_OUT,
    LOGOUT_REQUEST, NOP_IN, SCSI_RESPONSE, TASK_MGMT_RESPONSE, LOGIN_RESPONSE,
    TEXT_RESPONSE, DATA_IN, LOGOUT_RESPONSE, R2T, ASYNC_MESSAGE, REJECT)
SPEC_BY_OPCODE: dict[int, PduSpec] = {s.opcode: s for s in ALL_SPECS}

REJECT_REASONS = {
    0x01: "reserved", 0x02: "data (payload) digest error", 0x03: "SNACK reject",
    0x04: "protocol error", 0x05: "command not supported", 0x06: "immediate command reject",
    0x07: "task in progress", 0x08: "invalid data ack", 0x09: "invalid PDU field",
    0x0A: "long operation reject (out of resources)", 0x0B: "negotiation reset",
    0x0C: "waiting for logout"}


# --------------------------------------------------------------------------- framing

def crc32c(data: Any, value: int = 0) -> int:
    """CRC32C (Castagnoli) as RFC 7143 §13.1 digests use it."""
    return _crc32c.crc32c(data, value)


_DIGEST = struct.Struct("<I")         # digests travel little-endian (see iscsi-notes §1.7)
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def pad_len(n: int) -> int:
    return -n & 3


def frame(bhs: bytes, data: Any = b"", header_digest: bool = False,
          data_digest: bool = False) -> list:
    """The buffers of one PDU on the wire, ready for ``socket.sendmsg``.

    ``bhs`` must already carry the right DataSegmentLength; ``data`` may be any
    buffer (a memoryview of the caller's data: it is not copied).
    """
    parts = [bhs + _DIGEST.pack(crc32c(bhs))] if header_digest else [bhs]
    n = len(data)
    if n:
        pad = _PADS[n & 3]
        parts.append(data)
        if pad:
            parts.append(pad)
        if data_digest:
            parts.append(_DIGEST.pack(crc32c(pad, crc32c(data)) if pad else crc32c(data)))
    return parts


def decode_bhs(buf: Any, offset: int = 0) -> Any:
    """Decode the 48-byte BHS at ``buf[offset:]``; unknown opcodes are a ProtocolError."""
    if len(buf) - offset < BHS_LEN:
        raise ProtocolError("iSCSI", "BHS", f"truncated header: {len(buf) - offset} of {BHS_LEN} bytes")
    op = buf[offset] & 0x3F
    spec = SPEC_BY_OPCODE.get(op)
    if spec is None:
        raise ProtocolError("iSCSI", "opcode", f"unknown opcode 0x{op:02x}")
    return spec.unpack(buf, offset)


def check_header_digest(buf: Any, hdr_end: int, start: int, pdu_name: str) -> None:
    want = _DIGEST.unpack_from(buf, hdr_end)[0]
    got = crc32c(memoryview(buf)[start:hdr_end])
    if want != got:
        raise DigestError(pdu_name, "HeaderDigest", f"CRC32C 0x{want:08x} received, 0x{got:08x} computed")


def check_data_digest(buf: Any, data_start: int, data_end_padded: int, pdu_name: str) -> None:
    want = _DIGEST.unpack_from(buf, data_end_padded)[0]
    got = crc32c(memoryview(buf)[data_start:data_end_padded])
    if want != got:
        raise DigestError(pdu_name, "DataDigest", f"CRC32C 0x{want:08x} received, 0x{got:08x} computed")


def decode_pdu(raw: bytes, header_digest: bool = False, data_digest: bool = False) -> Any:
    """Decode one complete PDU from ``raw`` (the slow, whole-buffer path used by tests
    and tools; the session uses :class:`testbed.iscsi.connection.PduReader`)."""
    pdu = decode_bhs(raw)
    name = pdu.spec.title
    pos = BHS_LEN + 4 * pdu.ahs_len
    if len(raw) < pos:
        raise ProtocolError(name, "TotalAHSLength", f"{pdu.ahs_len} words but only {len(raw) - BHS_LEN} bytes follow")
    pdu.ahs = bytes(raw[BHS_LEN:pos])
    if header_digest:
        if len(raw) < pos + DIGEST_LEN:
            raise ProtocolError(name, "HeaderDigest", "truncated")
        check_header_digest(raw, pos, 0, name)
        pos += DIGEST_LEN
    end = pos + pdu.dsl
    padded = end + pad_len(pdu.dsl)
    need = padded + (DIGEST_LEN if data_digest and pdu.dsl else 0)
    if len(raw) < need:
        raise ProtocolError(name, "DataSegmentLength",
                            f"{pdu.dsl} bytes announced but only {max(0, len(raw) - pos)} present")
    if len(raw) > need:
        raise ProtocolError(name, "DataSegmentLength",
                            f"{pdu.dsl} bytes announced but {len(raw) - pos} follow the header")
    if data_digest and pdu.dsl:
        check_data_digest(raw, pos, padded, name)
    pdu.data = bytes(raw[pos:end])
    return pdu


def encode_pdu(spec: PduSpec, data: bytes = b"", header_digest: bool = False,
               data_digest: bool = False, **fields: Any) -> bytes:
    """Encode one whole PDU as bytes (DataSegmentLength filled in from ``data``)."""
    fields.setdefault("dsl", len(data))
    return b"".join(bytes(p) for p in frame(spec.pack(**fields), data, header_digest, data_digest))


# --------------------------------------------------------------------------- sequence numbers

def sn_lt(a: int, b: int) -> bool:
    """RFC 1982 serial-number arithmetic, 32 bits: is ``a`` before ``b``?"""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


def lun_field(lun: int) -> bytes:
    """The 8-byte LUN field: peripheral addressing up to 255, flat up to 16383 (SAM)."""
    if not 0 <= lun <= 0x3FFF:
        raise ValueError(f"LUN {lun} is outside 0..16383")
    if lun < 256:
        return bytes((0, lun, 0, 0, 0, 0, 0, 0))
    return bytes((0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0, 0, 0))
