"""A scenario's ``faults:`` list: checked like every key (file, line, key); the injector's
schedule, records and undo on real processes; the summary's faults and recoveries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import faults, scenario
from testbed.report import summary as summ
from testbed.runctx import RunContext
from testbed.schema import SchemaError

HEAD = ("name: f\ndeadline_s: 60\ntopology: {bulk_hosts: 2}\n"
        "client:\n  workloads: [{kind: writer}]\n")


def load(tmp_path: Path, text: str) -> scenario.Scenario:
    p = tmp_path / "s.yaml"
    p.write_text(HEAD + text)
    return scenario.load(p)


def problems(tmp_path: Path, text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(SchemaError) as e:
        load(tmp_path, text)
    assert all(p.file.endswith("s.yaml") for p in e.value.problems)
    return [(p.line, p.key, p.message) for p in e.value.problems]


def test_every_kind_with_its_defaults(tmp_path):
    s = load(tmp_path, """faults:
  - {kind: target_restart, at_s: 12}
  - {kind: target_pause, at_s: 1.5, for_s: 2}
  - {kind: link_down, at_s: 3}
  - {kind: link_up, host: bulk2, at_s: 9}
  - {kind: bulk_crash, when: free_at_min}
  - {kind: bulk_crash, host: bulk2, when: first_storage_drop, at_s: 1}
""")
    kinds = [type(f) for f in s.faults]
    assert kinds == [faults.TargetRestart, faults.TargetPause, faults.LinkDown, faults.LinkUp,
                     faults.BulkCrash, faults.BulkCrash]
    assert s.faults[0].pause_s == 1.0 and s.faults[1].for_s == 2.0
    assert (s.faults[2].host, s.faults[2].for_s) == ("client", None)
    assert (s.faults[4].host, s.faults[4].at_s, s.faults[4].when) == ("bulk1", None, "free_at_min")
    assert s.faults[0].params() == {"pause_s": 1.0}
    assert "kind: bulk_crash" in scenario.dump(s)      # the run folder keeps them


def test_no_faults_is_the_default(tmp_path):
    assert load(tmp_path, "").faults == []


def test_field_mistakes_are_all_reported_with_line_and_key(tmp_path):
    got = problems(tmp_path, """faults:
  - {kind: target_restrat, at_s: 12}
  - {kind: target_pause, at_s: 1, for_s: 30}
  - {kind: link_down, at_s: 5, for_s: -2}
  - {kind: bulk_crash, when: later}
  - {at_s: 3}
  - 5
  - {kind: target_restart, at_s: 1, pause: 3}
  - {kind: target_restart, at_s: -1}
""")
    assert [(line, key) for line, key, _ in got] == [
        (7, "faults[0].kind"), (8, "faults[1].for_s"), (9, "faults[2].for_s"),
        (10, "faults[3].when"), (11, "faults[4].kind"), (12, "faults[5]"),
        (13, "faults[6].pause"), (14, "faults[7].at_s")]
    text = dict(((line, key), msg) for line, key, msg in got)
    assert "did you mean 'target_restart'" in text[(7, "faults[0].kind")]
    assert "above the maximum 8" in text[(8, "faults[1].for_s")]
    assert "did you mean 'pause_s'" in text[(13, "faults[6].pause")]


def test_a_fault_needs_a_time_or_a_trigger(tmp_path):
    assert problems(tmp_path, "faults: [{kind: target_restart}]\n") == [
        (6, "faults[0].at_s", "is required (seconds from the start of the load), or give a "
                              "trigger: when: free_at_min | first_storage_drop")]


def test_what_faults_need_of_the_rest_of_the_scenario(tmp_path):
    got = problems(tmp_path, """faults:
  - {kind: link_down, host: bulk3, at_s: 1}
  - {kind: bulk_crash, host: client, at_s: 2}
  - {kind: link_up, at_s: 60}
