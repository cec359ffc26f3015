"""testbed.tgt against the real tgtd: start, configure, inspect, stop, kill."""

import subprocess

import pytest

from testbed.tgt import TgtDaemon, TgtError, parse_connections

pytestmark = [pytest.mark.tgtd, pytest.mark.root]

IQN = "iqn.2026-11.org.testbed:core"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_serves_a_lun_that_libiscsi_sees_as_a_disk(tmp_path):
    with TgtDaemon(tmp_path, portal="127.0.0.1:0") as d:
        assert d.port > 0
        d.add_target(1, IQN, tmp_path / "lun.img", size_bytes=8 << 20)
        assert (tmp_path / "lun.img").stat().st_size == 8 << 20
        r = subprocess.run(["iscsi-inq", f"iscsi://127.0.0.1:{d.port}/{IQN}/1"],
                           capture_output=True, text=True, timeout=20)
        assert "Peripheral Device Type:DIRECT_ACCESS" in r.stdout, r.stdout + r.stderr
        pid = d.pid
    assert not alive(pid), "tgtd still runs after stop()"
    assert not list(tmp_path.glob("tgtd.sock*"))


def test_chap_accounts_and_params_are_applied(tmp_path):
    with TgtDaemon(tmp_path, portal="127.0.0.1:0") as d:
        d.add_target(1, IQN, tmp_path / "lun.img", size_bytes=1 << 20)
        d.add_account(1, "alice", "secret-alice1")
        d.add_account(1, "target", "secret-target1", outgoing=True)
        d.set_param(1, "HeaderDigest", "CRC32C")
        show = d.show_target()
        assert "alice" in show and "target (outgoing)" in show
        params = d.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target", "--tid", "1")
        assert "HeaderDigest=CRC32C" in params
        # a login without CHAP is refused once an incoming account is bound
        r = subprocess.run(["iscsi-inq", f"iscsi://127.0.0.1:{d.port}/{IQN}/1"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode != 0


def test_kill_then_restart_on_the_same_port_and_file(tmp_path):
    d = TgtDaemon(tmp_path / "a", portal="127.0.0.1:0").start()
    d.add_target(1, IQN, tmp_path / "lun.img", size_bytes=1 << 20)
    port, pid = d.port, d.pid
    d.kill()
    assert not alive(pid)
    with TgtDaemon(tmp_path / "b", portal=f"127.0.0.1:{port}") as d2:
        d2.add_target(1, IQN, tmp_path / "lun.img")
        assert d2.port == port


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(TgtError, match="not IP:PORT"):
        TgtDaemon(tmp_path, portal="127.0.0.1")
    with TgtDaemon(tmp_path, portal="127.0.0.1:0") as d:
        with pytest.raises(TgtError, match="may contain only"):
            d.add_target(1, "iqn bad name", tmp_path / "x.img", size_bytes=512)
        with pytest.raises(TgtError, match="multiple of 512"):
            d.add_target(1, IQN, tmp_path / "x.img", size_bytes=1000)
        with pytest.raises(TgtError, match="does not exist"):
            d.add_target(1, IQN, tmp_path / "missing.img")


def test_parse_connections():
    show = """Target 1: iqn.x:y
    System information:
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2026-11.org.testbed:client alias: none
            Connection: 0
                IP Address: 10.0.0.1
    LUN information:
"""
    (c,) = parse_connections(show)
    assert (c.tid, c.sid, c.cid, c.initiator, c.ip) == (1, 3, 0, "iqn.2026-11.org.testbed:client", "10.0.0.1")
