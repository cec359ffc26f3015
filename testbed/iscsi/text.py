"""Login and Text keys: the ``key=value`` format and RFC 7143 negotiation.

A data segment of a Login or Text PDU is a list of ``key=value`` strings, each
ended by a NUL byte (§6.1). Each key has a *result function* (§6.2, §13) that
says what the outcome of an offer and its answer must be:

=============  ======================================================  ===========
kind           outcome                                                 keys
=============  ======================================================  ===========
list           first value in the proposer's list the acceptor knows   digests, AuthMethod
and / or       Boolean AND / OR of both sides                          ImmediateData / InitialR2T,
                                                                       DataPDUInOrder, ...
min / max      smaller / larger of both numbers                        MaxBurstLength, ... /
                                                                       DefaultTime2Wait
declarative    each side states its own value, nothing to agree        MaxRecvDataSegmentLength
=============  ======================================================  ===========

:class:`Negotiation` keeps the initiator's offers, checks that every answer of
the target obeys the key's result function (a target that answers outside the
rules is a :class:`NegotiationError`), answers keys the target proposes itself
(tgtd does so for a key its administrator changed, e.g. HeaderDigest=CRC32C) and
gives the outcome as :class:`SessionParams`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .errors import NegotiationError, ProtocolError

Pairs = list[tuple[str, str]]

SPECIAL_VALUES = ("NotUnderstood", "Reject", "Irrelevant")


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``[("a", "1"), ("b", "x")]`` -> ``b"a=1\\0b=x\\0"``."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def decode_text(data: bytes, where: str = "Text") -> Pairs:
    """Parse a key=value data segment; a malformed one is a ProtocolError naming ``where``."""
    pairs: Pairs = []
    for chunk in bytes(data).split(b"\0"):
        if not chunk:
            continue
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(where, "data segment", f"key=value text is not UTF-8: {chunk[:40]!r}") from None
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ProtocolError(where, "data segment", f"malformed key=value text {text[:60]!r}")
        pairs.append((key, value))
    return pairs


@dataclass(frozen=True)
class KeySpec:
    """How one operational key is negotiated (RFC 7143 §13)."""
    kind: str                      # "list", "and", "or", "min", "max", "declarative"
    default: str
    lo: int = 0
    hi: int = 0


_NUM = (512, (1 << 24) - 1)
KEYS: dict[str, KeySpec] = {
    "HeaderDigest": KeySpec("list", "None"),
    "DataDigest": KeySpec("list", "None"),
    "MaxConnections": KeySpec("min", "1", 1, 65535),
    "InitialR2T": KeySpec("or", "Yes"),
    "ImmediateData": KeySpec("and", "Yes"),
    "MaxRecvDataSegmentLength": KeySpec("declarative", "8192", *_NUM),
    "MaxBurstLength": KeySpec("min", "262144", *_NUM),
    "FirstBurstLength": KeySpec("min", "65536", *_NUM),
    "DefaultTime2Wait": KeySpec("max", "2", 0, 3600),
    "DefaultTime2Retain": KeySpec("min", "20", 0, 3600),
    "MaxOutstandingR2T": KeySpec("min", "1", 1, 65535),
    "DataPDUInOrder": KeySpec("or", "Yes"),
    "DataSequenceInOrder": KeySpec("or", "Yes"),
    "ErrorRecoveryLevel": KeySpec("min", "0", 0, 2),
    "IFMarker": KeySpec("and", "No"),
    "OFMarker": KeySpec("and", "No"),
}

# Values this initiator can live with, for keys given as a list.
SUPPORTED_LISTS = {"HeaderDigest": ("CRC32C", "None"), "DataDigest": ("CRC32C", "None")}


def _bool(key: str, value: str) -> bool:
    if value not in ("Yes", "No"):
        raise NegotiationError(key, f"expected Yes or No, got {value!r}")
    return value == "Yes"


def _num(key: str, value: str) -> int:
    spec = KEYS[key]
    try:
        n = int(value, 0)
    except ValueError:
        raise NegotiationError(key, f"expected a number, got {value!r}") from None
    if not spec.lo <= n <= spec.hi:
        raise NegotiationError(key, f"{n} is outside {spec.lo}..{spec.hi}")
    return n


def result_of(key: str, ours: str, theirs: str) -> str:
    """The RFC result of our value and theirs, when *they* proposed and we answer."""
    spec = KEYS[key]
    if spec.kind == "list":
        ours_list = ours.split(",")
        for v in theirs.split(","):
            if v in ours_list:
                return v
        return "Reject"
    if spec.kind in ("and", "or"):
        a, b = _bool(key, ours), _bool(key, theirs)
        return "Yes" if ((a and b) if spec.kind == "and" else (a or b)) else "No"
    if spec.kind in ("min", "max"):
        a, b = _num(key, ours), _num(key, theirs)
        return str(min(a, b) if spec.kind == "min" else max(a, b))
    return ours                                    # declarative: we state our own


def check_answer(key: str, offered: str, answer: str) -> str:
    """Validate the target's answer to our offer; return the value now in force."""
    spec = KEYS[key]
    if answer in ("Reject", "NotUnderstood", "Irrelevant"):
        return spec.default
    if spec.kind == "list":
        if answer not in offered.split(","):
            raise NegotiationError(key, f"target chose {answer!r}, which was not offered ({offered})")
        return answer
    if spec.kind == "and":
        if _bool(key, answer) and not _bool(key, offered):
            raise NegotiationError(key, f"AND of our No cannot be {answer}")
        return answer
    if spec.kind == "or":
        if not _bool(key, answer) and _bool(key, offered):
            raise NegotiationError(key, f"OR of our Yes cannot be {answer}")
        return answer
    if spec.kind == "min":
        if _num(key, answer) > _num(key, offered):
            raise NegotiationError(key, f"minimum of our {offered} cannot be {answer}")
        return answer
    if spec.kind == "max":
        if _num(key, answer) < _num(key, offered):
            raise NegotiationError(key, f"maximum of our {offered} cannot be {answer}")
        return answer
    return offered