""")
    got.sort()        # a fault's own rules come before the scenario's, which span sections
    assert [(line, key) for line, key, _ in got] == [
        (7, "faults[0].host"), (8, "faults[1].host"), (9, "faults[2].at_s")]
    assert "hosts: client, bulk1, bulk2" in got[0][2]
    assert "'client' is not a bulk host" in got[1][2]
    assert "not before deadline_s (60.0)" in got[2][2]
    got = problems(tmp_path, "storage: local\nbackend: docker\n"
                             "faults: [{kind: target_pause, at_s: 1}]\n")
    assert {m for _, _, m in got} == {
        "faults are injected on the Mininet backend only, not docker",
        "target_pause needs storage: iscsi (there is no target)"}


def test_built_in_fault_scenarios_load():
    restart = scenario.load("faults-target-restart")
    assert restart.client.policy == "gorman-3.6" and restart.expected == "completed"
    assert [f.kind for f in restart.faults] == ["target_restart"]
    assert restart.client.workloads == scenario.load("contention").client.workloads
    flap = scenario.load("faults-link-flap")
    assert [f.kind for f in flap.faults] == ["link_down", "link_down", "link_up"]
    pressure = scenario.load("faults-restart-under-pressure")
    [restart] = pressure.faults
    assert (restart.kind, restart.when, restart.pause_s) == ("target_restart", "free_at_min", 1.0)
    # contention's load, with larger receive buffers: the plain one never brings
    # gorman-3.6 to min on the era models, so the trigger would never fire
    contention = scenario.load("contention").client.workloads
    assert [(w.kind, w.total_mb) for w in pressure.client.workloads] == [
        (w.kind, w.total_mb) for w in contention]
    assert [w.rcvbuf_kb for w in pressure.client.workloads if w.kind == "downloader"] == [4096] * 3
    # every policy loses the session: 3.6 marks a socket SOCK_MEMALLOC only once it is
    # connected, so the reinstatement's SYN has no reserve either (docs/kernels.md)
    assert pressure.expected == "lockup"
    for policy in ("none", "reserve-only", "phillips-2005", "phillips-2005-threshold"):
        assert scenario.load("faults-restart-under-pressure",
                             [f"client.policy={policy}"]).expected == "lockup"


# -- the injector, on real processes -------------------------------------------------------

def sample(t: float, free: int = 100, drops: int = 0, **extra) -> dict:
    net = {"rx": {"classes": {"memalloc": {"dropped": {"frames": drops}},
                              "other": {"dropped": {"frames": 0}}}}}
    return {"t": t, "free": free, "wmark_min": 50, "net": net, "writeback_bytes": 0, **extra}


def append(path: Path, *lines: dict) -> None:
    with open(path, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def state(pid: int, *wanted: str) -> str:
    """The process's state letter, waited for up to 2 s to be one of ``wanted`` (a signal
    takes effect when the process is next scheduled, which a loaded machine delays)."""
    deadline = time.monotonic() + 2
    while True:
        got = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if not wanted or got in wanted or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


@pytest.fixture
def run(tmp_path):
    ctx = RunContext.create(base_dir=tmp_path, name="faults", clean_stale=False)
    yield ctx
    ctx.close()


def plant(run: RunContext, procs: dict) -> faults.Plant:
    return faults.Plant(run_dir=run.dir, network=None, procs=procs,
                        start_target=lambda: None, register=run.register,
                        unregister=run.unregister)


def records(run: RunContext) -> list[dict]:
    return [json.loads(line) for line in (run.dir / "faults.ndjson").read_text().splitlines()]


@pytest.mark.root
def test_a_trigger_starts_a_fault_and_the_process_is_killed_by_pid(run):
    bulk = subprocess.Popen(["sleep", "60"])
    procs = {"bulk1": bulk}
    spec = faults.BulkCrash(when="free_at_min", at_s=0.5)
    inj = faults.Injector([spec], plant(run, procs))
    client = run.dir / "client.ndjson"
    start = time.monotonic()
    append(client, sample(0.0, events=[{"t": 0.0, "event": "load_started", "monotonic": start}]),
           sample(0.1, free=80))
    inj.poll()
    assert bulk.poll() is None and not (run.dir / "faults.ndjson").exists()
    append(client, sample(0.2, free=50))          # at min: the trigger holds from t = 0.2
    inj.poll()
    assert bulk.poll() is None                    # due at 0.7 on the client's clock
    while time.monotonic() - start < 0.75:
        time.sleep(0.05)
    inj.poll()
    assert bulk.wait(5) == -9 and "bulk1" not in procs
    [rec] = records(run)
    assert rec["kind"] == "bulk_crash" and rec["phase"] == "start" and rec["t"] >= 0.7
    assert rec["outcome"] == f"ok: bulk1's source pid {bulk.pid} killed"
    assert rec["when"] == "free_at_min" and rec["params"] == {"host": "bulk1"}


@pytest.mark.root
def test_a_load_started_on_a_guests_clock_starts_when_it_is_read(run):
    """A kernel client's load_started carries its guest's clock (``guest_monotonic``),
    which is not this host's: the load starts when the injector reads the event."""
    bulk = subprocess.Popen(["sleep", "60"])
    procs = {"bulk1": bulk}
    inj = faults.Injector([faults.BulkCrash(at_s=0.5)], plant(run, procs))
    append(run.dir / "client.ndjson", sample(0.0, events=[
        {"t": 0.0, "event": "load_started", "guest_monotonic": 7.5}]))
    read_at = time.monotonic()
    inj.poll()
    assert bulk.poll() is None                    # due 0.5 s after it was read, not at once
    while time.monotonic() - read_at < 0.55:
        time.sleep(0.05)
    inj.poll()
    assert bulk.wait(5) == -9
    assert records(run)[0]["t"] >= 0.5


