"""Login phase (RFC 7143 §6.3, §11.12-11.13) and discovery (SendTargets).

A login walks through stages: security negotiation (CSG=0), operational
negotiation (CSG=1), then full feature phase (stage 3). This initiator always
starts at CSG=0, with or without CHAP, because tgtd only reinstates a session
(closes the old one with the same InitiatorName and ISID) on the way out of the
security stage, and ERL 0 recovery relies on that.

::

    initiator                                   target
    CSG=0 T=1 NSG=1  InitiatorName, TargetName,
                     SessionType, AuthMethod=CHAP,None  ->
                                                <-  AuthMethod=CHAP (T=0)
    CSG=0 T=0        CHAP_A=5                    ->
                                                <-  CHAP_A=5 CHAP_I CHAP_C
    CSG=0 T=1 NSG=1  CHAP_N CHAP_R [CHAP_I CHAP_C]  ->
                                                <-  T=1 [CHAP_N CHAP_R]
    CSG=1 T=1 NSG=3  operational offers          ->
                                                <-  answers (T=1, or T=0 with its own
                                                    proposals, which we answer)

Every PDU of one login carries the same ITT, CID and CmdSN, and the Login opcode
with the I bit (tgtd rejects it otherwise). ISID and TSIH are opaque bytes: tgtd
writes TSIH in host byte order, so it is echoed, never interpreted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .chap import ChapCredentials, ChapExchange
from .connection import Connection
from .errors import ChapError, IscsiError, LoginError, ProtocolError
from .pdu import LOGIN_REQUEST, LOGIN_RESPONSE, TEXT_REQUEST, TEXT_RESPONSE, LOGOUT_REQUEST, \
    LOGOUT_RESPONSE, RESERVED_TAG, frame
from .text import Negotiation, Pairs, SessionParams, decode_text, encode_text, parse_send_targets

SECURITY, OPERATIONAL, FULL_FEATURE = 0, 1, 3
MAX_LOGIN_PDUS = 16          # a login that needs more exchanges than this is going nowhere
DEFAULT_INITIATOR = "iqn.2026-11.org.testbed:initiator"


def random_isid() -> bytes:
    """A 6-byte ISID of type 'random' (bits 7-6 of byte 0 = 10, RFC 7143 §11.12.5)."""
    raw = bytearray(os.urandom(6))
    raw[0] = 0x80 | (raw[0] & 0x3F)
    return bytes(raw)


@dataclass
class LoginConfig:
    """What the initiator asks for at login."""
    initiator_name: str = DEFAULT_INITIATOR
    target_name: Optional[str] = None              # None: a discovery session
    chap: Optional[ChapCredentials] = None
    header_digest: bool = False                    # offer CRC32C (else None only)
    data_digest: bool = False
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 262144
    first_burst_length: int = 262144
    initial_r2t: bool = False
    immediate_data: bool = True
    default_time2wait: int = 0
    default_time2retain: int = 0
    extra_keys: dict[str, str] = field(default_factory=dict)

    @property
    def session_type(self) -> str:
        return "Normal" if self.target_name else "Discovery"

    def offers(self) -> dict[str, str]:
        digest = lambda on: "CRC32C,None" if on else "None"     # noqa: E731
        yn = lambda b: "Yes" if b else "No"                       # noqa: E731
        offers = {"HeaderDigest": digest(self.header_digest),
                  "DataDigest": digest(self.data_digest)}
        if self.session_type == "Normal":
            offers.update({
                "InitialR2T": yn(self.initial_r2t), "ImmediateData": yn(self.immediate_data),
                "MaxBurstLength": str(self.max_burst_length),
                "FirstBurstLength": str(min(self.first_burst_length, self.max_burst_length)),
                "MaxOutstandingR2T": "1", "MaxConnections": "1", "ErrorRecoveryLevel": "0",
                "DefaultTime2Wait": str(self.default_time2wait),
                "DefaultTime2Retain": str(self.default_time2retain),
                "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes"})
        offers.update(self.extra_keys)
        return offers


@dataclass
class LoginResult:
    params: SessionParams
    tsih: bytes
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    target_keys: dict[str, str]


class _Login:
    """One login attempt over an open connection (synchronous, bounded by a deadline)."""

    def __init__(self, conn: Connection, cfg: LoginConfig, isid: bytes, tsih: bytes,
                 cmdsn: int, itt: int, deadline: float) -> None:
        self.conn, self.cfg, self.isid, self.tsih = conn, cfg, isid, tsih
        self.cmdsn, self.itt, self.deadline = cmdsn, itt, deadline
        self.exp_statsn = 0
        self.first = True
        self.keys: dict[str, str] = {}
        self.negotiation = Negotiation(cfg.offers())

    def exchange(self, csg: int, nsg: int, transit: bool, pairs: Pairs) -> tuple[Any, Pairs]:
        """Send one Login Request; return the response and its keys (gathered over C=1)."""
        data = encode_text(pairs)
        bhs = LOGIN_REQUEST.pack(transit=int(transit), csg=csg, nsg=nsg if transit else 0,
                                 isid=self.isid, tsih=self.tsih, itt=self.itt, cmdsn=self.cmdsn,
                                 exp_statsn=self.exp_statsn, dsl=len(data))
        self.conn.send(frame(bhs, data))
        text = b""
        for _ in range(MAX_LOGIN_PDUS):
            rsp = self._read()
            text += bytes(rsp.data)
            if not rsp.cont:
                break
            # C=1: the target has more text; ask for it with an empty request.
            bhs = LOGIN_REQUEST.pack(csg=csg, isid=self.isid, tsih=self.tsih, itt=self.itt,
                                     cmdsn=self.cmdsn, exp_statsn=self.exp_statsn)
            self.conn.send(frame(bhs))
        else:
            raise ProtocolError("Login Response", "C bit", "text never ends")
        keys = decode_text(text, "Login Response")
        self.keys.update(keys)
        return rsp, keys

    def _read(self) -> Any:
        rsp = self.conn.reader.read_pdu(self.deadline)
        if rsp.opcode == 0x3F:
            raise ProtocolError("Login Request", "(rejected)", "target sent Reject to a Login Request")
        if rsp.opcode != LOGIN_RESPONSE.opcode:
            raise ProtocolError(rsp.spec.title, "opcode",
                                f"0x{rsp.opcode:02x} where a Login Response was expected")
        if rsp.itt != self.itt:
            raise ProtocolError("Login Response", "ITT", f"0x{rsp.itt:08x}, sent 0x{self.itt:08x}")
        if rsp.status_class != 0:
            self._refused(rsp)
        if rsp.isid != self.isid:
            raise ProtocolError("Login Response", "ISID", f"{rsp.isid.hex()} is not ours ({self.isid.hex()})")
        self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        return rsp

    def _refused(self, rsp: Any) -> None:
        cls, detail = rsp.status_class, rsp.status_detail
        target = self.cfg.target_name or "(discovery)"
        if cls == 2 and detail == 1:
            if self.cfg.chap is None:
                raise ChapError(f"login to {target} refused: the target requires CHAP "
                                "authentication but no CHAP user/secret was given", cls, detail)
            raise ChapError(f"login to {target} as CHAP user {self.cfg.chap.user!r} refused "
                            "(wrong user or secret)", cls, detail)
        where = ""
        if cls == 1:
            addr = dict(decode_text(bytes(rsp.data), "Login Response")).get("TargetAddress", "?")
            where = f" (redirected to {addr}, not followed)"
        raise LoginError(f"login to {target} refused{where}", cls, detail)

    # ---- stages

    def security(self) -> None:
        cfg = self.cfg
        pairs: Pairs = [("InitiatorName", cfg.initiator_name)]
        if cfg.target_name:
            pairs.append(("TargetName", cfg.target_name))
        pairs += [("SessionType", cfg.session_type),
                  ("AuthMethod", "CHAP,None" if cfg.chap else "None")]
        rsp, keys = self.exchange(SECURITY, OPERATIONAL, True, pairs)
        method = dict(keys).get("AuthMethod")
        if method == "Reject" or (method == "CHAP" and cfg.chap is None):
            raise ChapError(f"login to {cfg.target_name or '(discovery)'}: the target requires "
                            "CHAP authentication but no CHAP user/secret was given")
        if method == "CHAP":
            self._chap(cfg.chap)
            return
        for _ in range(MAX_LOGIN_PDUS):
            if rsp.transit:
                return self._check_stage(rsp, SECURITY)
            rsp, _ = self.exchange(SECURITY, OPERATIONAL, True, [])
        raise ProtocolError("Login Response", "T bit", "target never leaves the security stage")

    def _chap(self, creds: ChapCredentials) -> None:
        chap = ChapExchange(creds)
        _, keys = self.exchange(SECURITY, OPERATIONAL, False, [("CHAP_A", "5")])
        rsp, keys = self.exchange(SECURITY, OPERATIONAL, True, chap.answer(dict(keys)))
        chap.verify_target(dict(keys))
        for _ in range(MAX_LOGIN_PDUS):
            if rsp.transit:
                return self._check_stage(rsp, SECURITY)
            rsp, _ = self.exchange(SECURITY, OPERATIONAL, True, [])
        raise ProtocolError("Login Response", "T bit", "target never leaves the security stage")

    def _check_stage(self, rsp: Any, csg: int) -> None:
        if rsp.csg != csg:
            raise ProtocolError("Login Response", "CSG", f"stage {rsp.csg}, expected {csg}")

    def operational(self) -> Any:
        answers = self.negotiation.offer_pairs() + [
            ("MaxRecvDataSegmentLength", str(self.cfg.max_recv_data_segment_length))]
        for _ in range(MAX_LOGIN_PDUS):
            rsp, keys = self.exchange(OPERATIONAL, FULL_FEATURE, True, answers)
            self._check_stage(rsp, OPERATIONAL)
            answers = self.negotiation.absorb(keys)
            if rsp.transit:
                if rsp.nsg != FULL_FEATURE:
                    raise ProtocolError("Login Response", "NSG", f"stage {rsp.nsg}, expected 3")
                return rsp
        raise ProtocolError("Login Response", "T bit", "target never agrees to full feature phase")


def login(conn: Connection, cfg: LoginConfig, isid: bytes, tsih: bytes, cmdsn: int,
          itt: int, timeout: float) -> LoginResult:
    """Run a whole login on ``conn``; on success switch its digests on as negotiated."""
    attempt = _Login(conn, cfg, isid, tsih, cmdsn, itt, time.monotonic() + timeout)
    attempt.security()
    rsp = attempt.operational()
    params = attempt.negotiation.params(cfg.max_recv_data_segment_length)
    conn.header_digest, conn.data_digest = params.header_digest, params.data_digest
    conn.exp_statsn = attempt.exp_statsn
    conn.reader.set_max_dsl(max(cfg.max_recv_data_segment_length, 8192))
    return LoginResult(params, bytes(rsp.tsih), rsp.statsn, rsp.exp_cmdsn, rsp.max_cmdsn,
                       dict(attempt.keys))


def discover(portal: tuple[str, int], initiator_name: str = DEFAULT_INITIATOR,
             chap: Optional[ChapCredentials] = None, timeout: float = 10.0,
             hooks: Any = None) -> list[tuple[str, list[str]]]:
    """SendTargets=All in a discovery session: ``[(target_name, [addresses]), ...]``."""
    conn = Connection(portal, hooks)
    deadline = time.monotonic() + timeout
    conn.open(timeout)
    try:
        cfg = LoginConfig(initiator_name=initiator_name, chap=chap)
        result = login(conn, cfg, random_isid(), b"\0\0", 1, 1, timeout)
        cmdsn = result.exp_cmdsn
        text, ttt, itt = b"", RESERVED_TAG, 2
        request = encode_text([("SendTargets", "All")])
        for _ in range(64):
            bhs = TEXT_REQUEST.pack(itt=itt, ttt=ttt, cmdsn=cmdsn, exp_statsn=conn.exp_statsn,
                                    dsl=len(request))
            conn.send(frame(bhs, request))
            rsp = conn.reader.read_pdu(deadline)
            if rsp.opcode != TEXT_RESPONSE.opcode or rsp.itt != itt:
                raise ProtocolError(rsp.spec.title, "opcode/ITT", "expected the Text Response to SendTargets")
            conn.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
            cmdsn = (cmdsn + 1) & 0xFFFFFFFF
            text += bytes(rsp.data)
            if rsp.final and not rsp.cont:
                break
            ttt, request = rsp.ttt, b""
        else:
            raise ProtocolError("Text Response", "F bit", "SendTargets reply never ends")
        targets = parse_send_targets(decode_text(text, "Text Response"))
        _logout(conn, cmdsn, 3, deadline)
        return targets
    finally:
        conn.close()


def _logout(conn: Connection, cmdsn: int, itt: int, deadline: float) -> None:
    """Close the session politely; a target that does not answer is not an error here."""
    try:
        conn.send(frame(LOGOUT_REQUEST.pack(itt=itt, cmdsn=cmdsn, exp_statsn=conn.exp_statsn)))
        while True:
            rsp = conn.reader.read_pdu(deadline)
            if rsp.opcode == LOGOUT_RESPONSE.opcode:
                return
    except IscsiError:
        return
