"""Hypothesis strategies for iSCSI PDUs: every layout with any field values, and valid
PDUs mangled (bytes flipped, cut off, appended). Shared by the codec's unit tests
(``tests/iscsi/test_pdu_codec.py``) and ``make fuzz`` (``tests/support/fuzz.py``), with the
rule both judge the decoder by (:func:`decode_outcome`)."""

from __future__ import annotations

from hypothesis import strategies as st

from testbed.iscsi import pdu
from testbed.iscsi.errors import IscsiError


def fields_strategy(spec: pdu.PduSpec) -> st.SearchStrategy:
    """Any value for every field (opcode fixed, dsl/ahs_len follow the segments)."""
    fixed = {"opcode", "dsl", "ahs_len"}
    parts = {}
    for name in spec.field_names:
        if name in fixed:
            continue
        width = spec.widths[name]
        if name in spec.raw_fields:
            parts[name] = st.binary(min_size=width // 8, max_size=width // 8)
        else:
            parts[name] = st.integers(0, (1 << width) - 1)
    return st.fixed_dictionaries(parts)


def pdu_case() -> st.SearchStrategy:
    """(spec, fields, data segment, header digest?, data digest?) of any layout."""
    return st.sampled_from(pdu.ALL_SPECS).flatmap(
        lambda spec: st.tuples(st.just(spec), fields_strategy(spec),
                               st.binary(max_size=300), st.booleans(), st.booleans()))


@st.composite
def mangled_pdu(draw) -> bytes:
    """A valid PDU, then bytes flipped, cut off or appended: close to the real thing."""
    spec, fields, data, hd, dd = draw(pdu_case())
    raw = bytearray(pdu.encode_pdu(spec, data, hd, dd, **fields))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(raw)))
    return bytes(raw[:cut]) + draw(st.binary(max_size=8))


def decoder_input() -> st.SearchStrategy:
    """What the decoder is fuzzed with: random bytes or a mangled PDU, and the digests."""
    return st.tuples(st.one_of(st.binary(max_size=200), mangled_pdu()), st.booleans(),
                     st.booleans())


def decode_outcome(raw: bytes, hd: bool, dd: bool) -> tuple[str, str]:
    """What the decoder made of ``raw``: ("decoded", layout), ("typed", error class) or
    ("misread", layout) when the PDU it returns is not the first byte's opcode. Any other
    exception propagates: that is a crash."""
    try:
        p = pdu.decode_pdu(raw, hd, dd)
    except IscsiError as exc:
        return "typed", type(exc).__name__
    return ("decoded" if p.spec.opcode == raw[0] & 0x3F else "misread"), p.spec.name