@pytest.mark.root
def test_a_pause_is_resumed_when_due_and_by_the_run_teardown(run):
    # not one of the run's processes (its sweep would end it): a daemon it acts on
    tgtd = subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"]})
    try:
        append(run.dir / "target.ndjson", {"t": 0.0, "event": "ready", "tgtd_pid": tgtd.pid})
        short = faults.TargetPause(at_s=0.0, for_s=0.3)
        long = faults.TargetPause(at_s=1.0, for_s=8.0)
        inj = faults.Injector([short, long], plant(run, {}))
        append(run.dir / "client.ndjson", sample(0.0, events=[
            {"t": 0.0, "event": "load_started", "monotonic": time.monotonic()}]))
        inj.poll()
        assert state(tgtd.pid, "T") == "T"
        assert any(r["kind"] == "fault" for r in json.loads(run.state_path.read_text())["resources"])
        deadline = time.monotonic() + 10
        while len(records(run)) < 3:                # the first ends, then the second starts
            assert time.monotonic() < deadline, records(run)
            time.sleep(0.05)
            inj.poll()
        assert state(tgtd.pid, "T") == "T"
        phases = [(r["index"], r["phase"]) for r in records(run)]
        assert phases == [(0, "start"), (0, "end"), (1, "start")]
        run.close()                                 # Ctrl-C, an error: the teardown resumes it
        assert state(tgtd.pid, "S", "R") in ("S", "R")
        assert records(run)[-1]["phase"] == "end" and records(run)[-1]["index"] == 1
    finally:
        tgtd.kill()
        tgtd.wait()


@pytest.mark.root
def test_a_fault_that_cannot_be_done_is_recorded_and_degrades_the_run(run, tmp_path):
    inj = faults.Injector([faults.BulkCrash(at_s=0.0, host="bulk2")], plant(run, {}))
    append(run.dir / "client.ndjson", sample(0.0, events=[
        {"t": 0.0, "event": "load_started", "monotonic": time.monotonic()}]))
    inj.poll()
    inj.finish()
    [rec] = records(run)
    assert rec["outcome"] == "failed: bulk2 runs no bulk source to crash"
    s = load(tmp_path, "")
    append(run.dir / "client-outcome.json", {})
    (run.dir / "client-outcome.json").write_text(json.dumps({"verdict": "completed", "t": 1.0}))
    (run.dir / "integrity.json").write_text(json.dumps({"bytes_checked": 4096, "mismatches": 0}))
    got = summ.summarize(run.dir, s, duration_s=1.0)
    assert got["verdict"] == "degraded"
    assert got["reasons"] == ["fault 0 (bulk_crash) failed: bulk2 runs no bulk source to crash"]


# -- the summary ------------------------------------------------------------------------

def test_recovery_episodes_from_the_client_events():
    samples = [sample(0.0, writeback_bytes=0), sample(1.0, writeback_bytes=100),
               sample(2.0, writeback_bytes=100, events=[
                   {"t": 1.5, "event": "iscsi_connection_lost", "cause": "reset"}]),
               sample(3.0, writeback_bytes=100, events=[
                   {"t": 2.9, "event": "iscsi_reinstated", "reissued": 4}]),
               sample(3.1, writeback_bytes=100), sample(3.2, writeback_bytes=300),
               sample(4.0, writeback_bytes=300, events=[
                   {"t": 3.9, "event": "iscsi_connection_lost", "cause": "timeout"},
                   {"t": 3.95, "event": "iscsi_recovery_failed"}])]
    got = summ.recoveries(samples)
    assert got[0] == {"lost_t": 1.5, "cause": "reset", "reinstated_t": 2.9, "reissued": 4,
                      "failed": False, "writeback_resumed_t": 3.2, "resumed_after_s": 1.7}
    assert got[1]["failed"] and got[1]["reinstated_t"] is None
    lines = summ.fault_lines({"recoveries": got})
    assert lines[0] == ("iSCSI connection lost at t=1.5s, session reinstated at t=2.9s, "
                        "4 commands re-issued, writeback resumed 1.7s after the loss")
    assert lines[1].endswith("not recovered")


