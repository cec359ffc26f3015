"""Negotiation result functions, CHAP, SCSI sense and CDBs, portals: no target needed."""

from __future__ import annotations

import hashlib

import pytest

from testbed.iscsi import chap, scsi, text
from testbed.iscsi.connection import parse_portal
from testbed.iscsi.errors import ChapError, NegotiationError, ProtocolError


@pytest.mark.parametrize("key,ours,theirs,result", [
    ("HeaderDigest", "CRC32C,None", "None,CRC32C", "None"),     # the proposer's order wins
    ("HeaderDigest", "None", "CRC32C", "Reject"),
    ("ImmediateData", "Yes", "No", "No"),                        # AND
    ("InitialR2T", "No", "Yes", "Yes"),                          # OR
    ("InitialR2T", "No", "No", "No"),
    ("MaxBurstLength", "262144", "1048576", "262144"),           # minimum
    ("DefaultTime2Wait", "0", "2", "2"),                         # maximum
    ("ErrorRecoveryLevel", "0", "2", "0"),
])
def test_result_functions(key, ours, theirs, result):
    assert text.result_of(key, ours, theirs) == result


@pytest.mark.parametrize("key,offered,answer", [
    ("MaxBurstLength", "65536", "262144"),        # min cannot grow
    ("DefaultTime2Wait", "5", "2"),               # max cannot shrink
    ("ImmediateData", "No", "Yes"),               # AND of No
    ("InitialR2T", "Yes", "No"),                  # OR of Yes
    ("DataDigest", "None", "CRC32C"),             # not offered
    ("MaxBurstLength", "65536", "lots"),
    ("MaxBurstLength", "65536", "100"),           # below 512
])
def test_answers_outside_the_rules_are_refused(key, offered, answer):
    with pytest.raises(NegotiationError, match=key):
        text.check_answer(key, offered, answer)


def test_negotiation_answers_target_proposals_and_reads_declarations():
    n = text.Negotiation({"MaxBurstLength": "262144", "ImmediateData": "Yes"})
    answers = n.absorb([("MaxBurstLength", "65536"), ("TargetPortalGroupTag", "1"),
                        ("HeaderDigest", "CRC32C,None"), ("MaxRecvDataSegmentLength", "16384")])
    assert answers == [("HeaderDigest", "CRC32C")]
    p = n.params(131072)
    assert p.max_burst_length == 65536 and p.header_digest and p.target_mrdsl == 16384
    assert p.initiator_mrdsl == 131072 and p.immediate_data


def test_first_burst_may_not_exceed_max_burst():
    n = text.Negotiation({"MaxBurstLength": "8192", "FirstBurstLength": "8192"})
    n.absorb([("MaxBurstLength", "4096"), ("FirstBurstLength", "8192")])
    with pytest.raises(NegotiationError, match="FirstBurstLength"):
        n.params(8192)


def test_text_format():
    raw = text.encode_text([("a", "1"), ("TargetName", "iqn.x:y")])
    assert raw == b"a=1\0TargetName=iqn.x:y\0"
    assert text.decode_text(raw) == [("a", "1"), ("TargetName", "iqn.x:y")]
    with pytest.raises(ProtocolError, match="malformed"):
        text.decode_text(b"novalue\0")
    with pytest.raises(ProtocolError, match="UTF-8"):
        text.decode_text(b"a=\xff\xfe\0")
    assert text.parse_send_targets([("TargetName", "t1"), ("TargetAddress", "1.2.3.4:3260,1"),
                                    ("TargetName", "t2")]) == [("t1", ["1.2.3.4:3260,1"]), ("t2", [])]


def test_chap_response_is_md5_of_id_secret_challenge():
    c = bytes(range(16))
    assert chap.chap_response(7, "secret", c) == hashlib.md5(b"\x07secret" + c).digest()
    assert chap.decode_binary("0x0a0B", "CHAP_C") == b"\x0a\x0b"
    assert chap.decode_binary("0bAQI=", "CHAP_C") == b"\x01\x02"
    for bad in ("1234", "0xzz", "0b!!", "0x"):
        with pytest.raises(ChapError):
            chap.decode_binary(bad, "CHAP_C")


