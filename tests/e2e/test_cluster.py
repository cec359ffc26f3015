"""``--cluster`` on the real machine: a Dask scheduler and two workers, each worker
standing in for a machine of its own in a network namespace of its own.

The namespaces hang on a bridge of the root namespace by veth pairs, on a subnet of
their own (10.77.<k>.0/24, not the topologies' 10.0.0.0/24); the scheduler listens on
the bridge's address, so every message between the scheduler, the workers and the
asking side crosses a real link. A worker is ``dask worker`` run by ``nsenter --net``:
only its network namespace is its own (its mount namespace is the machine's, so the
namespaces its runs create are seen, and removed, where a run's are). A small sweep (2
points) runs through the cluster and the same sweep locally: the verdicts must match,
each cluster run must have run in a worker (its ``cluster.json`` names the worker's
address and network namespace), and the batch folder, its index and the results store
must hold the runs; then the scheduler and workers are ended by pid, the namespaces,
veths and bridge removed, and nothing of the runs or the cluster may be left. A worker
killed mid-run loses its run, which the scheduler re-queues on the other worker. A
batch on the cluster started with SIGINT ignored (as under nohup or CI) still stops on
SIGINT, and its runs on the workers end and leave nothing, as with ``--workers``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched
from tests.support.small import small_scenario

pytestmark = [pytest.mark.mininet, pytest.mark.root]

TESTBED = [sys.executable, "-m", "testbed.cli"]
DASK = str(Path(sys.executable).with_name("dask"))
START_TIMEOUT_S = 60.0

# tests/support/small.py: a run takes seconds; none locks up under it, a fix completes,
# so the two points of the sweep have verdicts of their own
class Scenario:
    """A small scenario whose name has a token of its own, and the folders of its runs
    on this machine's workers: the scratch folders (``testbed-cluster-*``, one per
    task) whose run kept this scenario, and the job folders (``testbed-pool-*``) that
    name them. A cluster batch beside the test (another test's, a user's) has folders
    of the same kinds; they are never counted, waited for or removed here."""

    def __init__(self, name: str, writer_mb: int = 4) -> None:
        self.name = f"{name}-{secrets.token_hex(3)}"
        self.yaml = small_scenario(self.name, writer_mb, lun_mb=64)
        self.tmp = Path(tempfile_dir())

    def scratch(self) -> list[Path]:
        return [d for d in self.tmp.glob("testbed-cluster-*")
                if any(f"name: {self.name}\n" in f.read_text(errors="replace")
                       for f in d.glob("*/scenario.yaml"))]

    def jobs(self, scratch: list[Path]) -> list[Path]:
        """The job folders of these scratch folders' runs."""
        return [d for d in self.tmp.glob("testbed-pool-*")
                if any(str(o) in f.read_text(errors="replace") for f in d.glob("*.json")
                       for o in scratch)]

    def started(self) -> list[Path]:
        """The scratch folders whose run has begun to write its samples."""
        return [d for d in self.scratch()
                if any(c.stat().st_size > 0 for c in d.glob("*/client.ndjson"))]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


@dataclass
class Net:
    """The cluster's wiring and processes, each removed by its name or pid."""

    tag: str
    subnet: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def host(self, k: int) -> str:
        return f"{self.subnet}.{k}"

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        for link in self.links + [self.bridge]:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=20)
        self.namespaces.clear()
        self.links.clear()


def free_subnet() -> str:
    """10.77.<k> whose .1 no interface of the machine holds."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                          timeout=10).stdout
    return next(f"10.77.{k}" for k in range(1, 250) if f"10.77.{k}." not in used)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(what: str, ok, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.3)


def scheduler_workers(address: str) -> int:
    """How many workers the scheduler has, asked as the testbed asks (bounded)."""
    from testbed.cluster import Cluster
    c = Cluster(address, workers_timeout_s=1)
    try:
        c.connect()
    except Exception:
        return 0
    try:
        return len(c.client.scheduler_info()["workers"])
    finally:
        c.close()


@pytest.fixture
def before() -> dict:
    """The machine before the cluster's wiring is made."""
    return snapshot()


