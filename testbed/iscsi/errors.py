"""Typed errors of the iSCSI initiator.

Every failure the initiator can meet is one of these, each a subclass of
:class:`testbed.errors.TestbedError`, and each message is one line that names the
place: the PDU and field for protocol errors, the status class and detail for a
refused login, the status, sense key and ASC/ASCQ (decoded to names) for a SCSI
command that failed. A dead target ends in :class:`IscsiTimeout`, which is also a
:class:`testbed.errors.TimeoutExpired`.
"""

from __future__ import annotations

from typing import Optional

from ..errors import TestbedError, TimeoutExpired


class IscsiError(TestbedError):
    """Base class of every error of the iSCSI initiator."""


class ProtocolError(IscsiError):
    """The peer sent something RFC 7143 does not allow (or this initiator cannot use)."""

    def __init__(self, pdu: str, field: str, detail: str) -> None:
        self.pdu, self.field, self.detail = pdu, field, detail
        super().__init__(f"iSCSI protocol error in {pdu} PDU, field {field}: {detail}")


class DigestError(ProtocolError):
    """A received header or data digest (CRC32C) does not match."""


class ConnectionLost(IscsiError):
    """The TCP connection to the target closed or failed."""


class IscsiTimeout(TimeoutExpired, IscsiError):
    """The target did not answer within the set timeout (dead or hung target)."""


class SessionFailed(IscsiError):
    """The session is down for good: recovery was exhausted, or it was closed."""


class NegotiationError(IscsiError):
    """A login key came back with a value its RFC 7143 result function forbids."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(f"iSCSI login negotiation, key {key}: {detail}")


# RFC 7143 §11.13.5 (tgt iscsi_proto.h): status class -> (class name, {detail: name})
LOGIN_STATUS: dict[int, tuple[str, dict[int, str]]] = {
    0: ("success", {0: "success"}),
    1: ("redirection", {1: "target moved temporarily", 2: "target moved permanently"}),
    2: ("initiator error", {
        0x00: "initiator error", 0x01: "authentication failed",
        0x02: "authorization failure (forbidden)", 0x03: "target not found",
        0x04: "target removed", 0x05: "unsupported version",
        0x06: "too many connections", 0x07: "missing parameter",
        0x08: "cannot include connection in session", 0x09: "session type not supported",
        0x0A: "session does not exist", 0x0B: "invalid request during login"}),
    3: ("target error", {0x00: "target error", 0x01: "service unavailable",
                         0x02: "out of resources"}),
}


def login_status_text(status_class: int, status_detail: int) -> str:
    """'class 2 (initiator error), detail 0x01 (authentication failed)'."""
    cname, details = LOGIN_STATUS.get(status_class, ("unknown class", {}))
    dname = details.get(status_detail, "unknown detail")
    return f"class {status_class} ({cname}), detail 0x{status_detail:02x} ({dname})"


class LoginError(IscsiError):
    """The target refused the login; carries its status class and detail."""

    def __init__(self, message: str, status_class: Optional[int] = None,
                 status_detail: Optional[int] = None) -> None:
        self.status_class, self.status_detail = status_class, status_detail
        if status_class is not None:
            message = f"{message}: target answered {login_status_text(status_class, status_detail or 0)}"
        super().__init__(message)


class ChapError(LoginError):
    """CHAP authentication failed, in either direction (mutual CHAP checks the target)."""


class ScsiError(IscsiError):
    """A SCSI command ended with a status other than GOOD (sense decoded)."""

    def __init__(self, command: str, status: int, sense: "Optional[object]" = None,
                 detail: str = "") -> None:
        from .scsi import STATUS_NAMES   # late import: scsi.py imports this module
        self.command, self.status, self.sense = command, status, sense
        text = f"SCSI {command} failed: status 0x{status:02x} ({STATUS_NAMES.get(status, 'unknown')})"
        if sense is not None:
            text += f", {sense}"
        if detail:
            text += f", {detail}"
        super().__init__(text)

    @property
    def sense_key(self) -> Optional[int]:
        return getattr(self.sense, "key", None)

    @property
    def asc(self) -> Optional[int]:
        return getattr(self.sense, "asc", None)

    @property
    def ascq(self) -> Optional[int]:
        return getattr(self.sense, "ascq", None)


class NoMemory(IscsiTimeout):
    """The caller's pdu_alloc hook refused memory until the command's timeout."""