def test_chap_exchange_and_mutual_check():
    creds = chap.ChapCredentials("me", "my-secret-123", "tgt", "tgt-secret-456")
    ex = chap.ChapExchange(creds)
    challenge = bytes(range(20))
    pairs = dict(ex.answer({"CHAP_A": "5", "CHAP_I": "9", "CHAP_C": "0x" + challenge.hex()}))
    assert pairs["CHAP_N"] == "me"
    assert pairs["CHAP_R"] == "0x" + chap.chap_response(9, "my-secret-123", challenge).hex()
    mine = chap.decode_binary(pairs["CHAP_C"], "CHAP_C")
    assert mine != challenge
    good = chap.chap_response(int(pairs["CHAP_I"]), "tgt-secret-456", mine)
    ex.verify_target({"CHAP_N": "tgt", "CHAP_R": "0x" + good.hex()})
    with pytest.raises(ChapError, match="CHAP_R is wrong"):
        ex.verify_target({"CHAP_N": "tgt", "CHAP_R": "0x" + bytes(16).hex()})
    with pytest.raises(ChapError, match="did not authenticate"):
        ex.verify_target({})


def test_chap_refuses_a_reflected_challenge_and_equal_secrets():
    ex = chap.ChapExchange(chap.ChapCredentials("me", "s1-secret-abc", "tgt", "s2-secret-abc"))
    pairs = dict(ex.answer({"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x" + "11" * 16}))
    # a rogue target hands our own challenge back to get it answered
    other = chap.ChapExchange(chap.ChapCredentials("me", "s1-secret-abc"))
    with pytest.raises(ChapError, match="reflection"):
        other.answer({"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": pairs["CHAP_C"]})
    with pytest.raises(ChapError, match="must differ"):
        chap.ChapExchange(chap.ChapCredentials("me", "same-secret-1", "t", "same-secret-1"))
    with pytest.raises(ChapError, match="only 5"):
        other.answer({"CHAP_A": "7", "CHAP_I": "1", "CHAP_C": "0x01"})


def test_sense_decoding_names_key_and_asc():
    fixed = bytes([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0x00, 0, 0, 0, 0])
    s = scsi.decode_sense(fixed)
    assert (s.key, s.asc, s.ascq) == (6, 0x29, 0)
    assert "UNIT ATTENTION" in str(s) and "POWER ON" in str(s)
    desc = bytes([0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0])
    assert "INVALID FIELD IN CDB" in str(scsi.decode_sense(desc))
    with pytest.raises(ProtocolError):
        scsi.decode_sense(b"\x70\x00")
    with pytest.raises(ProtocolError, match="SenseLength"):
        scsi.sense_from_segment(b"\x00\x20\x70")


def test_cdbs():
    assert scsi.read16(0x0102030405, 8).raw.hex() == "88000000000102030405000000080000"
    assert scsi.write16(1, 2, fua=True).raw[:2] == b"\x8a\x08"
    assert scsi.synchronize_cache10().raw[0] == 0x35 and len(scsi.synchronize_cache10().raw) == 16
    assert scsi.read_capacity16().raw[:2] == b"\x9e\x10"
    assert scsi.inquiry(64, True, 0xB0).raw[:5] == b"\x12\x01\xb0\x00\x40"


def test_portals():
    assert parse_portal("10.0.0.2") == ("10.0.0.2", 3260)
    assert parse_portal("10.0.0.2:3261") == ("10.0.0.2", 3261)
    assert parse_portal("127.0.0.1:3260,1") == ("127.0.0.1", 3260)
    assert parse_portal("[::1]:99") == ("::1", 99)
    with pytest.raises(ValueError, match="port"):
        parse_portal("1.2.3.4:http")
