"""testbed.launch: node programs' command lines, and the one readiness wait, with real
stand-in processes (``python -c``) and real node programs in a host of this machine."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.backends.base import Host
from testbed.errors import ConfigError, TimeoutExpired
from testbed.launch import (BULK_PORTS, FLOOD_PORT, TARGET_IQN, BulkSource, NodeExited,
                            Target, Verify, command, has_ready_event, start, wait_ready)
from testbed.scenario import ChapSection

READY_LINE = '{"t": 0.0, "event": "ready"}'


class ThisMachine(Host):
    """The machine itself as a host: processes are plain children."""

    name, ip, mac, intf = "here", "127.0.0.1", "", "lo"

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(argv, **kwargs)


def stand_in(code: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)


def ends(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()


def test_a_node_that_writes_the_ready_event_is_ready(tmp_path):
    events, log = tmp_path / "n.ndjson", tmp_path / "n.log"
    p = stand_in(f"import time; open({str(events)!r}, 'a').write({READY_LINE!r} + '\\n'); "
                 f"time.sleep(30)", log)
    try:
        wait_ready(p, "standin", events, log, timeout=10)
        assert p.poll() is None
    finally:
        ends(p)


def test_a_node_that_never_gets_ready_times_out_naming_it_and_its_log(tmp_path):
    events, log = tmp_path / "n.ndjson", tmp_path / "n.log"
    p = stand_in(f"import time; open({str(events)!r}, 'a').write('{{\"event\": \"stats\"}}\\n'); "
                 f"time.sleep(30)", log)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutExpired) as err:
            wait_ready(p, "sleepy", events, log, timeout=0.5)
        assert 0.5 <= time.monotonic() - t0 < 5
        assert "node sleepy was not ready after 0.5s" in str(err.value)
        assert str(log) in str(err.value)
    finally:
        ends(p)


def test_a_node_that_dies_early_is_reported_at_once(tmp_path):
    events, log = tmp_path / "n.ndjson", tmp_path / "n.log"
    p = stand_in("import sys; print('no such disk', file=sys.stderr); sys.exit(3)", log)
    try:
        t0 = time.monotonic()
        with pytest.raises(NodeExited) as err:
            wait_ready(p, "doomed", events, log, timeout=60)
        assert time.monotonic() - t0 < 10          # not the 60 s timeout
        assert "node doomed exited with status 3 before it was ready" in str(err.value)
        assert str(log) in str(err.value)
        assert "no such disk" in log.read_text()
    finally:
        ends(p)


def test_a_ready_event_written_just_before_exiting_counts(tmp_path):
    events, log = tmp_path / "n.ndjson", tmp_path / "n.log"
    p = stand_in(f"open({str(events)!r}, 'a').write({READY_LINE!r} + '\\n')", log)
    p.wait()
    wait_ready(p, "brief", events, log, timeout=5)


def test_only_complete_lines_written_since_the_start_count(tmp_path):
    events = tmp_path / "n.ndjson"
    events.write_text(READY_LINE + "\n")            # a previous node's
    since = events.stat().st_size
    assert has_ready_event(events) and not has_ready_event(events, since)
    with open(events, "a") as f:
        f.write(READY_LINE)                         # no newline yet: still being written
    assert not has_ready_event(events, since)
    with open(events, "a") as f:
        f.write("\n")
    assert has_ready_event(events, since)
    assert not has_ready_event(tmp_path / "missing.ndjson")


@pytest.mark.cli
def test_start_runs_a_real_node_with_its_log_and_events_in_the_run_folder(tmp_path):
    node = start(ThisMachine(), "bulk1", BulkSource("udp", rate_mbit=1, client_ip="127.0.0.1",
                                                     size=100), tmp_path)
    try:
        assert (node.log, node.events) == (tmp_path / "bulk1.log", tmp_path / "bulk1.ndjson")
        node.wait_ready(timeout=20)
        assert node.proc.poll() is None and node.log.exists()
    finally:
        node.proc.terminate()
        node.proc.wait(10)


@pytest.mark.cli
def test_start_reports_a_real_node_that_refuses_its_arguments(tmp_path):
    node = start(ThisMachine(), "target", Target(ip="127.0.0.1", backing_file=tmp_path / "x.img",
                                                 size_mb=0, workdir=tmp_path / "w"), tmp_path)
    with pytest.raises(NodeExited) as err:
        node.wait_ready(timeout=20)
    assert f"node target exited with status 2 before it was ready; see {tmp_path}/target.log" \
        == str(err.value)
    assert "--size-mb must be positive" in (tmp_path / "target.log").read_text()


def test_command_lines():
    assert command(BulkSource("tcp", bind="10.0.0.11"))[:3] == [sys.executable, "-m",
                                                                "nodes.bulk_source"]
    assert BulkSource("http").args() == ["--mode", "http", "--rate-mbit", "0.0",
                                         "--port", str(BULK_PORTS["http"])]
    assert BulkSource("udp", client_ip="10.0.0.1", size=500).args()[-4:] == \
        ["--dest", f"10.0.0.1:{FLOOD_PORT}", "--size", "500"]
    spoof = BulkSource("spoof", client_ip="10.0.0.1", initiator_port=40000,
                       target_ip="10.0.0.2", seed=3).args()
    assert spoof[4:] == ["--dest", "10.0.0.1:40000", "--spoof-src", "10.0.0.2:3260",
                         "--size", "1400", "--seed", "3"]
    chap = ChapSection(user="alice", secret="alicesecret1", mutual_user="target",
                       mutual_secret="targetsecret1")
    target = Target(ip="10.0.0.2", backing_file=Path("lun.img"), size_mb=8,
                    workdir=Path("w"), chap=chap).args()
    assert target[:4] == ["--portal", "10.0.0.2:3260", "--iqn", TARGET_IQN]
    assert target[-8:] == ["--chap-user", "alice", "--chap-secret", "alicesecret1",
                           "--mutual-user", "target", "--mutual-secret", "targetsecret1"]
    local = Verify(Path("m.json"), Path("i.json"), 120.0, disk_file=Path("d.img"), chap=chap)
    assert local.args()[-2:] == ["--file", "d.img"] and "--chap-user" not in local.args()


def test_missing_facts_are_reported_before_anything_starts():
    with pytest.raises(ConfigError, match="mode spoof needs initiator_port, target_ip"):
        BulkSource("spoof", client_ip="10.0.0.1")
    with pytest.raises(ConfigError, match="mode 'ftp' is unknown"):
        BulkSource("ftp")
    with pytest.raises(ConfigError, match="either the target's address or a disk file"):
        Verify(Path("m.json"), Path("i.json"), 1.0)
