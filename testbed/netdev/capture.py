"""Packet capture to pcapng, with each dropped frame marked, for Wireshark.

Two files per handler, in ``capture_dir``:

- ``wire.pcapng``: every frame on the wire side, both directions (the EPB ``flags``
  option says inbound or outbound, so Wireshark shows the direction). A frame the
  handler dropped carries a packet comment ``dropped: <REASON> (<class>)``; a
  received frame it delivered carries none. An outbound frame dropped before the wire
  (no transmit skb, a fault) is written there too, with its comment, so that every
  drop of either direction is in one file.
- ``delivered.pcapng``: what went on: frames handed to the client's stack (inbound,
  written to the TAP) and frames sent on the wire (outbound).

So ``wire`` minus ``delivered`` is exactly the drops, and ``frame.comment`` in
Wireshark's filter bar lists them. The iSCSI dissection comes from Wireshark itself
(port 3260) or, in Python, from ``rdpcap`` once :mod:`testbed.netdev.dissect` has
bound the project's iSCSI scapy layers.

The writer is a small pcapng encoder (section header, interface description,
enhanced packet blocks; RFC draft-ietf-opsawg-pcapng) rather than scapy's: scapy's
writer needs a Packet object per frame and costs about 140 us a frame here, this one
a few. Blocks are declared as struct layouts below.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import BinaryIO, Optional

from .errors import NetdevError

LINKTYPE_ETHERNET = 1
INBOUND, OUTBOUND = 1, 2        # epb_flags direction bits

# Block layouts (little-endian, as tcpdump writes them).
SHB = struct.Struct("<IIIHHq")      # type, total length, byte-order magic, major, minor, section length
IDB = struct.Struct("<IIHHI")       # type, total length, linktype, reserved, snaplen
EPB = struct.Struct("<IIIIIII")     # type, total length, interface id, ts high, ts low, caplen, origlen
OPT = struct.Struct("<HH")          # option code, option length
TRAILER = struct.Struct("<I")       # total length, repeated
SHB_TYPE, IDB_TYPE, EPB_TYPE = 0x0A0D0D0A, 1, 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT, IF_NAME, IF_TSRESOL, EPB_FLAGS = 0, 1, 2, 9, 2
SNAPLEN = 262144


def _pad(n: int) -> int:
    return -n % 4


def _option(code: int, value: bytes) -> bytes:
    return OPT.pack(code, len(value)) + value + b"\0" * _pad(len(value))


class PcapNgWriter:
    """Append Ethernet frames to one pcapng file (one interface, microsecond stamps)."""

    def __init__(self, path: str, ifname: str):
        try:
            self._f: Optional[BinaryIO] = open(path, "wb")
        except OSError as exc:
            raise NetdevError(f"capture file {path}: {exc.strerror}") from None
        self.path = path
        self._lock = threading.Lock()
        self.frames = 0
        self._block(SHB_TYPE, SHB, BYTE_ORDER_MAGIC, 1, 0, -1, options=b"")
        opts = _option(IF_NAME, ifname.encode()) + _option(IF_TSRESOL, bytes([6]))
        self._block(IDB_TYPE, IDB, LINKTYPE_ETHERNET, 0, SNAPLEN, options=opts)

    def _block(self, btype: int, layout: struct.Struct, *fields, options: bytes,
               data: bytes = b"") -> None:
        if options:
            options += OPT.pack(OPT_END, 0)
        total = layout.size + len(data) + _pad(len(data)) + len(options) + TRAILER.size
        assert self._f is not None
        self._f.write(b"".join((layout.pack(btype, total, *fields), data,
                                b"\0" * _pad(len(data)), options, TRAILER.pack(total))))

    def write(self, frame: bytes, direction: int, comment: str = "",
              stamp: Optional[float] = None) -> None:
        """Write one frame; ``direction`` is INBOUND or OUTBOUND."""
        us = int((time.time() if stamp is None else stamp) * 1_000_000)
        opts = OPT.pack(EPB_FLAGS, 4) + struct.pack("<I", direction)
        if comment:
            opts += _option(OPT_COMMENT, comment.encode())
        caplen = min(len(frame), SNAPLEN)
        with self._lock:
            if self._f is None:
                return
            self._block(EPB_TYPE, EPB, 0, us >> 32, us & 0xFFFFFFFF, caplen, len(frame),
                        options=opts, data=bytes(frame[:caplen]))
            self.frames += 1

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


class Capture:
    """The handler's two capture files (see the module docstring)."""

    def __init__(self, capture_dir: str, wire: str, tap: str):
        try:
            os.makedirs(capture_dir, exist_ok=True)
        except OSError as exc:
            raise NetdevError(f"capture_dir={capture_dir!r}: {exc.strerror}") from None
        self.wire = PcapNgWriter(os.path.join(capture_dir, "wire.pcapng"), wire)
        try:
            self.delivered = PcapNgWriter(os.path.join(capture_dir, "delivered.pcapng"),
                                          f"{wire}<->{tap}")
        except NetdevError:
            self.wire.close()
            raise

    def received(self, frame: bytes, inbound: bool, drop: str = "") -> None:
        """A frame's fate is known: ``drop`` is '' if it went on, else the comment."""
        direction = INBOUND if inbound else OUTBOUND
        if inbound:
            self.wire.write(frame, direction, drop)
        elif drop:               # an outbound drop never reached the wire: mark it there
            self.wire.write(frame, direction, drop)
        if not drop:
            if not inbound:
                self.wire.write(frame, direction)
            self.delivered.write(frame, direction)

    def close(self) -> None:
        self.wire.close()
        self.delivered.close()
