"""Login, CHAP, discovery and keepalive against a real tgtd."""

from __future__ import annotations

import time

import pytest

from testbed.iscsi.chap import ChapCredentials
from testbed.iscsi.errors import ChapError, LoginError
from testbed.iscsi.login import discover

pytestmark = pytest.mark.tgtd

USER, SECRET = "u1", "secret12-initiator"
TUSER, TSECRET = "t1", "secret12-target"


def test_discovery_lists_the_target(tgt):
    targets = discover(tgt.portal, timeout=5)
    assert targets == [(tgt.iqn, [f"127.0.0.1:{tgt.daemon.port},1"])]


def test_unknown_target_is_refused_with_class_and_detail(tgt):
    from testbed.iscsi.session import Session, SessionConfig
    with pytest.raises(LoginError) as err:
        Session(tgt.portal, "iqn.2026-11.org.testbed:nope", SessionConfig(login_timeout=5)).open()
    assert (err.value.status_class, err.value.status_detail) == (2, 3)
    assert "target not found" in str(err.value)


@pytest.fixture
def chap_tgt(tgt):
    tgt.daemon.add_account(tid=1, user=USER, password=SECRET)
    return tgt


def test_chap_right_secret_logs_in(chap_tgt):
    with chap_tgt.session(chap=ChapCredentials(USER, SECRET)) as s:
        s.test_unit_ready(1)
        assert s.read(1, 0, 1, 512) == bytes(512)


@pytest.mark.parametrize("user,secret", [(USER, "wrong-secret-123"), ("nobody", SECRET)],
                         ids=["wrong-secret", "wrong-user"])
def test_chap_wrong_credentials_fail_clearly(chap_tgt, user, secret):
    with pytest.raises(ChapError) as err:
        chap_tgt.session(chap=ChapCredentials(user, secret))
    assert "refused" in str(err.value) and "authentication failed" in str(err.value)
    assert (err.value.status_class, err.value.status_detail) == (2, 1)


def test_target_requiring_chap_refuses_a_login_without_it(chap_tgt):
    with pytest.raises(ChapError, match="requires CHAP"):
        chap_tgt.session()


def test_chap_with_discovery(chap_tgt):
    # tgtd applies accounts to Normal sessions of the bound target; discovery stays open
    assert discover(chap_tgt.portal, timeout=5)[0][0] == chap_tgt.iqn


def test_mutual_chap_checks_the_target(chap_tgt):
    chap_tgt.daemon.add_account(tid=1, user=TUSER, password=TSECRET, outgoing=True)
    with chap_tgt.session(chap=ChapCredentials(USER, SECRET, TUSER, TSECRET)) as s:
        s.test_unit_ready(1)
    with pytest.raises(ChapError, match="target's CHAP_R is wrong"):
        chap_tgt.session(chap=ChapCredentials(USER, SECRET, TUSER, "not-the-target-secret"))
    with pytest.raises(ChapError, match="named itself"):
        chap_tgt.session(chap=ChapCredentials(USER, SECRET, "someone-else", TSECRET))


def test_mutual_chap_refused_when_target_has_no_outgoing_account(chap_tgt):
    with pytest.raises(LoginError):
        chap_tgt.session(chap=ChapCredentials(USER, SECRET, TUSER, TSECRET))


def test_target_nop_in_pings_are_answered(make_tgt):
    """tgtd pings every second and drops the connection after 2 unanswered pings."""
    tgt = make_tgt(nop_interval=1, nop_count=2)
    with tgt.session(keepalive_interval=0) as s:
        s.test_unit_ready(1)
        time.sleep(4.5)
        assert s.stats.target_pings_answered >= 3
        assert s.stats.recoveries == 0
        s.test_unit_ready(1)


def test_initiator_keepalive_pings_an_idle_target(tgt):
    with tgt.session(keepalive_interval=0.5, keepalive_timeout=2) as s:
        s.test_unit_ready(1)
        time.sleep(2)
        assert s.stats.pings_sent >= 2 and s.stats.recoveries == 0
        s.test_unit_ready(1)
