"""nodes.iscsi_target with a real tgtd on loopback, checked with libiscsi's iscsi-inq."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.launch import wait_ready

pytestmark = [pytest.mark.tgtd, pytest.mark.root]
IQN = "iqn.2026-11.org.testbed:test"
NODE = [sys.executable, "-m", "nodes.iscsi_target"]


def start(tmp_path, *extra):
    stats, log = tmp_path / "target.ndjson", tmp_path / "target.log"
    with open(log, "wb") as err:
        p = subprocess.Popen(NODE + ["--portal", "127.0.0.1:0", "--iqn", IQN, "--backing-file",
                                     str(tmp_path / "lun.img"), "--size-mb", "8", "--stats",
                                     str(stats), "--interval", "0.3", *extra],
                             stdout=subprocess.DEVNULL, stderr=err)
    wait_ready(p, "iscsi_target", stats, log)
    ready = json.loads(stats.read_text().splitlines()[0])
    return p, stats, ready


def inq(portal: str, creds: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["iscsi-inq", f"iscsi://{creds}{portal}/{IQN}/1"],
                          capture_output=True, text=True, timeout=20)


def stop(p, stats):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0, (stats.parent / "target.log").read_text()
    return [json.loads(l) for l in stats.read_text().splitlines()]


def tgtd_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


def test_serves_a_direct_access_lun_and_reports(tmp_path):
    p, stats, ready = start(tmp_path)
    assert ready["event"] == "ready" and ready["lun"] == 1 and ready["size_bytes"] == 8 << 20
    assert (tmp_path / "lun.img").stat().st_size == 8 << 20
    r = inq(ready["portal"])
    assert r.returncode == 0, r.stderr
    assert "Peripheral Device Type:DIRECT_ACCESS" in r.stdout
    time.sleep(0.7)
    lines = stop(p, stats)
    counters = [l for l in lines if l["event"] == "stats"]
    assert counters and counters[-1]["backing_file_bytes"] == 8 << 20
    assert counters[-1]["tgtd_cpu_s"] is not None and "connections" in counters[-1]
    assert lines[-1] == {**lines[-1], "event": "stop", "signal": signal.SIGTERM}
    deadline = time.monotonic() + 5
    while tgtd_alive(ready["tgtd_pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tgtd_alive(ready["tgtd_pid"]), "tgtd outlived the node"


def test_connections_are_counted(tmp_path):
    p, stats, ready = start(tmp_path)
    # hold a session open with iscsi-perf (reads) while the counters are taken
    perf = subprocess.Popen(["iscsi-perf", f"iscsi://{ready['portal']}/{IQN}/1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, seen = time.monotonic() + 5, 0
        while time.monotonic() < deadline and not seen:
            time.sleep(0.3)
            seen = max((l.get("connections", 0) for l in
                        map(json.loads, stats.read_text().splitlines())), default=0)
        assert seen >= 1
    finally:
        perf.kill()
        perf.wait()
    stop(p, stats)


def test_chap_incoming_and_mutual(tmp_path):
    p, stats, ready = start(tmp_path, "--chap-user", "alice", "--chap-secret", "alicesecret1",
                            "--mutual-user", "target", "--mutual-secret", "targetsecret1")
    assert ready["chap"] and ready["mutual_chap"]
    assert inq(ready["portal"]).returncode != 0                 # no credentials
    assert inq(ready["portal"], "alice%wrongsecret1@").returncode != 0
    ok = inq(ready["portal"], "alice%alicesecret1@")
    assert ok.returncode == 0 and "DIRECT_ACCESS" in ok.stdout, ok.stderr
    stop(p, stats)


@pytest.mark.parametrize("extra, needle", [
    (["--size-mb", "0"], "--size-mb must be positive"),
    (["--size-mb", "8", "--chap-user", "u"], "--chap-user and --chap-secret go together"),
    (["--size-mb", "8", "--mutual-user", "u", "--mutual-secret", "s"], "needs --chap-user"),
])
def test_bad_arguments(tmp_path, extra, needle):
    r = subprocess.run(NODE + ["--portal", "127.0.0.1:0", "--iqn", IQN, "--backing-file",
                               str(tmp_path / "x.img"), *extra],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_bad_iqn_is_one_line_and_leaves_no_tgtd(tmp_path):
    r = subprocess.run(NODE + ["--portal", "127.0.0.1:0", "--iqn", "bad name!", "--backing-file",
                               str(tmp_path / "x.img"), "--size-mb", "8",
                               "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("iscsi_target: error: target name")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "w").glob("tgtd.sock*"))


def test_long_workdir_falls_back_to_a_short_socket_path(tmp_path):
    deep = tmp_path / ("very-long-folder-name-" * 4) / "tgtd"
    p, stats, ready = start(tmp_path, "--workdir", str(deep))
    assert len(str(deep)) > 107 and len(ready["tgtd_workdir"]) < 60
    assert inq(ready["portal"]).returncode == 0
    stop(p, stats)
    assert not os.path.exists(ready["tgtd_workdir"])   # the temporary folder went
