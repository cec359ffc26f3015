"""Scapy layers for every iSCSI PDU, generated from :mod:`testbed.iscsi.pdu`.

Importing this module defines one scapy ``Packet`` class per :class:`PduSpec`
(``ISCSI_ScsiCommand``, ``ISCSI_DataIn``, ...), whose ``fields_desc`` is built from
the spec's rows, and binds the dispatching class :class:`ISCSI` to TCP port 3260 in
both directions, so ``rdpcap()`` of a testbed capture shows the PDUs::

    >>> from testbed.iscsi.layers import ISCSI
    >>> ISCSI(raw_bytes).show()

Each layer is: the BHS fields, the AHS (``ahs_len`` words), an optional header
digest, the data segment (``dsl`` bytes), its padding, an optional data digest.
Digests are not visible in a capture's bytes, so whether to expect them is a
switch: :func:`set_digests`. Left at ``None``, ``dsl`` and the digests are filled in
when the packet is built.

Scapy costs about 90 µs a PDU; the I/O loop uses the generated struct codec of
:mod:`testbed.iscsi.pdu` instead, and a test proves both give the same bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from scapy.fields import (BitField, ConditionalField, StrFixedLenField, StrLenField,
                          XLEIntField)
from scapy.layers.inet import TCP
from scapy.packet import Packet, Raw, bind_layers

from .pdu import ALL_SPECS, BHS_LEN, ISCSI_PORT, SPEC_BY_OPCODE, PduSpec, crc32c, pad_len


class _Digests:
    """Whether dissected/built PDUs carry header and data digests."""
    header = False
    data = False


def set_digests(header: bool, data: bool) -> None:
    """Tell the layers whether the connection negotiated HeaderDigest/DataDigest=CRC32C."""
    _Digests.header, _Digests.data = header, data


class ISCSI(Packet):
    """Any iSCSI PDU: dispatches on the opcode to the specific layer."""
    name = "iSCSI"
    fields_desc: list = []

    @classmethod
    def dispatch_hook(cls, _pkt: Optional[bytes] = None, *args: Any, **kargs: Any) -> type:
        if _pkt:
            spec = SPEC_BY_OPCODE.get(_pkt[0] & 0x3F)
            if spec is not None:
                return LAYERS[spec.opcode]
        elif cls is not ISCSI:
            return cls
        return Raw


class _IscsiPdu(ISCSI):
    """Common behaviour of the generated layers: lengths and digests on build."""

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        data_len = len(self.data or b"")
        if self.dsl is None:
            pkt = pkt[:5] + data_len.to_bytes(3, "big") + pkt[8:]
        hdr_end = BHS_LEN + 4 * (self.ahs_len or 0)
        if _Digests.header and self.header_digest is None:
            digest = struct.pack("<I", crc32c(pkt[:hdr_end]))
            pkt = pkt[:hdr_end] + digest + pkt[hdr_end + 4:]
        if _Digests.data and data_len and self.data_digest is None:
            start = hdr_end + (4 if _Digests.header else 0)
            end = start + data_len + pad_len(data_len)
            pkt = pkt[:end] + struct.pack("<I", crc32c(pkt[start:end])) + pkt[end + 4:]
        return pkt + pay

    def guess_payload_class(self, payload: bytes) -> type:
        return ISCSI if len(payload) >= BHS_LEN else Raw

    def mysummary(self) -> str:
        return self.sprintf(f"iSCSI {self.spec.title} ITT=%{self.__class__.__name__}.itt%") \
            if "itt" in self.spec.field_names else f"iSCSI {self.spec.title}"


def _fields_desc(spec: PduSpec) -> list:
    fields: list = []
    for item in spec.items:
        if isinstance(item, tuple):
            for f in item:
                default = spec.defaults.get(f.name, None if f.name == "dsl" else 0)
                fields.append(BitField(f.name, default, f.width))
        else:
            fields.append(StrFixedLenField(item.name, b"\0" * item.size, item.size))
    fields += [
        StrLenField("ahs", b"", length_from=lambda p: 4 * (p.ahs_len or 0)),
        ConditionalField(XLEIntField("header_digest", None), lambda p: _Digests.header),
        StrLenField("data", b"", length_from=lambda p: p.dsl or 0),
        StrLenField("padding", b"", length_from=lambda p: pad_len(p.dsl or 0)),
        ConditionalField(XLEIntField("data_digest", None),
                         lambda p: _Digests.data and bool(p.dsl if p.dsl is not None else p.data)),
    ]
    return fields


def _make_layer(spec: PduSpec) -> type:
    return type(f"ISCSI_{spec.name}", (_IscsiPdu,),
                {"name": f"iSCSI {spec.title}", "fields_desc": _fields_desc(spec), "spec": spec,
                 "__module__": __name__})


LAYERS: dict[int, type] = {spec.opcode: _make_layer(spec) for spec in ALL_SPECS}
globals().update({cls.__name__: cls for cls in LAYERS.values()})


def layer_for(spec: PduSpec) -> type:
    return LAYERS[spec.opcode]


def build(spec: PduSpec, data: bytes = b"", **fields: Any) -> bytes:
    """Build one PDU with scapy (padding filled in); the slow reference encoder."""
    return bytes(LAYERS[spec.opcode](data=data, padding=b"\0" * pad_len(len(data)), **fields))


bind_layers(TCP, ISCSI, dport=ISCSI_PORT)
bind_layers(TCP, ISCSI, sport=ISCSI_PORT)