@dataclass
class SessionParams:
    """The operational parameters in force on a session after login."""
    header_digest: bool = False
    data_digest: bool = False
    initial_r2t: bool = True
    immediate_data: bool = True
    first_burst_length: int = 65536
    max_burst_length: int = 262144
    max_outstanding_r2t: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    error_recovery_level: int = 0
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    max_connections: int = 1
    initiator_mrdsl: int = 8192     # the most the target may send us in one PDU
    target_mrdsl: int = 8192        # the most we may send the target in one PDU (RFC default)
    target_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: dict[str, str], initiator_mrdsl: int,
                    target_mrdsl: int, target_keys: dict[str, str]) -> "SessionParams":
        v = {k: values.get(k, spec.default) for k, spec in KEYS.items()}
        p = cls(
            header_digest=v["HeaderDigest"] == "CRC32C", data_digest=v["DataDigest"] == "CRC32C",
            initial_r2t=v["InitialR2T"] == "Yes", immediate_data=v["ImmediateData"] == "Yes",
            first_burst_length=int(v["FirstBurstLength"]), max_burst_length=int(v["MaxBurstLength"]),
            max_outstanding_r2t=int(v["MaxOutstandingR2T"]),
            default_time2wait=int(v["DefaultTime2Wait"]),
            default_time2retain=int(v["DefaultTime2Retain"]),
            error_recovery_level=int(v["ErrorRecoveryLevel"]),
            data_pdu_in_order=v["DataPDUInOrder"] == "Yes",
            data_sequence_in_order=v["DataSequenceInOrder"] == "Yes",
            max_connections=int(v["MaxConnections"]),
            initiator_mrdsl=initiator_mrdsl, target_mrdsl=target_mrdsl,
            target_keys=dict(target_keys))
        if p.first_burst_length > p.max_burst_length:
            raise NegotiationError("FirstBurstLength", f"{p.first_burst_length} exceeds "
                                   f"MaxBurstLength {p.max_burst_length}")
        return p


class Negotiation:
    """Offers of the operational stage and the target's answers and proposals."""

    def __init__(self, offers: dict[str, str]) -> None:
        for key, value in offers.items():
            if key not in KEYS:
                raise NegotiationError(key, "not an operational key this initiator negotiates")
            if KEYS[key].kind != "list" and KEYS[key].kind not in ("and", "or"):
                _num(key, value)
        self.offers = dict(offers)
        self.values: dict[str, str] = {}
        self.target_keys: dict[str, str] = {}
        self.target_mrdsl = int(KEYS["MaxRecvDataSegmentLength"].default)
        self.pending_answers: Pairs = []

    def offer_pairs(self) -> Pairs:
        return list(self.offers.items())

    def absorb(self, pairs: Pairs) -> Pairs:
        """Take one response's keys; return the answers we owe the target (if any)."""
        answers: Pairs = []
        for key, value in pairs:
            self.target_keys[key] = value
            if key == "MaxRecvDataSegmentLength":
                if value not in SPECIAL_VALUES:
                    self.target_mrdsl = _num(key, value)
                continue
            if key not in KEYS:
                continue                             # TargetPortalGroupTag, TargetAlias, ...
            if key in self.offers:
                self.values[key] = check_answer(key, self.offers[key], value)
            elif value in SPECIAL_VALUES:
                continue
            else:                                    # the target proposes: we answer
                ours = ",".join(SUPPORTED_LISTS[key]) if key in SUPPORTED_LISTS else KEYS[key].default
                result = result_of(key, ours, value)
                if result != "Reject":
                    self.values[key] = result
                answers.append((key, result))
        return answers

    def params(self, initiator_mrdsl: int) -> SessionParams:
        return SessionParams.from_values(self.values, initiator_mrdsl, self.target_mrdsl,
                                         self.target_keys)


def parse_send_targets(pairs: Pairs) -> list[tuple[str, list[str]]]:
    """SendTargets reply: ``[(target_name, [address, ...]), ...]`` in the target's order."""
    targets: list[tuple[str, list[str]]] = []
    for key, value in pairs:
        if key == "TargetName":
            targets.append((value, []))
        elif key == "TargetAddress":
            if not targets:
                raise ProtocolError("Text Response", "TargetAddress", "address before any TargetName")
            targets[-1][1].append(value)
    return targets
