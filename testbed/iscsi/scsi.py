"""SCSI commands the initiator issues, and the decoding of what comes back.

CDBs (Command Descriptor Blocks) follow SPC-4 / SBC-3; each builder returns the
16-byte CDB field of the SCSI Command PDU (shorter CDBs zero-padded) together
with its name for error messages. Sense data (fixed format 0x70/0x71 and descriptor
format 0x72/0x73) is decoded into :class:`Sense`, whose ``str`` spells out the
sense key and ASC/ASCQ by name, e.g.
``sense key 0x6 UNIT ATTENTION, ASC/ASCQ 0x29/0x00 (POWER ON, RESET, OR BUS DEVICE RESET OCCURRED)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from .errors import ProtocolError

# --------------------------------------------------------------------------- names

STATUS_GOOD = 0x00
STATUS_CHECK_CONDITION = 0x02
STATUS_NAMES = {
    0x00: "GOOD", 0x02: "CHECK CONDITION", 0x04: "CONDITION MET", 0x08: "BUSY",
    0x18: "RESERVATION CONFLICT", 0x28: "TASK SET FULL", 0x30: "ACA ACTIVE",
    0x40: "TASK ABORTED"}

SENSE_KEYS = {
    0x0: "NO SENSE", 0x1: "RECOVERED ERROR", 0x2: "NOT READY", 0x3: "MEDIUM ERROR",
    0x4: "HARDWARE ERROR", 0x5: "ILLEGAL REQUEST", 0x6: "UNIT ATTENTION",
    0x7: "DATA PROTECT", 0x8: "BLANK CHECK", 0x9: "VENDOR SPECIFIC", 0xA: "COPY ABORTED",
    0xB: "ABORTED COMMAND", 0xD: "VOLUME OVERFLOW", 0xE: "MISCOMPARE", 0xF: "COMPLETED"}
UNIT_ATTENTION = 0x6

ASC_NAMES = {
    (0x00, 0x00): "NO ADDITIONAL SENSE INFORMATION",
    (0x04, 0x00): "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE",
    (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
    (0x0C, 0x00): "WRITE ERROR",
    (0x11, 0x00): "UNRECOVERED READ ERROR",
    (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE",
    (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x27, 0x00): "WRITE PROTECTED",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x01): "POWER ON OCCURRED",
    (0x29, 0x02): "SCSI BUS RESET OCCURRED",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED",
    (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x2A, 0x09): "CAPACITY DATA HAS CHANGED",
    (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x44, 0x00): "INTERNAL TARGET FAILURE",
    (0x47, 0x00): "SCSI PARITY ERROR",
    (0x48, 0x00): "INITIATOR DETECTED ERROR MESSAGE RECEIVED",
    (0x4B, 0x00): "DATA PHASE ERROR",
    (0x55, 0x03): "INSUFFICIENT RESOURCES",
}


@dataclass(frozen=True)
class Sense:
    """Decoded sense data."""
    response_code: int
    key: int
    asc: int
    ascq: int
    information: Optional[int] = None

    @property
    def key_name(self) -> str:
        return SENSE_KEYS.get(self.key, "RESERVED")

    @property
    def asc_name(self) -> str:
        name = ASC_NAMES.get((self.asc, self.ascq))
        if name is None and 0x80 <= self.asc:
            return "VENDOR SPECIFIC"
        return name or "unknown ASC/ASCQ"

    def __str__(self) -> str:
        return (f"sense key 0x{self.key:x} {self.key_name}, ASC/ASCQ "
                f"0x{self.asc:02x}/0x{self.ascq:02x} ({self.asc_name})")


def decode_sense(data: bytes) -> Sense:
    """Decode fixed (0x70/0x71) or descriptor (0x72/0x73) sense data."""
    if len(data) < 2:
        raise ProtocolError("SCSI Response", "sense data", f"{len(data)} bytes, too short")
    code = data[0] & 0x7F
    if code in (0x70, 0x71):
        if len(data) < 14:
            raise ProtocolError("SCSI Response", "sense data",
                                f"fixed-format sense of {len(data)} bytes, need 14")
        info = struct.unpack_from(">I", data, 3)[0] if data[0] & 0x80 else None
        return Sense(code, data[2] & 0x0F, data[12], data[13], info)
    if code in (0x72, 0x73):
        if len(data) < 4:
            raise ProtocolError("SCSI Response", "sense data",
                                f"descriptor-format sense of {len(data)} bytes, need 4")
        return Sense(code, data[1] & 0x0F, data[2], data[3])
    raise ProtocolError("SCSI Response", "sense data", f"unknown response code 0x{code:02x}")


def sense_from_segment(segment: bytes) -> Optional[Sense]:
    """The data segment of a SCSI Response: SenseLength (2 bytes) + sense (§11.4.7)."""
    if len(segment) < 2:
        return None
    n = struct.unpack_from(">H", segment)[0]
    if n == 0:
        return None
    if n > len(segment) - 2:
        raise ProtocolError("SCSI Response", "SenseLength",
                            f"{n} bytes announced, {len(segment) - 2} present")
    return decode_sense(bytes(segment[2:2 + n]))


# --------------------------------------------------------------------------- CDBs

@dataclass(frozen=True)
class Cdb:
    """A CDB padded to the 16-byte field of the SCSI Command PDU, and its name."""
    name: str
    raw: bytes

    @staticmethod
    def of(name: str, raw: bytes) -> "Cdb":
        return Cdb(name, raw.ljust(16, b"\0"))


def test_unit_ready() -> Cdb:
    return Cdb.of("TEST UNIT READY", bytes(6))


test_unit_ready.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def inquiry(alloc: int = 255, evpd: bool = False, page: int = 0) -> Cdb:
    return Cdb.of("INQUIRY", struct.pack(">BBBHB", 0x12, int(evpd), page, alloc, 0))


def read_capacity16(alloc: int = 32) -> Cdb:
    return Cdb.of("READ CAPACITY(16)", struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc, 0, 0))


def report_luns(alloc: int = 4096) -> Cdb:
    return Cdb.of("REPORT LUNS", struct.pack(">BBBBBBIBB", 0xA0, 0, 0, 0, 0, 0, alloc, 0, 0))


def read16(lba: int, blocks: int) -> Cdb:
    return Cdb("READ(16)", struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0))


def write16(lba: int, blocks: int, fua: bool = False) -> Cdb:
    return Cdb("WRITE(16)", struct.pack(">BBQIBB", 0x8A, 0x08 if fua else 0, lba, blocks, 0, 0))


def synchronize_cache10(lba: int = 0, blocks: int = 0, immed: bool = False) -> Cdb:
    return Cdb.of("SYNCHRONIZE CACHE(10)",
                  struct.pack(">BBIBHB", 0x35, 0x02 if immed else 0, lba, 0, blocks, 0))


# --------------------------------------------------------------------------- data parsers

PERIPHERAL_TYPES = {0x00: "direct-access block device (disk)", 0x05: "CD/DVD",
                    0x0C: "storage array controller", 0x0D: "enclosure services",
                    0x1F: "unknown or no device"}


@dataclass(frozen=True)
class InquiryData:
    peripheral_qualifier: int
    peripheral_type: int
    removable: bool
    version: int
    vendor: str
    product: str
    revision: str

    @property
    def type_name(self) -> str:
        return PERIPHERAL_TYPES.get(self.peripheral_type, f"type 0x{self.peripheral_type:02x}")


def parse_inquiry(data: bytes) -> InquiryData:
    if len(data) < 36:
        raise ProtocolError("SCSI Data-In", "INQUIRY data", f"{len(data)} bytes, need 36")
    text = lambda b: bytes(b).decode("ascii", "replace").strip()   # noqa: E731
    return InquiryData(data[0] >> 5, data[0] & 0x1F, bool(data[1] & 0x80), data[2],
                       text(data[8:16]), text(data[16:32]), text(data[32:36]))


@dataclass(frozen=True)
class Capacity:
    last_lba: int
    block_size: int

    @property
    def blocks(self) -> int:
        return self.last_lba + 1

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_size


def parse_read_capacity16(data: bytes) -> Capacity:
    if len(data) < 12:
        raise ProtocolError("SCSI Data-In", "READ CAPACITY(16) data", f"{len(data)} bytes, need 12")
    last_lba, bs = struct.unpack_from(">QI", data)
    if bs == 0 or bs % 512:
        raise ProtocolError("SCSI Data-In", "READ CAPACITY(16) block length",
                            f"{bs} is not a multiple of 512")
    return Capacity(last_lba, bs)


def parse_report_luns(data: bytes) -> list[int]:
    if len(data) < 8:
        raise ProtocolError("SCSI Data-In", "REPORT LUNS data", f"{len(data)} bytes, need 8")
    n = struct.unpack_from(">I", data)[0] // 8
    luns = []
    for i in range(min(n, (len(data) - 8) // 8)):
        b0, b1 = data[8 + 8 * i], data[9 + 8 * i]
        luns.append(((b0 & 0x3F) << 8 | b1) if b0 & 0xC0 == 0x40 else b1)
    return luns


def parse_block_limits(data: bytes) -> int:
    """VPD page 0xB0: MAXIMUM TRANSFER LENGTH in blocks (0 = no limit reported)."""
    if len(data) < 12 or data[1] != 0xB0:
        return 0
    return struct.unpack_from(">I", data, 8)[0]
