"""The Mininet backend on real Mininet: connectivity, shaping read back, tgtd, bulk, fidelity."""

import itertools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import testbed.backends.shaping as shaping
from testbed.backends.base import ContentionParams, HostCommandTimeout
from testbed.backends.mininet import MininetBackend
from testbed.backends.shaping import LinkSpec, ShapingError, verify_interface
from testbed.errors import ConfigError, TimeoutExpired
from testbed.launch import BULK_PORTS, BulkSource, Target, portal, start
from testbed.capabilities import probe
from testbed.runctx import RunContext

from .conftest import assert_nothing_left, run_tag_of, sh

pytestmark = [pytest.mark.root, pytest.mark.mininet]
IQN = "iqn.2026-11.org.testbed:mn"


def pingall(net) -> list[tuple[str, str]]:
    """Every host pings every other once; the failing pairs."""
    bad = []
    for a, b in itertools.permutations(net.hosts.values(), 2):
        if a.run(["ping", "-c1", "-W2", b.ip], timeout=10).returncode:
            bad.append((a.name, b.name))
    return bad


def wait_listening(host, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not host.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
        assert time.monotonic() < deadline, f"nothing listens on {host.name}:{port}"
        time.sleep(0.05)


def netns_sh(ns: str, cmd: str) -> str:
    return sh("ip", "netns", "exec", ns, "sh", "-c", cmd)


def test_pingall_and_shaping_in_place(tmp_path):
    with RunContext.create(base_dir=tmp_path, name="ping") as run:
        net = MininetBackend(run).up(ContentionParams(n=3, bw_client=20, bw=80, queue=200))
        assert sorted(net.hosts) == ["bulk1", "bulk2", "bulk3", "client", "target"]
        c = net.host("client")
        assert (c.ip, c.mac, c.intf) == ("10.0.0.1", "02:00:00:00:00:01", "client-eth0")
        assert [h.ip for h in net.bulk_hosts] == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
        assert pingall(net) == []
        # read back, independently of the backend: rates, queue, offloads, tags
        qd = netns_sh(run.netns_name("client"), "tc class show dev client-eth0")
        assert "rate 20Mbit" in qd
        sw = run.netns_name("s1")
        assert "rate 20Mbit" in netns_sh(sw, "tc class show dev s1-eth1")
        assert "rate 80Mbit" in netns_sh(sw, "tc class show dev s1-eth2")
        assert "limit 200p" in netns_sh(sw, "tc qdisc show dev s1-eth5")
        off = netns_sh(run.netns_name("target"), "ethtool -k target-eth0")
        for feature in ("tx-checksumming", "tcp-segmentation-offload",
                        "generic-segmentation-offload", "generic-receive-offload"):
            assert f"{feature}: off" in off
        links = json.loads(netns_sh(sw, "ip -j link show"))
        assert {l["ifname"]: l.get("ifalias") for l in links if l["ifname"] != "lo"} == \
            {name: run.tag for name in ["s1", "s1-eth1", "s1-eth2", "s1-eth3", "s1-eth4", "s1-eth5"]}
        # nothing of the testbed in the root namespace
        assert run.tag not in sh("ip", "-d", "link", "show")
    assert_nothing_left(run.id)


def test_processes_are_tracked_tagged_and_timed_out(tmp_path):
    with RunContext.create(base_dir=tmp_path, name="proc") as run:
        net = MininetBackend(run).up(ContentionParams(n=1))
        h = net.host("bulk1")
        p = h.popen(["sleep", "300"])
        assert run_tag_of(p.pid) == run.id
        assert h.run(["ip", "-br", "addr", "show", "bulk1-eth0"]).stdout.split()[2] == \
            "10.0.0.11/24"
        with pytest.raises(HostCommandTimeout) as err:
            h.run(["sleep", "30"], timeout=0.5)
        assert isinstance(err.value, TimeoutExpired)
        assert isinstance(err.value, subprocess.TimeoutExpired)
        assert "host bulk1: sleep 30 did not finish in 0.5s" in str(err.value)
    assert p.returncode is not None
    assert_nothing_left(run.id)


def test_iscsi_inq_from_the_client_and_bulk_stream(tmp_path):
    with RunContext.create(base_dir=tmp_path, name="svc") as run:
        net = MininetBackend(run).up(ContentionParams(n=2, bw_client=20, bw=100))
        target = net.host("target")
        start(target, "target", Target(ip=target.ip, iqn=IQN, backing_file=run.dir / "lun.img",
                                       size_mb=16, workdir=run.dir / "tgt"), run.dir).wait_ready()
        r = net.host("client").run(["iscsi-inq", f"iscsi://{portal(target.ip)}/{IQN}/1"],
                                   timeout=20)
        assert r.returncode == 0, r.stderr
        assert "Peripheral Device Type:DIRECT_ACCESS" in r.stdout

        bulk = net.host("bulk2")
        start(bulk, "bulk2", BulkSource("tcp"), run.dir).wait_ready()
        reader = textwrap.dedent(f"""
            import socket, time
            s = socket.create_connection(("{bulk.ip}", {BULK_PORTS["tcp"]}), timeout=5)
            n, first, end = 0, None, time.monotonic() + 2.0
            while time.monotonic() < end:
                d = s.recv(65536)
                first = first or time.monotonic()
                n += len(d)
            print(n, time.monotonic() - first)
        """)
        out = net.host("client").run([sys.executable, "-c", reader], timeout=20)
        got, secs = out.stdout.split()
        mbit = int(got) * 8 / float(secs) / 1e6
        assert 12 < mbit < 21, mbit          # bytes arrive, at the client link's 20 Mbit/s
    assert_nothing_left(run.id)


@pytest.mark.slow
def test_fidelity_iperf3_target_to_client(tmp_path):
    """Mininet-HiFi-style check: with 50 Mbit/s links, TCP from target to client gets 50."""
    with RunContext.create(base_dir=tmp_path, name="hifi") as run:
        net = MininetBackend(run).up(ContentionParams(n=2, bw_client=50, bw=50))
        server = net.host("client").popen(["iperf3", "-s", "-1", "-p", "5201"],
                                          stdout=subprocess.DEVNULL)
        wait_listening(net.host("client"), 5201)
        r = net.host("target").run(["iperf3", "-c", "10.0.0.1", "-p", "5201", "-t", "5",
                                    "-O", "1", "-J"], timeout=30)
        assert r.returncode == 0, r.stdout[-500:]
        mbit = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"iperf3 target->client over 50 Mbit/s links: {mbit:.2f} Mbit/s")
        assert 45.0 <= mbit <= 55.0
        server.wait(timeout=10)
    assert_nothing_left(run.id)


