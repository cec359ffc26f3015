"""Faults inside scenarios, on real Mininet and tgtd: each is recorded (faults.ndjson,
summary.json, the plots), the initiator's recovery shows, nothing acknowledged is lost,
and nothing is left behind, also when Ctrl-C comes while a fault is in progress."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.results import read_ndjson
from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.tgtd, pytest.mark.timeout(240)]

TESTBED = [sys.executable, "-m", "testbed.cli"]

# A short load: 16 MiB written at 2 MiB/s through a 32 MiB client, so that the faults
# fall while writeback goes on and pages are acknowledged before and after each of them.
LOAD = """expect: completed
duration_s: 30
deadline_s: 60
topology: {bulk_hosts: %d, client_bw_mbit: 40, bw_mbit: 100}
client:
  memory_mb: 32
  policy: gorman-3.6
  lockup_after_s: 15
  workloads:
    - {kind: writer, total_mb: 16, rate_mbps: 2, files: 2}
%s
target: {lun_mb: 64}
bulk: {mode: tcp, rate_mbit: 5}
bounds: {max_stall_s: 15}
"""


def run(tmp_path: Path, name: str, bulk_hosts: int, downloads: str, faults: str
        ) -> tuple[subprocess.CompletedProcess, Path]:
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(f"name: {name}\n" + LOAD % (bulk_hosts, downloads) + faults)
    out = tmp_path / name
    r = subprocess.run(TESTBED + ["run", str(scenario), "--out", str(out)],
                       capture_output=True, text=True, timeout=180)
    return r, out


def client_events(out: Path) -> list[dict]:
    return [e for s in read_ndjson(out / "client.ndjson") for e in s.get("events") or []]


def run_id(out: Path) -> str:
    return json.loads((out / "client-config.json").read_text())["run_id"]


def test_target_restart_is_recorded_recovered_and_loses_nothing(tmp_path):
    before = snapshot()
    r, out = run(tmp_path, "restart", 0, "", "faults: [{kind: target_restart, at_s: 3, "
                                            "pause_s: 1}]\n")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    [fault] = summary["faults"]
    assert fault["kind"] == "target_restart" and fault["params"] == {"pause_s": 1.0}
    assert fault["outcome"].startswith("ok: tgtd pid") and fault["end_outcome"].startswith("ok")
    assert 3.0 <= fault["t"] < fault["end_t"]
    # the metrics stream: the fault's records, and the client's account of its recovery
    assert [x["phase"] for x in read_ndjson(out / "faults.ndjson")] == ["start", "end"]
    kinds = [e["event"] for e in client_events(out)]
    assert kinds[0] == "load_started"
    assert "iscsi_connection_lost" in kinds and "iscsi_reinstated" in kinds
    [episode] = summary["recoveries"]
    assert fault["t"] - 0.5 <= episode["lost_t"] <= fault["end_t"]
    assert episode["reinstated_t"] >= fault["end_t"] and not episode["failed"]
    assert episode["resumed_after_s"] is not None and episode["resumed_after_s"] > 0
    outcome = json.loads((out / "client-outcome.json").read_text())
    assert outcome["iscsi"]["recoveries"] == 1
    assert outcome["iscsi"]["reissued"] == episode["reissued"]
    # the read-back covers what was acknowledged before the kill and after the restart
    assert fault["written_back_before_bytes"] > 0 and fault["written_back_after_bytes"] > 0
    integrity = summary["integrity"]
    assert integrity["checked"] and integrity["mismatches"] == 0
    assert integrity["bytes_checked"] == summary["writeback"]["bytes"] == 16 << 20
    assert summary["verdict"] == "completed"
    assert "target_restart at t=" in (out / "report.html").read_text()
    assert "session reinstated" in r.stdout + r.stderr
    assert_nothing_left(run_id(out))
    assert_untouched(before, snapshot())


def test_client_restart_comes_back_and_every_acknowledged_page_is_on_the_lun(tmp_path):
    before = snapshot()
    r, out = run(tmp_path, "client-restart", 1, "    - {kind: downloader, total_mb: 2}",
                 "faults: [{kind: client_restart, at_s: 4, pause_s: 1}]\n")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    [fault] = summary["faults"]
    assert fault["kind"] == "client_restart" and fault["params"] == {"pause_s": 1.0}
    assert re.fullmatch(r"ok: storage client pid \d+ killed \(SIGKILL\)", fault["outcome"])
    assert fault["end_outcome"].startswith("ok: storage client started again (incarnation 2")
    assert 4.0 <= fault["t"] and fault["end_t"] - fault["t"] >= 1.0
    # the event in the metrics stream, whose time axis goes on across the restart
    assert [x["phase"] for x in read_ndjson(out / "faults.ndjson")] == ["start", "end"]
    events = client_events(out)
    [back] = [e for e in events if e["event"] == "client_restarted"]
    assert back["incarnation"] == 2 and back["t"] >= fault["end_t"]
    ts = [s["t"] for s in read_ndjson(out / "client.ndjson")]
    assert ts == sorted(ts) and ts[-1] > fault["end_t"]
    # the client came back: it logged in again, and the target acknowledged its writes
    journal = summary["integrity"]["journal"]
    assert journal["restarts"] == 1 and journal["acked_after_restart"] > 0
    assert journal["acked_writes"] > journal["acked_after_restart"]     # and before it
    # every journalled page is on the LUN as last acknowledged
    assert journal["mismatches"] == 0 and journal["pages_checked"] > 0, journal
    assert journal["bytes_checked"] >= 16 << 20           # the writer's pages at least
    integrity = summary["integrity"]
    assert integrity["checked"] and integrity["mismatches"] == 0
    assert summary["verdict"] == "completed", summary["reasons"]
    assert "write journal: 1 client restarts" in (out / "report.html").read_text()
    assert_nothing_left(run_id(out))
    assert_untouched(before, snapshot())


def test_pause_link_flaps_and_a_bulk_crash(tmp_path):
    before = snapshot()
    downloads = ("    - {kind: downloader, total_mb: 3}\n"
                 "    - {kind: downloader, total_mb: 3}")
    r, out = run(tmp_path, "mix", 2, downloads, """faults:
  - {kind: target_pause, at_s: 2, for_s: 2}
  - {kind: link_down, host: bulk1, at_s: 2.5}
  - {kind: link_up, host: bulk1, at_s: 4}
  - {kind: link_down, host: client, at_s: 5, for_s: 1.5}
  - {kind: bulk_crash, host: bulk2, at_s: 1}
