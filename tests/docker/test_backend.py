"""The Docker backend on the real engine: containers, links, shaping, processes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.backends.base import ContentionParams, HostCommandTimeout
from testbed.backends.docker import DockerBackend, exec_pids
from testbed.backends.docker_labels import LABEL_MANAGED, LABEL_ROLE, LABEL_RUN
from testbed.errors import ConfigError, EnvironmentProblem
from testbed.runctx import RunContext

from .conftest import assert_nothing_left, labelled

pytestmark = [pytest.mark.root, pytest.mark.docker]


@pytest.fixture
def net2(engine, tmp_path):
    """A run with the contention topology, 2 bulk hosts, on Docker."""
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        net = DockerBackend(run).up(ContentionParams(n=2, bw_client=10, bw=50, queue=80))
        yield run, net
    assert_nothing_left(engine, run.id)


def test_containers_are_labelled_and_confined(engine, net2):
    run, net = net2
    assert sorted(net.hosts) == ["bulk1", "bulk2", "client", "target"]
    for name, host in net.hosts.items():
        c = engine.containers.get(f"tb-{run.id}-{name}")
        labels = c.labels
        assert labels[LABEL_RUN] == run.id and labels[LABEL_MANAGED] == "backend"
        assert labels[LABEL_ROLE] == ("bulk" if name.startswith("bulk") else name)
        hc = c.attrs["HostConfig"]
        assert hc["CapDrop"] == ["ALL"]
        want = ["NET_ADMIN", "NET_RAW"] if name == "client" else ["NET_ADMIN"]
        assert sorted(hc["CapAdd"]) == sorted(want)
        assert "TESTBED_RUN=" + run.id in c.attrs["Config"]["Env"]
        binds = {b.split(":")[0] for b in hc["Binds"]}
        assert str(run.dir) in binds
    lan = engine.networks.get(f"tb-{run.id}-lan")
    assert lan.attrs["Labels"][LABEL_RUN] == run.id
    assert sorted(labelled(engine, run.id)) == sorted(
        [f"container tb-{run.id}-{h}" for h in net.hosts] + [f"network tb-{run.id}-lan"])


def test_addresses_are_the_topologys_and_every_pair_connects(net2):
    _run, net = net2
    assert {h: net.hosts[h].ip for h in net.hosts} == {
        "client": "10.0.0.1", "target": "10.0.0.2", "bulk1": "10.0.0.11", "bulk2": "10.0.0.12"}
    assert net.host("client").mac == "02:00:00:00:00:01"
    failed = []
    for a in net.hosts.values():
        for b in net.hosts.values():
            if a is not b and a.run(["ping", "-c1", "-W2", b.ip], timeout=10).returncode:
                failed.append(f"{a.name}->{b.name}")
    assert failed == []
    # Each answered from its own interface (not from the bridge inside its container,
    # which would bypass the shaped switch port): neighbours carry the hosts' MACs.
    for a in net.hosts.values():
        for b in net.hosts.values():
            if a is not b:
                assert b.mac in a.run(["ip", "neigh", "show", b.ip]).stdout, (a.name, b.name)
    # The machine itself has no address or route in the topology's subnet.
    assert "10.0.0." not in subprocess.run(["ip", "-4", "route"], capture_output=True,
                                           text=True).stdout


def test_links_are_shaped_both_ends_and_read_back(net2):
    _run, net = net2
    for name, port, rate in (("client", "s1-eth1", "10Mbit"), ("target", "s1-eth2", "50Mbit"),
                             ("bulk2", "s1-eth4", "50Mbit")):
        h = net.host(name)
        for intf in (h.intf, port):
            qd = h.run(["tc", "qdisc", "show", "dev", intf]).stdout
            cl = h.run(["tc", "class", "show", "dev", intf]).stdout
            assert "qdisc htb 5: root" in qd and "qdisc pfifo 10: parent 5:1 limit 80p" in qd
            assert f"class htb 5:1 root leaf 10: prio 0 rate {rate}" in cl, (name, intf, cl)
            k = h.run(["ethtool", "-k", intf]).stdout
            assert "tcp-segmentation-offload: off" in k and "tx-checksumming: off" in k


def iperf_mbit(server, client, seconds: int = 3) -> float:
    srv = server.popen(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            r = client.run(["iperf3", "-c", server.ip, "-t", str(seconds), "-J"],
                           timeout=seconds + 15)
            result = json.loads(r.stdout or "{}")
            if r.returncode == 0 and "error" not in result:
                return result["end"]["sum_received"]["bits_per_second"] / 1e6
            time.sleep(0.1)             # the server may not listen yet
        raise AssertionError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    finally:
        srv.kill()
        srv.wait(10)


def test_rates_as_configured(net2):
    """Downloads to the client get its link's rate; other links theirs (within 20 %)."""
    _run, net = net2
    to_client = iperf_mbit(net.host("client"), net.host("bulk1"))
    to_target = iperf_mbit(net.host("target"), net.host("bulk2"))
    assert 8.0 <= to_client <= 10.5, to_client
    assert 40.0 <= to_target <= 52.5, to_target