def test_delay_and_loss_without_netem(tmp_path, capfd):
    if probe().netem:
        pytest.skip("this kernel has sch_netem: delay/loss are done in the kernel")
    with RunContext.create(base_dir=tmp_path, name="fx") as run:
        net = MininetBackend(run).up(ContentionParams(n=1, delay=20, loss=1.5))
        assert net.userspace_link_effects == {"client": {"delay_ms": 20.0, "loss_pct": 1.5}}
        err = capfd.readouterr().err.strip().splitlines()
        assert [l for l in err if "no sch_netem" in l and "client: delay 20 ms, loss 1.5 %" in l]
        rtt = net.host("client").run(["ping", "-c1", "-W2", "10.0.0.2"]).stdout
        assert "time=" in rtt    # the kernel adds no delay: the packet handler will
    assert_nothing_left(run.id)
    with RunContext.create(base_dir=tmp_path, name="fx2") as run:
        with pytest.raises(ConfigError, match=r"link target-s1: delay/loss asked .* no sch_netem"):
            MininetBackend(run).up(ContentionParams(n=1, trunk_delay=5))
        assert run.id not in sh("ip", "netns")                   # nothing was created
    assert_nothing_left(run.id)


def test_missing_shaping_fails_naming_the_link(tmp_path, monkeypatch):
    real = shaping.shaping_commands

    def without_class_on_s1_eth2(intf, spec, tag):
        cmds = real(intf, spec, tag)
        return [c for c in cmds if " htb" not in c] if intf == "s1-eth2" else cmds

    monkeypatch.setattr(shaping, "shaping_commands", without_class_on_s1_eth2)
    with RunContext.create(base_dir=tmp_path, name="bad") as run:
        with pytest.raises(ShapingError, match=r"link target-eth0<->s1-eth2, interface s1-eth2: "
                                               r"root qdisc is noqueue 0:, expected htb"):
            MininetBackend(run).up(ContentionParams(n=1))
    assert_nothing_left(run.id)


def test_verify_interface_reads_rates_and_queues():
    spec = LinkSpec("client", "client-eth0", "s1", "s1-eth1", bw=10, queue=100)
    good = ("qdisc htb 5: root refcnt 2 r2q 10 default 0x1\n"
            "qdisc pfifo 10: parent 5:1 limit 100p\n"
            "class htb 5:1 root leaf 10: prio 0 rate 10Mbit ceil 10Mbit burst 15Kb\n"
            "tx-checksumming: off\ntcp-segmentation-offload: off\n"
            "generic-segmentation-offload: off\ngeneric-receive-offload: off\n")
    verify_interface("client-eth0", spec, good)
    with pytest.raises(ShapingError, match="rate is 1 Mbit/s, expected 10 Mbit/s"):
        verify_interface("client-eth0", spec, good.replace("rate 10Mbit", "rate 1Mbit"))
    with pytest.raises(ShapingError, match="queue limit of 100 packets"):
        verify_interface("client-eth0", spec, good.replace("limit 100p", "limit 1000p"))
    with pytest.raises(ShapingError, match="generic-receive-offload is still on"):
        verify_interface("client-eth0", spec, good.replace("receive-offload: off",
                                                           "receive-offload: on"))


def test_mn_custom_topology_pingall():
    """The topology as Mininet users run it: Debian's mn (system Python), lxbr, tc links.

    mn puts its bridge in the namespace it runs in; ``unshare --net`` gives it a fresh
    one, so a FORWARD DROP left by dockerd in the root namespace does not apply.
    """
    r = subprocess.run(["unshare", "--net", "--", "mn", "--custom", "topologies/contention.py",
                        "--topo", "contention,2", "--switch", "lxbr", "--controller", "none",
                        "--link", "tc", "--test", "pingall"],
                       capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-500:]
    assert "*** Results: 0% dropped (12/12 received)" in r.stdout + r.stderr
