"""RunContext and tag-based cleanup, without Mininet: real processes, namespaces, links, rules."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from testbed import cleanup
from testbed.capabilities import probe
from testbed.runctx import ENV_VAR, STATE_DIR, RunContext, proc_starttime

from .conftest import (TESTBED, assert_clean_removed, assert_nothing_left, other_runs,
                       run_tag_of, sh)

pytestmark = pytest.mark.root


def test_state_file_env_and_teardown_order(tmp_path):
    order = []
    with RunContext.create(base_dir=tmp_path, name="unit") as run:
        assert len(run.id) == 8 and int(run.id, 16) >= 0
        assert run.dir.is_dir() and run.dir.name.endswith(f"-unit-{run.id}")
        state = json.loads(run.state_path.read_text())
        assert state["pid"] == os.getpid() and cleanup.is_alive(state)
        assert os.environ[ENV_VAR] == run.id and run.env()[ENV_VAR] == run.id
        assert run.netns_name("client") == f"tb-{run.id}-client"
        run.register("thing", "first", lambda: order.append("first"))
        run.register("thing", "broken", lambda: 1 / 0)
        run.register("thing", "last", lambda: order.append("last"))
        assert [r["name"] for r in json.loads(run.state_path.read_text())["resources"]] == \
            ["first", "broken", "last"]
        child = subprocess.Popen(["sleep", "60"])          # inherits TESTBED_RUN
        assert run_tag_of(child.pid) == run.id
    assert order == ["last", "first"]                       # newest first, past the error
    assert any("broken" in e and "ZeroDivisionError" in e for e in run.errors)
    assert child.wait(timeout=5) == -signal.SIGTERM         # swept by tag
    assert ENV_VAR not in os.environ
    assert_nothing_left(run.id)


def test_explicit_run_folder_may_exist(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with RunContext.create(run_dir=out) as run:
        assert run.dir == out.resolve() and run.scratch.is_dir()
    assert not run.scratch.exists()
    assert_nothing_left(run.id)


def test_sweep_removes_tagged_namespace_link_and_rule(tmp_path):
    with RunContext.create(base_dir=tmp_path, name="unit") as run:
        ns = run.netns_name("x")
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"tb{run.id[:6]}a", "type", "veth", "peer", "name",
           f"tb{run.id[:6]}b")
        sh("ip", "link", "set", f"tb{run.id[:6]}a", "alias", run.tag)
        sh("iptables", "-t", "raw", "-A", "OUTPUT", "-d", "127.0.0.253/32", "-m", "comment",
           "--comment", run.tag, "-j", "ACCEPT")
        inside = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"],
                                  env={"PATH": os.environ["PATH"]})   # untagged, in our netns
        time.sleep(0.3)
        left = cleanup.find_run(run.id)
        assert ns in left.netns and f"tb{run.id[:6]}a" in left.links and left.iptables
        assert inside.pid in left.processes and run_tag_of(inside.pid) == ""
    inside.wait(timeout=10)
    assert_nothing_left(run.id)
    assert run.tag not in sh("iptables-save")


def test_sigterm_inside_the_block_runs_teardown(tmp_path):
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        from testbed.runctx import RunContext
        with RunContext.create(base_dir={str(tmp_path)!r}, name="sig") as run:
            subprocess.run(["ip", "netns", "add", run.netns_name("a")], check=True)
            run.register("netns", run.netns_name("a"),
                         lambda: subprocess.run(["ip", "netns", "delete", run.netns_name("a")]))
            child = subprocess.Popen(["sleep", "60"])
            print(run.id, child.pid, flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         stderr=subprocess.PIPE)
    run_id, child = p.stdout.readline().split()
    assert os.path.exists(f"/run/netns/tb-{run_id}-a")
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)
    assert_nothing_left(run_id)
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split(
        ") ")[1][0] in "ZX"


def test_clean_leaves_live_runs_and_reports_nothing_to_do(tmp_path, bystanders):
    with RunContext.create(base_dir=tmp_path, name="live") as run:
        sh("ip", "netns", "add", run.netns_name("keep"))
        keeper = subprocess.Popen(["sleep", "60"])
        r = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0
        assert keeper.poll() is None and os.path.exists(f"/run/netns/{run.netns_name('keep')}")
        assert run.state_path.exists()
        bystanders.assert_alive()
    assert_nothing_left(run.id)


def test_clean_removes_a_dead_run_by_tag_only(tmp_path, bystanders):
    # A run whose owner we control: alive (so no other run's start-up cleans it) until
    # the owner is killed right before `testbed clean`.
    dead = "deadbeef"
    owner = subprocess.Popen(["sleep", "60"])
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / f"{dead}.json").write_text(json.dumps(
        {"id": dead, "pid": owner.pid, "starttime": proc_starttime(owner.pid), "resources": []}))
    sh("ip", "netns", "add", f"tb-{dead}-client")
    orphan = subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"],
                                                    "TESTBED_RUN": dead})
    alive = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True, timeout=60)
    assert dead not in alive.stdout and orphan.poll() is None     # a live run is left alone
    others = other_runs()
    owner.kill()
    owner.wait()
    dry = subprocess.run(TESTBED + ["clean", "--dry-run"], capture_output=True, text=True,
                         timeout=60)
    others |= other_runs()
    if f"would remove run {dead}" in dry.stdout:
        assert f"tb-{dead}-client" in dry.stdout
        # the dry run changed nothing (another run's start-up sweep may have, since)
        assert orphan.poll() is None or others - {dead}
    else:
        assert others - {dead}, dry.stdout          # only another run's sweep may do that
    r = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert_clean_removed(r.stdout, dead, others | other_runs())
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    assert_nothing_left(dead)
    bystanders.assert_alive()
    again = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True, timeout=60)
    assert dead not in again.stdout


def test_probe_is_cached_and_true_to_the_kernel():
    caps = probe()
    assert probe() is caps
    assert caps.root and caps.has_qdisc("htb") and caps.bridge and caps.veth
    r = subprocess.run(["unshare", "--net", "sh", "-c",
                        "ip link add p0 type veth peer name p1 && "
                        "tc qdisc add dev p0 root netem delay 1ms"], capture_output=True)
    assert caps.netem == (r.returncode == 0)


def test_doctor_reports_each_check():
    r = subprocess.run(TESTBED + ["doctor"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    for name in ("root", "mnexec", "tgtd", "kernel: htb", "kernel: netem", "docker"):
        assert any(l.split()[0] in ("OK", "MISSING") and name in l for l in lines), name
    if not probe().netem:
        assert any(l.startswith("MISSING") and "netem" in l and "fix:" in l for l in lines)
    assert lines[-1] == "doctor: ready"