""")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    got = {f["index"]: f for f in summary["faults"]}
    assert [got[i]["kind"] for i in range(5)] == ["target_pause", "link_down", "link_up",
                                                  "link_down", "bulk_crash"]
    assert all(f["outcome"].startswith("ok") for f in got.values()), got
    assert got[0]["end_outcome"].endswith("resumed") and got[0]["end_t"] - got[0]["t"] >= 2.0
    assert got[1]["end_outcome"].endswith(" up") and got[1]["end_t"] <= got[2]["t"] + 0.5
    assert got[3]["end_outcome"].endswith(" up") and got[3]["end_t"] - got[3]["t"] >= 1.5
    assert got[4]["end_t"] is None and "killed" in got[4]["outcome"]
    integrity = summary["integrity"]
    assert integrity["checked"] and integrity["mismatches"] == 0 and integrity["bytes_checked"] > 0
    assert summary["verdict"] == "completed"
    assert_nothing_left(run_id(out))
    assert_untouched(before, snapshot())


def test_ctrl_c_while_the_target_is_stopped_resumes_it_and_leaves_nothing(tmp_path):
    before = snapshot()
    scenario = tmp_path / "pause.yaml"
    scenario.write_text("name: pause\n" + LOAD % (0, "")
                        + "faults: [{kind: target_pause, at_s: 1, for_s: 8}]\n")
    out = tmp_path / "pause"
    p = subprocess.Popen(TESTBED + ["run", str(scenario), "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "faults.ndjson").exists():
            assert time.monotonic() < deadline, "the fault never started"
            time.sleep(0.2)
        time.sleep(1)
        p.send_signal(signal.SIGINT)
        output, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    [fault] = summary["faults"]
    assert fault["kind"] == "target_pause" and fault["end_outcome"].endswith("resumed")
    assert_nothing_left(run_id(out))
    assert_untouched(before, snapshot())


def test_a_trigger_free_at_min_on_the_built_in_restart_scenario(tmp_path):
    """faults-restart-under-pressure: tgtd is killed the moment free memory first reaches
    min. Its load (contention's, with 4 MiB downloader receive buffers and tcp_mem raised
    with them) brings gorman-3.6 there; the plain contention load does not on the era
    models (from 2.6.19 the mmap writer is throttled at the dirty limits, and kswapd keeps
    free memory above min), so a free_at_min trigger on it would never fire. 3.6 marks a
    socket SOCK_MEMALLOC only once user space has connected it, so the reinstatement's
    SYN goes out on a plain socket under the GFP_ATOMIC floor and gets no skb: the session
    is never reinstated, the run is a proven lockup through the reinstatement (the
    scenario's expected verdict), no storage frame of the old connection was dropped, and
    what the target acknowledged before the loss reads back."""
    out = tmp_path / "trigger"
    r = subprocess.run(TESTBED + ["run", "faults-restart-under-pressure", "--out", str(out)],
                       capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr          # the verdict is the expected one
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "gorman-3.6"
    [fault] = summary["faults"]
    assert fault["kind"] == "target_restart" and fault["when"] == "free_at_min"
    assert fault["outcome"].startswith("ok"), fault     # the trigger held: min was reached
    at_min = next(s["t"] for s in read_ndjson(out / "client.ndjson")
                  if "free" in s and s["free"] <= s["wmark_min"])
    assert at_min <= fault["t"] <= at_min + 1.0       # the injector polls every 0.2 s
    [episode] = summary["recoveries"]
    assert episode["reinstated_t"] is None
    assert summary["verdict"] == "lockup"
    edges = {(e["waiter"], e["waits_for"]) for e in summary["lockup"]["cycle"]["edges"]}
    assert ("writeback", "iSCSI reinstatement") in edges
    assert ("iSCSI reinstatement", "an skb") in edges
    assert any("count with other traffic" in line for line in summary["lockup"]["cycle"]["text"])
    # the new connection's SYNs: dropped on transmit for want of an skb, in the `other`
    # class (the flow is not SOCK_MEMALLOC before it is connected); none of the storage
    # flow's frames was dropped while it was marked
    assert summary["drops"]["tx"]["other"].get("NOMEM", 0) > 0
    assert summary["drops"]["memalloc"]["total"] == 0
    assert summary["drops"]["tx"]["memalloc"]["total"] == 0
    assert summary["integrity"]["mismatches"] == 0 and summary["integrity"]["checked"]
    assert fault["written_back_before_bytes"] > 0
    assert_nothing_left(run_id(out))


def test_a_loss_burst_on_the_client_link_is_counted_and_loses_nothing(tmp_path):
    before = snapshot()
    r, out = run(tmp_path, "loss", 0, "", "faults: [{kind: loss_burst, at_s: 2, for_s: 2, "
                                         "loss_pct: 20}]\n")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    [fault] = summary["faults"]
    assert fault["kind"] == "loss_burst" and fault["outcome"].startswith("ok: 20% loss on ")
    assert fault["end_t"] - fault["t"] >= 2.0
    m = re.fullmatch(r"ok: loss ended on \S+: (\d+) of (\d+) frames lost \(.* %\)",
                     fault["end_outcome"])
    assert m and int(m[2]) > 0 and int(m[1]) > 0, fault["end_outcome"]
    # writeback went on across the burst (TCP retransmitted what was lost)
    assert fault["written_back_before_bytes"] > 0 and fault["written_back_after_bytes"] > 0
    integrity = summary["integrity"]
    assert integrity["checked"] and integrity["mismatches"] == 0 and integrity["bytes_checked"] > 0
    assert summary["verdict"] == "completed"
    assert_nothing_left(run_id(out))
    assert_untouched(before, snapshot())
