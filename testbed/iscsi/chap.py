"""CHAP for iSCSI login (RFC 7143 §12.1.3, RFC 1994), with MD5 (CHAP_A=5).

The target sends an identifier ``CHAP_I`` (one byte) and a challenge ``CHAP_C``;
the initiator proves it knows the shared secret by answering

    CHAP_R = MD5( CHAP_I as one byte || secret || challenge )

and names itself with ``CHAP_N``. In *mutual* CHAP the initiator sends its own
``CHAP_I``/``CHAP_C`` in the same PDU and checks the target's ``CHAP_N``/``CHAP_R``.

Two rules protect against a *reflection* attack, where a rogue target hands the
initiator's own challenge back to it to get a valid answer for free: the initiator
never answers a challenge equal to one it issued, and the secret used to check the
target must differ from the one the initiator authenticates with (RFC 7143 §12.1.3).

Binary values travel as ``0x`` + hex or ``0b`` + base64 (§6.1), at most 1024 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass
from typing import Optional

from .errors import ChapError

CHAP_MD5 = 5
MAX_BINARY = 1024
CHALLENGE_LEN = 16


@dataclass(frozen=True)
class ChapCredentials:
    """Secrets for CHAP: ``user``/``secret`` prove us; ``mutual_*`` check the target."""
    user: str
    secret: str
    mutual_user: Optional[str] = None
    mutual_secret: Optional[str] = None

    @property
    def mutual(self) -> bool:
        return self.mutual_secret is not None

    def check(self) -> None:
        if not self.user or not self.secret:
            raise ChapError("CHAP needs both a user name and a secret")
        if self.mutual and self.mutual_secret == self.secret:
            raise ChapError("mutual CHAP: the target's secret must differ from the initiator's "
                            "(RFC 7143 §12.1.3, reflection protection)")


def decode_binary(value: str, key: str) -> bytes:
    """``0x...`` (hex) or ``0b...`` (base64) -> bytes; anything else is a ChapError."""
    try:
        if value[:2] in ("0x", "0X"):
            digits = value[2:]
            raw = bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
        elif value[:2] in ("0b", "0B"):
            raw = base64.b64decode(value[2:], validate=True)
        else:
            raise ValueError("no 0x or 0b prefix")
    except (ValueError, binascii.Error) as exc:
        raise ChapError(f"CHAP key {key}: malformed binary value {value[:40]!r} ({exc})") from None
    if not raw or len(raw) > MAX_BINARY:
        raise ChapError(f"CHAP key {key}: {len(raw)} bytes, must be 1..{MAX_BINARY}")
    return raw


def encode_binary(raw: bytes) -> str:
    return "0x" + raw.hex()


def chap_response(identifier: int, secret: str, challenge: bytes) -> bytes:
    """MD5(identifier || secret || challenge), RFC 1994 §4.1."""
    return hashlib.md5(bytes((identifier,)) + secret.encode() + challenge).digest()


class _IssuedChallenges:
    """Challenges this process sent to targets, to refuse their reflection."""

    def __init__(self, keep: int = 256) -> None:
        self._lock = threading.Lock()
        self._seen: list[bytes] = []
        self._keep = keep

    def new(self, avoid: bytes) -> bytes:
        while True:
            c = os.urandom(CHALLENGE_LEN)
            if c != avoid:
                break
        with self._lock:
            self._seen.append(c)
            del self._seen[:-self._keep]
        return c

    def __contains__(self, challenge: bytes) -> bool:
        with self._lock:
            return challenge in self._seen


ISSUED = _IssuedChallenges()


class ChapExchange:
    """The initiator's side of one CHAP exchange, step by step."""

    def __init__(self, creds: ChapCredentials) -> None:
        creds.check()
        self.creds = creds
        self.my_id: Optional[int] = None
        self.my_challenge: Optional[bytes] = None

    def answer(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """Keys to send after the target's CHAP_A/CHAP_I/CHAP_C."""
        for k in ("CHAP_A", "CHAP_I", "CHAP_C"):
            if k not in keys:
                raise ChapError(f"target's CHAP challenge lacks {k}")
        if keys["CHAP_A"] != str(CHAP_MD5):
            raise ChapError(f"target chose CHAP_A={keys['CHAP_A']}, only 5 (MD5) was offered")
        try:
            ident = int(keys["CHAP_I"], 0)
        except ValueError:
            raise ChapError(f"CHAP_I={keys['CHAP_I']!r} is not a number") from None
        if not 0 <= ident <= 255:
            raise ChapError(f"CHAP_I={ident} is outside 0..255")
        challenge = decode_binary(keys["CHAP_C"], "CHAP_C")
        if challenge in ISSUED:
            raise ChapError("target's CHAP_C is a reflection of a challenge this initiator "
                            "issued: refusing to answer it")
        pairs = [("CHAP_N", self.creds.user),
                 ("CHAP_R", encode_binary(chap_response(ident, self.creds.secret, challenge)))]
        if self.creds.mutual:
            self.my_id = os.urandom(1)[0]
            self.my_challenge = ISSUED.new(avoid=challenge)
            pairs += [("CHAP_I", str(self.my_id)), ("CHAP_C", encode_binary(self.my_challenge))]
        return pairs

    def verify_target(self, keys: dict[str, str]) -> None:
        """Mutual CHAP: check the target's CHAP_N and CHAP_R."""
        if not self.creds.mutual:
            return
        if "CHAP_N" not in keys or "CHAP_R" not in keys:
            raise ChapError("mutual CHAP: the target did not authenticate itself "
                            "(no CHAP_N/CHAP_R in its answer)")
        if self.creds.mutual_user is not None and keys["CHAP_N"] != self.creds.mutual_user:
            raise ChapError(f"mutual CHAP: target named itself {keys['CHAP_N']!r}, "
                            f"expected {self.creds.mutual_user!r}")
        got = decode_binary(keys["CHAP_R"], "CHAP_R")
        if self.my_id is None or self.my_challenge is None:
            raise ChapError("mutual CHAP: the target answered before it was challenged")
        want = chap_response(self.my_id, self.creds.mutual_secret or "", self.my_challenge)
        if not hmac.compare_digest(got, want):
            raise ChapError("mutual CHAP: the target's CHAP_R is wrong (it does not know the "
                            "mutual secret)")