def test_faults_in_the_summary_with_bytes_before_and_after(tmp_path):
    append(tmp_path / "faults.ndjson",
           {"t": 1.0, "event": "fault", "index": 0, "kind": "target_restart", "phase": "start",
            "at_s": 1.0, "when": None, "params": {"pause_s": 1.0}, "outcome": "ok: killed"},
           {"t": 2.0, "event": "fault", "index": 0, "kind": "target_restart", "phase": "end",
            "at_s": 1.0, "when": None, "params": {"pause_s": 1.0}, "outcome": "ok: back"})
    samples = [sample(0.5, writeback_bytes=10), sample(1.0, writeback_bytes=40),
               sample(3.0, writeback_bytes=100)]
    [f] = summ.faults(tmp_path, samples)
    assert (f["t"], f["end_t"], f["outcome"], f["end_outcome"]) == (1.0, 2.0, "ok: killed", "ok: back")
    assert (f["written_back_before_bytes"], f["written_back_after_bytes"]) == (40, 60)
    assert summ.faults(tmp_path / "none", samples) == []


def test_broken_faults_come_with_every_other_mistake(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("""name: f
deadline_s: 10
duration_s: 20
topology: {bulk_hosts: 2}
client:
  workloads: [{kind: writer}]
faults:
  - {kind: bulk_crash, host: [1], at_s: 1}
  - {kind: link_down, host: {a: 1}, at_s: 1}
  - {kind: target_pause, at_s: x}
  - 7
  - {kind: link_up, host: bulk9, at_s: 30}
""")
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    got = sorted((x.line, x.key) for x in e.value.problems)
    assert got == [(2, "deadline_s"), (8, "faults[0].host"), (9, "faults[1].host"),
                   (10, "faults[2].at_s"), (11, "faults[3]"), (12, "faults[4].at_s"),
                   (12, "faults[4].host")]


@pytest.mark.root
def test_a_fault_never_reached_is_recorded_as_skipped(run):
    inj = faults.Injector([faults.BulkCrash(when="first_storage_drop"),
                           faults.TargetRestart(at_s=50)], plant(run, {}))
    append(run.dir / "client.ndjson", sample(0.0, events=[
        {"t": 0.0, "event": "load_started", "monotonic": time.monotonic()}]))
    inj.poll()
    inj.finish()
    assert [(r["phase"], r["outcome"]) for r in records(run)] == [
        ("skipped", "not reached: trigger first_storage_drop never held"),
        ("skipped", "not reached: the load ended first")]
    got = summ.faults(run.dir, [sample(0.0)])
    assert [(f["t"], f["written_back_before_bytes"]) for f in got] == [(None, None)] * 2
    assert summ.fault_lines({"faults": got})[1] == ("fault 1 target_restart: not reached: "
                                                     "the load ended first")


@pytest.mark.root
@pytest.mark.tgtd
def test_the_storage_client_hears_of_each_recovery_from_the_session(tmp_path):
    """The session's recovery hooks, through the storage client's KernelSocketHooks, on a
    real tgtd killed and started again on the same port and LUN file."""
    from nodes.storage_client.agent import KernelSocketHooks
    from testbed.iscsi.session import Session, SessionConfig
    from testbed.mm.config import MachineConfig
    from testbed.mm.manager import MemoryManager
    from testbed.tgt import TgtDaemon

    iqn = "iqn.2026-11.org.testbed:faults"
    hooks = KernelSocketHooks(MemoryManager.from_config(MachineConfig(memory_mb=64)), None,
                              "127.0.0.1")
    first = TgtDaemon(tmp_path / "a", portal="127.0.0.1:0").start()
    second = None
    try:
        first.add_target(1, iqn, tmp_path / "lun.img", size_bytes=4 << 20)
        cfg = SessionConfig(login_timeout=5, command_timeout=5, max_reconnects=10,
                            reconnect_backoff_max=0.5)
        s = Session(("127.0.0.1", first.port), iqn, cfg, hooks=hooks).open()
        try:
            s.test_unit_ready(1)
            hooks.events.started = time.monotonic()
            first.kill()
            second = TgtDaemon(tmp_path / "b", portal=f"127.0.0.1:{first.port}").start()
            second.add_target(1, iqn, tmp_path / "lun.img")
            s.write(1, 0, b"\x5a" * 4096, 512)        # goes through once reinstated
            assert (tmp_path / "lun.img").read_bytes()[:4096] == b"\x5a" * 4096
            got = hooks.events.source()["events"]
            assert [e["event"] for e in got] == ["iscsi_connection_lost", "iscsi_reinstated"]
            assert got[0]["t"] <= got[1]["t"] and got[0]["cause"]
            assert got[1]["reissued"] == s.stats.reissued and s.stats.recoveries == 1
            assert hooks.events.source() == {}             # handed over once
        finally:
            s.close(timeout=5)
    finally:
        first.stop()
        if second is not None:
            second.stop()


# -- loss bursts ------------------------------------------------------------------------------

def test_a_loss_burst_is_checked_like_every_fault(tmp_path):
    s = load(tmp_path, "faults: [{kind: loss_burst, at_s: 2}, "
                       "{kind: loss_burst, host: bulk2, at_s: 1, for_s: 3, loss_pct: 0.5}]\n")
    assert [(f.host, f.for_s, f.loss_pct) for f in s.faults] == [("client", 5.0, 10.0),
                                                                 ("bulk2", 3.0, 0.5)]
    assert s.faults[1].params() == {"host": "bulk2", "for_s": 3.0, "loss_pct": 0.5}
    got = problems(tmp_path, """faults:
  - {kind: loss_burst, at_s: 1, loss_pct: 0}
  - {kind: loss_burst, at_s: 1, loss_pct: 101}
  - {kind: loss_burst, at_s: 1, for_s: 0}
  - {kind: loss_burst, at_s: 1, host: bulk7}
""")
    assert [(line, key) for line, key, _ in got] == [
        (7, "faults[0].loss_pct"), (8, "faults[1].loss_pct"), (9, "faults[2].for_s"),
        (10, "faults[3].host")]


UDP_FRAMES = 1000
# paced: a burst would overflow the receiving veth's backlog, before the ingress hook
SEND_UDP = f"""import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({UDP_FRAMES}):
    s.sendto(b"x" * 64, (sys.argv[1], 9))
    if i % 20 == 19:
        time.sleep(0.002)
"""


@pytest.mark.root
def test_a_loss_burst_drops_its_share_both_ways_and_goes_away():
    """PortLoss on a real veth port: about loss_pct of the frames each way are lost
    and counted, and its end removes the table (pings then all come back)."""
    from tests.support.vethnet import VethNet
    net = VethNet(["peer"])
    inside = net.popen("peer", "sleep", "120")       # a process in the port's namespace
    try:
        port = faults.SwitchPort("peer-eth0", inside.pid)
        ns = os.stat(f"/run/netns/{net.ns['peer']}").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{inside.pid}/ns/net").st_ino != ns:   # ip netns exec: setns
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # a process still in the testbed's own namespace: refused, nothing done there
        with pytest.raises(faults.FaultError, match="root network namespace"):
            faults.SwitchPort("peer-eth0", os.getpid()).run(["nft", "list", "tables"])
        port = faults.SwitchPort("peer-eth0", inside.pid)
        # neighbours resolved first: a lost ARP would hold frames back in the sender
        net.exec("client", "ping", "-c", "1", "-W", "2", "10.0.0.2")
        net.exec("peer", "ping", "-c", "1", "-W", "2", "10.0.0.1")
        loss = faults.PortLoss(port, 30.0, table="tb_loss_test", tag="testbed:test")
        loss.add()
        assert "tb_loss_test" in port.run(["nft", "list", "tables"])
        for src, dst in (("client", "10.0.0.2"), ("peer", "10.0.0.1")):    # in, then out
            net.exec(src, sys.executable, "-c", SEND_UDP, dst, timeout=60)
        seen, lost = loss.counts()
        # and a few more: rate-limited ICMP port unreachables, ARP
        assert 2 * UDP_FRAMES <= seen <= 2 * UDP_FRAMES + 60
        assert 0.25 <= lost / seen <= 0.35, (lost, seen)          # 30 % within 5 sd
        outcome = loss.remove()
        m = re.fullmatch(r"ok: loss ended on peer-eth0: (\d+) of (\d+) frames lost \(.* %\)",
                         outcome)
        assert m and int(m[1]) >= lost and int(m[2]) >= seen, outcome
        assert "tb_loss_test" not in port.run(["nft", "list", "tables"])
        after = net.exec("client", "ping", "-c", "50", "-i", "0.002", "-W", "1", "10.0.0.2")
        assert " 0% packet loss" in after
    finally:
        inside.kill()
        inside.wait()
        net.close()