def test_popen_output_status_and_interpreter(net2):
    _run, net = net2
    h = net.host("target")
    r = h.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = h.run([sys.executable, "-c", "import os, sys, testbed; print(sys.executable, "
               "os.environ['TESTBED_RUN'], os.environ.get('EXTRA'), testbed.__file__)"],
              env={"EXTRA": "yes", "PATH": "/nonexistent"})
    exe, run_id, extra, where = r.stdout.split()
    assert exe == "/opt/testbed/bin/python" and run_id == net.run.id and extra == "yes"
    assert where.startswith("/opt/testbed/src/")
    assert h.run(["cat", "/etc/hostname"]).stdout.strip() == "target"


def test_terminate_and_kill_reach_the_command_inside(net2):
    _run, net = net2
    h = net.host("bulk1")
    p = h.popen(["sleep", "300"])
    deadline = time.monotonic() + 5
    while not exec_pids(p.token) and time.monotonic() < deadline:
        time.sleep(0.05)
    [inner] = exec_pids(p.token)
    p.terminate()
    assert p.wait(10) == 128 + signal.SIGTERM
    assert not os.path.exists(f"/proc/{inner}") or _zombie(inner)

    stubborn = h.popen(["sh", "-c", "trap '' TERM; echo ready; sleep 300"],
                       stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"
    [inner] = exec_pids(stubborn.token)
    stubborn.terminate()
    with pytest.raises(subprocess.TimeoutExpired):
        stubborn.wait(0.5)
    stubborn.kill()
    assert stubborn.wait(10) == 128 + signal.SIGKILL
    assert h.run(["sh", "-c", "ps -eo args | grep -c '^sleep 300$' || true"]).stdout.strip() == "0"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def test_run_timeout_ends_the_command(net2):
    _run, net = net2
    h = net.host("client")
    t0 = time.monotonic()
    with pytest.raises(HostCommandTimeout) as info:
        h.run(["sleep", "60"], timeout=1)
    assert time.monotonic() - t0 < 10
    assert "host client: sleep 60 did not finish in 1s" in str(info.value)
    assert h.run(["sh", "-c", "ps -eo args | grep -c '^sleep 60$' || true"]).stdout.strip() == "0"


def test_teardown_ends_tracked_processes_and_containers(engine, tmp_path):
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        net = DockerBackend(run).up(ContentionParams(n=1))
        procs = [h.popen(["sleep", "300"]) for h in net.hosts.values()]
        time.sleep(0.5)
    assert all(p.poll() is not None for p in procs)
    assert_nothing_left(engine, run.id)


def test_bad_parameters_create_nothing(engine, tmp_path):
    with pytest.raises(ConfigError, match="parameter bw_client"):
        ContentionParams(bw_client=0)
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        with pytest.raises(ConfigError, match="link target-s1: delay/loss asked"):
            DockerBackend(run).up(ContentionParams(n=1, trunk_delay=5))
        assert labelled(engine, run.id) == []
    assert_nothing_left(engine, run.id)


def test_missing_image_is_named(engine, tmp_path):
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        with pytest.raises(EnvironmentProblem, match="make images"):
            DockerBackend(run, image="testbed-node:no-such-tag").up(ContentionParams(n=1))
        assert labelled(engine, run.id) == []


def test_no_engine_is_named(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        with pytest.raises(EnvironmentProblem, match="scripts/docker-up.sh"):
            DockerBackend(run).up(ContentionParams(n=1))


def test_prompt_runs_commands_in_hosts(net2, capsys):
    _run, net = net2
    from testbed.backends.docker import DockerCli
    cli = DockerCli(net)
    cli.onecmd("target cat /etc/hostname")
    cli.onecmd("hosts")
    cli.onecmd("nosuchhost ls")
    out = capsys.readouterr().out
    assert "target\n" in out and "bulk2    10.0.0.12" in out and "usage: <host> <command>" in out
    assert cli.onecmd("exit") is True