@pytest.fixture
def cluster(tmp_path, before) -> Iterator[tuple[Net, str]]:
    """A scheduler on the bridge's address and two workers, one per namespace; all of
    it removed by name and pid afterwards, also when the test fails."""
    net = Net(tag=f"tbcl{os.getpid() % 0xffff:04x}", subnet=free_subnet())
    try:
        sh("ip", "link", "add", net.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{net.host(1)}/24", "dev", net.bridge)
        sh("ip", "link", "set", net.bridge, "up")
        for k in (1, 2):
            ns, here, there = f"{net.tag}w{k}", f"{net.tag}h{k}", f"{net.tag}n{k}"
            sh("ip", "netns", "add", ns)
            net.namespaces.append(ns)
            sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
            net.links.append(here)
            sh("ip", "link", "set", here, "master", net.bridge, "up")
            sh("ip", "link", "set", there, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{net.host(10 + k)}/24", "dev", there)
            sh("ip", "-n", ns, "link", "set", there, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        port = free_port(net.host(1))
        address = f"tcp://{net.host(1)}:{port}"
        logs = tmp_path / "cluster-logs"
        logs.mkdir()
        start = lambda argv, name: net.procs.append(subprocess.Popen(   # noqa: E731
            argv, stdout=open(logs / name, "wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=Path(__file__).parents[2]))
        start([DASK, "scheduler", "--host", net.host(1), "--port", str(port),
               "--no-dashboard"], "scheduler.log")
        for k in (1, 2):
            start(["nsenter", f"--net=/run/netns/{net.tag}w{k}", DASK, "worker", address,
                   "--host", net.host(10 + k), "--nthreads", "1", "--no-nanny",
                   "--no-dashboard", "--name", f"w{k}"], f"worker{k}.log")
        wait_for("two workers joined", lambda: scheduler_workers(address) == 2)
        yield net, address
    finally:
        net.close()


def worker_netns(net: Net) -> dict[str, str]:
    """Worker address -> its process's network namespace, read from /proc by pid."""
    return {f"tcp://{net.host(10 + k)}": os.readlink(f"/proc/{p.pid}/ns/net")
            for k, p in zip((1, 2), net.procs[1:])}


def sweep(tmp_path: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(TESTBED + ["sweep", "small.yaml", "--param",
                                     "client.policy=none,gorman-3.6", "--out", out, *extra],
                          capture_output=True, text=True, cwd=tmp_path, timeout=200)


def batch(base: Path) -> list[tuple[str, Path, dict]]:
    index = json.loads((base / "runs.json").read_text())["runs"]
    return [(x["label"], base / x["dir"], json.loads((base / x["dir"] / "summary.json")
                                                     .read_text())) for x in index]


def test_a_sweep_through_the_cluster_gives_the_local_verdicts_from_the_workers(
        tmp_path, before, cluster, results_db):
    net, address = cluster
    sc = Scenario("cluster-small")
    (tmp_path / "small.yaml").write_text(sc.yaml)
    where = worker_netns(net)
    root_ns = os.readlink("/proc/self/ns/net")

    r = sweep(tmp_path, "on-cluster", "--cluster", address)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert r.stdout.index("client.policy=none:") < r.stdout.index("client.policy=gorman-3.6:")
    remote = batch(tmp_path / "on-cluster")
    r = sweep(tmp_path, "here")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    local = batch(tmp_path / "here")

    assert [lbl for lbl, _, _ in remote] == [lbl for lbl, _, _ in local] == \
        ["client.policy=none", "client.policy=gorman-3.6"]
    assert [s["verdict"] for _, _, s in remote] == [s["verdict"] for _, _, s in local]
    assert [(d.name, s["policy"]) for _, d, s in remote] == \
        [(d.name, s["policy"]) for _, d, s in local]
    for _, d, _ in remote:                      # each ran in a worker's namespace
        ran = json.loads((d / "cluster.json").read_text())
        worker = ran["worker"].rsplit(":", 1)[0]
        assert worker in where and ran["net_ns"] == where[worker] != root_ns, ran
        assert (d / "report.html").exists() and (d / "progress.log").exists()
    assert not (tmp_path / "here" / local[0][1].name / "cluster.json").exists()
    with sqlite3.connect(results_db) as db:     # the asking side's results store has them
        stored = dict(db.execute("SELECT path, hostname FROM runs WHERE command = 'sweep'"))
    assert {str(d.resolve()) for _, d, _ in remote} <= set(stored)

    net.close()
    for _, d, _ in remote + local:
        assert_nothing_left(json.loads((d / "client-config.json").read_text())["run_id"])
    assert not sc.scratch()
    assert_untouched(before, snapshot())
    assert not [n for n in os.listdir("/run/netns") if n.startswith(net.tag)]


def tempfile_dir() -> str:
    import tempfile
    return tempfile.gettempdir()


def test_a_worker_killed_mid_run_loses_that_run_which_is_requeued(tmp_path, before, cluster):
    """SIGKILL of a worker while both run: the scheduler re-queues its run on the other
    worker; the sweep still gets both points, each from a live worker. The killed
    worker's run, a process of its own session, ends by itself and tears itself down;
    its scratch folder is left (docs/cluster.md), and removed here."""
    net, address = cluster
    sc = Scenario("cluster-small")
    (tmp_path / "small.yaml").write_text(sc.yaml)
    p = subprocess.Popen(TESTBED + ["sweep", "small.yaml", "--param",
                                    "client.policy=none,gorman-3.6", "--out", "cl",
                                    "--cluster", address],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=tmp_path)
    try:
        wait_for("both runs started on the workers", lambda: len(sc.started()) == 2)
        killed = net.procs[1]                  # worker 1
        lost_ns = os.readlink(f"/proc/{killed.pid}/ns/net")
        killed.kill()
        killed.wait(timeout=10)
        output, _ = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode in (0, 1) and "Traceback" not in output, output
    runs = batch(tmp_path / "cl")
    assert [lbl for lbl, _, _ in runs] == ["client.policy=none", "client.policy=gorman-3.6"]
    assert all(s["verdict"] in ("completed", "lockup") for _, _, s in runs), output
    alive = os.readlink(f"/proc/{net.procs[2].pid}/ns/net")      # worker 2
    for _, d, _ in runs:                       # the lost run came back from worker 2
        assert json.loads((d / "cluster.json").read_text())["net_ns"] == alive != lost_ns
    # the orphan of the killed worker: its run ends by itself and tears itself down
    orphans = sc.scratch()
    ids = [json.loads(c.read_text())["run_id"] for d in orphans
           for c in d.glob("*/client-config.json")]
    wait_for("the killed worker's run to end", lambda: not any(
        Path("/run/testbed", f"{i}.json").exists() for i in ids), timeout=90)
    net.close()
    for i in ids + [json.loads((d / "client-config.json").read_text())["run_id"]
                    for _, d, _ in runs]:
        assert_nothing_left(i)
    for d in orphans + sc.jobs(orphans):        # the orphan's scratch and job folders
        shutil.rmtree(d)
    assert_untouched(before, snapshot())


def test_sigint_stops_a_cluster_batch_started_with_it_ignored_and_leaves_nothing(
        tmp_path, before, cluster):
    """As tests/e2e/test_workers.py's Ctrl-C for the pool, on the cluster: the sweep was
    started with SIGINT ignored (inherited, as a background job of a script); SIGINT
    still ends it (status 130, no traceback), both runs on the workers are interrupted
    by their tasks and tear themselves down, and nothing is left on the machine."""
    net, address = cluster
    sc = Scenario("cluster-long", writer_mb=40)          # runs past the Ctrl-C
    (tmp_path / "long.yaml").write_text(sc.yaml)
    p = subprocess.Popen(TESTBED + ["sweep", "long.yaml", "--param",
                                    "client.policy=none,gorman-3.6", "--out", "cl",
                                    "--cluster", address],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=tmp_path,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for("both runs started on the workers", lambda: len(sc.started()) == 2)
        scratch = sc.scratch()
        jobs = sc.jobs(scratch)
        ids = [json.loads(c.read_text())["run_id"] for d in scratch
               for c in d.glob("*/client-config.json")]
        p.send_signal(signal.SIGINT)
        output, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and "Traceback" not in output, output
    # each task sees its future cancelled and interrupts its run: the run tears itself
    # down and the task removes its scratch and job folders
    wait_for("the runs on the workers to end", lambda: not any(
        Path("/run/testbed", f"{i}.json").exists() for i in ids), timeout=90)
    wait_for("the tasks' folders to go", lambda: not any(d.exists() for d in scratch + jobs))
    assert not any((tmp_path / "cl").iterdir())         # no run came back
    net.close()
    for i in ids:
        assert_nothing_left(i)
    assert_untouched(before, snapshot())
