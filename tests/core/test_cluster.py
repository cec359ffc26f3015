"""``--cluster``: the run folder in transit, the errors a user meets, and the backend's
contract on a real (in-process) Dask cluster.

The cluster here is Dask's own LocalCluster in this process (threads, a scheduler on
loopback), so the scheduler, the futures, cancellation and the worker's task are real;
the runs are test_pool.py's stand-in program, started by the worker's real RunPool (the
one thing replaced is the child's command). The runs themselves over a cluster of
namespaces are the machine test's (tests/e2e/test_cluster.py).
"""

from __future__ import annotations

import io
import json
import os
import platform
import signal
import socket
import sys
import tarfile
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from testbed import cluster as cluster_mod
from testbed import scenario as scenario_mod
from testbed.cluster import Cluster, check_address, open_cluster, pack, receive, unpack
from testbed.errors import ConfigError, EnvironmentProblem, TestbedError, TimeoutExpired
from testbed.pool import RunPool, RunSpec
from tests.core.test_pool import WORKER

distributed = pytest.importorskip("distributed")

# Dask's client reports the machine's processor, which Python's platform module learns
# once by running `uname -p`: learnt here, before the unit guard would refuse it (inside
# Dask's event loop thread, where the refusal would hang the client instead of failing).
platform.uname().processor


# -- addresses and options ----------------------------------------------------------------

@pytest.mark.parametrize("good", ["tcp://10.77.0.1:8786", "tcp://sched.example:1",
                                  "tcp://[fd00::1]:8786"])
def test_a_scheduler_address_is_tcp_host_port(good):
    assert check_address(good) == good


@pytest.mark.parametrize("bad", ["10.77.0.1:8786", "tcp://10.77.0.1", "tcp://h:0",
                                 "tcp://h:70000", "udp://h:8786", "tcp://h:86/x", ""])
def test_a_bad_address_is_a_config_error_naming_the_option(bad):
    with pytest.raises(ConfigError, match=r"--cluster .*tcp://HOST:PORT"):
        check_address(bad)


def test_cluster_with_workers_is_refused_and_without_cluster_nothing_connects():
    with pytest.raises(ConfigError, match="--cluster with --workers 3: give one of them"):
        open_cluster("tcp://127.0.0.1:8786", 3, "sweep")
    with open_cluster(None, 2, "sweep") as got:
        assert got is None


@pytest.mark.cli
@pytest.mark.parametrize("argv", [
    ["compare", "baseline", "--policies", "none", "--repeat", "2"],
    ["sweep", "baseline", "--param", "client.memory_mb=32,40"],
    ["stress", "contention", "--policy", "none", "--budget", "1m"]])
@pytest.mark.parametrize("extra, message", [
    (["--cluster", "10.77.0.1:8786"], "--cluster '10.77.0.1:8786': expected the scheduler's"),
    (["--cluster", "tcp://10.77.0.1:8786", "--workers", "2"],
     "--cluster with --workers 2: give one of them")])
def test_cluster_options_are_one_line_errors_that_start_nothing(argv, extra, message,
                                                                tmp_path, capsys):
    from testbed.cli import main
    out = tmp_path / "out"
    assert main(argv + extra + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_an_unreachable_scheduler_is_an_environment_problem_within_its_timeout():
    with socket.socket() as s:          # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(EnvironmentProblem, match=rf"127.0.0.1:{port}: no Dask scheduler "
                                                 r"answered within 1 s"):
        Cluster(f"tcp://127.0.0.1:{port}", connect_timeout_s=1).connect()
    assert time.monotonic() - t0 < 15


def test_a_scheduler_without_workers_is_an_environment_problem_after_a_bounded_wait():
    with distributed.LocalCluster(n_workers=0, processes=False, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None) as lc:
        c = Cluster(lc.scheduler_address, workers_timeout_s=1)
        t0 = time.monotonic()
        with pytest.raises(EnvironmentProblem, match="has no worker after 1 s"):
            c.connect()
        assert time.monotonic() - t0 < 15 and c.client is None


# -- the run folder in transit ------------------------------------------------------------

def folder(tmp_path: Path) -> Path:
    run = tmp_path / "worker" / "gorman-3.6_1"
    (run / "sub").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"verdict": "completed"}))
    (run / "sub" / "client.ndjson").write_bytes(b"x" * 5000)
    return run


def test_a_run_folder_packs_and_unpacks_under_the_name_asked_for(tmp_path):
    data = pack(folder(tmp_path))
    dest = tmp_path / "batch" / "point_1"
    dest.parent.mkdir()
    assert unpack(data, dest) == dest
    assert json.loads((dest / "summary.json").read_text()) == {"verdict": "completed"}
    assert (dest / "sub" / "client.ndjson").read_bytes() == b"x" * 5000
    assert [p.name for p in dest.parent.iterdir()] == ["point_1"]   # no scratch left


def test_a_folder_past_the_cap_is_a_clear_error(tmp_path):
    with pytest.raises(TestbedError, match=r"gorman-3.6_1: .* MiB packed, more than the "
                                           r"0.0 MiB a cluster run may send back"):
        pack(folder(tmp_path), max_bytes=10)


def test_unpack_refuses_a_folder_in_the_way(tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "x").write_text("mine")
    with pytest.raises(TestbedError, match="not unpacked over it"):
        unpack(pack(folder(tmp_path)), dest)
    assert (dest / "x").read_text() == "mine"


def tarball(*members: tuple[str, bytes | None, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, link, body in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@pytest.mark.parametrize("members, why", [
    ([("run/../../escape", None, b"x")], "refused"),
    ([("/etc/evil", None, b"x")], "refused"),
    ([("run/link", b"/etc/passwd", b"")], "refused"),
    ([("a/x", None, b"1"), ("b/y", None, b"2")], "expected one folder"),
    ([], "empty"),
])
def test_unpack_refuses_what_is_not_one_plain_folder(tmp_path, members, why):
    with pytest.raises(TestbedError, match=why):
        unpack(tarball(*members), tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "escape").exists()


def test_garbage_is_a_testbed_error_not_a_traceback(tmp_path):
    with pytest.raises(TestbedError, match="cannot be read"):
        unpack(b"not a tarball", tmp_path / "dest")


def test_a_reply_becomes_the_pools_done_with_its_error_class_and_progress(tmp_path):
    sc = scenario_mod.load("baseline")
    run = folder(tmp_path)
    (run / "progress.log").write_text("run abc: started\n")
    spec = RunSpec(sc, tmp_path / "campaign" / "s001", log=tmp_path / "campaign" / "p.log")
    spec.out_dir.parent.mkdir()
    done = receive(spec, {"tar": pack(run), "wall_s": 3.5,
                          "error": {"kind": "ConfigError", "message": "x.yaml:3: bad"}})
    assert done.run_dir == spec.out_dir and done.summary == {"verdict": "completed"}
    assert type(done.error) is ConfigError and str(done.error) == "x.yaml:3: bad"
    assert done.wall_s == 3.5 and spec.log.read_text() == "run abc: started\n"
    lost = receive(RunSpec(sc, tmp_path / "campaign" / "s002"),
                   {"tar": None, "error": {"kind": "Odd", "message": "node did not start"}})
    assert type(lost.error) is TestbedError and lost.summary is None


# -- the backend on a real in-process cluster ---------------------------------------------

@pytest.fixture
def local_cluster(tmp_path, monkeypatch):
    """A LocalCluster of two one-thread workers in this process; each task's run is the
    stand-in program, started by the worker's real RunPool."""
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    monkeypatch.setattr(cluster_mod, "RunPool",
                        partial(RunPool, argv=[sys.executable, str(path)]))
    monkeypatch.setattr(cluster_mod, "WATCH_S", 0.2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  host="127.0.0.1", protocol="tcp",
                                  dashboard_address=None) as lc:
        with Cluster(lc.scheduler_address) as c:
            yield c


def batch(tmp_path: Path, *names: str) -> list[RunSpec]:
    sc = scenario_mod.load("baseline")
    (tmp_path / "batch").mkdir(exist_ok=True)
    return [RunSpec(sc, tmp_path / "batch" / n) for n in names]


@pytest.mark.cli
def test_runs_on_the_cluster_come_back_in_order_with_their_errors(tmp_path, local_cluster):
    assert local_cluster.slots == 2
    specs = batch(tmp_path, "a-1.5-ok", "b-0.2-ok", "c-0-config", "d-0-crash")
    started = []
    with RunPool(1, backend=local_cluster, on_start=lambda i, s: started.append(i)) as pool:
        got = list(pool.run(specs))
    assert [d.spec for d in got] == specs and started == [0, 1, 2, 3]
    a, b, c, d = got
    assert a.ok and b.ok and a.run_dir == specs[0].out_dir
    assert (a.run_dir / "ended").exists() and (a.run_dir / "progress.log").exists()
    where = json.loads((a.run_dir / "cluster.json").read_text())
    assert where["worker"].startswith("tcp://127.0.0.1:") and where["net_ns"]
    assert json.loads((a.run_dir / "provenance.json").read_text())["command"] == "sweep"
    assert type(c.error) is ConfigError and "client.policy: bad" in str(c.error)
    assert type(d.error) is TestbedError and "no result" in str(d.error)
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == \
        ["a-1.5-ok", "b-0.2-ok", "c-0-config", "d-0-crash"]


@pytest.mark.cli
def test_leaving_early_cancels_and_each_worker_interrupts_its_run(tmp_path, local_cluster,
                                                                 monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(cluster_mod.tempfile, "tempdir", str(scratch))
    specs = batch(tmp_path, "a-0.1-ok", "b-30-ok", "c-30-ok")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        for done in RunPool(1, backend=local_cluster).run(specs):
            assert done.ok
            time.sleep(1.0)                 # b and c are running on the two workers
            raise RuntimeError("the caller stops")
    while any(scratch.iterdir()) and time.monotonic() - t0 < 20:
        time.sleep(0.2)                     # each task interrupts its run, then cleans up
    assert not any(scratch.iterdir()) and time.monotonic() - t0 < 20


@pytest.mark.cli
def test_sigint_stops_a_cluster_batch_even_when_the_process_started_with_it_ignored(
        tmp_path, local_cluster, monkeypatch):
    """A batch on the cluster started in a script's background (SIGINT ignored, inherited)
    still stops on SIGINT, as the local pool does: the backend's wait raises on it, the
    futures are cancelled and each worker interrupts its run."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(cluster_mod.tempfile, "tempdir", str(scratch))
    specs = batch(tmp_path, "a-30-ok", "b-30-ok")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def press() -> None:
        deadline = time.monotonic() + 20
        while len(list(scratch.glob("testbed-cluster-*/*/started"))) < 2:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press)
    t0 = time.monotonic()
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            list(RunPool(1, backend=local_cluster).run(specs))
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN      # the caller's, back
    finally:
        presser.join(30)
        signal.signal(signal.SIGINT, old)
    while any(scratch.iterdir()) and time.monotonic() - t0 < 25:
        time.sleep(0.2)                     # each task interrupts its run, then cleans up
    assert not any(scratch.iterdir()) and time.monotonic() - t0 < 25
    assert not any(s.out_dir.exists() for s in specs)       # nothing came back


@pytest.mark.cli
def test_a_result_not_back_in_time_is_a_timeout(tmp_path, local_cluster, monkeypatch):
    monkeypatch.setattr(cluster_mod, "TRANSFER_S", 0.0)
    spec = RunSpec(scenario_mod.load("baseline"), tmp_path / "a-30-ok", timeout_s=1.0)
    (done,) = RunPool(1, backend=local_cluster).run([spec])
    assert type(done.error) is TimeoutExpired and "a-30-ok" in str(done.error)


# -- a stress campaign on the cluster -----------------------------------------------------

def campaign_on(cluster, tmp_path: Path, monkeypatch, ranges_text: str, waves: int):
    """test_pool.py's stand-in campaign, its runs on ``cluster`` (waves as large as its
    worker threads), or with one worker in this process when ``cluster`` is None."""
    import io
    from testbed.stress import campaign as campaign_mod
    from testbed.stress import ranges as ranges_mod
    from tests.core.test_stress import FakeOrchestrator
    monkeypatch.setattr(campaign_mod, "Orchestrator", FakeOrchestrator)
    checks = iter(range(waves + 1))
    monkeypatch.setattr(campaign_mod.Campaign, "fits", lambda self, sc: next(checks) < waves)
    monkeypatch.setenv("TESTBED_RESULTS_DB", str(tmp_path / "results.db"))
    base = scenario_mod.load("contention", ["client.policy=phillips-2005"])
    (tmp_path / "ranges.yaml").write_text(ranges_text)
    out = tmp_path / ("cluster" if cluster else "here")
    out.mkdir()
    c = campaign_mod.Campaign(base, scenario_mod.resolve("contention"),
                              ranges_mod.load(tmp_path / "ranges.yaml", base), out,
                              budget_s=3600, seed=7, echo=io.StringIO(),
                              workers=cluster.slots if cluster else 1, cluster=cluster)
    c.run()
    return [(t.label, t.phase, t.load, t.outcome) for t in c.tried], c


@pytest.fixture
def campaign_cluster(tmp_path, monkeypatch):
    from tests.core.test_pool import CAMPAIGN_WORKER
    path = tmp_path / "campaign_worker.py"
    path.write_text(CAMPAIGN_WORKER)
    monkeypatch.setattr(cluster_mod, "RunPool",
                        partial(RunPool, argv=[sys.executable, str(path)]))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  host="127.0.0.1", protocol="tcp",
                                  dashboard_address=None) as lc:
        with Cluster(lc.scheduler_address, "stress") as c:
            yield c


@pytest.mark.cli
def test_a_stress_campaign_on_the_cluster_tries_what_one_worker_tries(tmp_path, monkeypatch,
                                                                     campaign_cluster):
    from testbed import results
    ranges = "ranges:\n  client.memory_mb: {min: 32, max: 64, step: 8}\n"
    here, _ = campaign_on(None, tmp_path, monkeypatch, ranges, waves=6)
    there, c = campaign_on(campaign_cluster, tmp_path, monkeypatch, ranges, waves=3)
    assert here == there and len(there) == 6
    runs = results.open_batch(c.out).runs()
    assert [r.label for r in runs] == [t[0] for t in there]
    assert all((r.path / "cluster.json").exists() for r in runs)


@pytest.mark.cli
def test_a_counterexample_is_confirmed_and_shrunk_on_the_cluster(tmp_path, monkeypatch,
                                                                 campaign_cluster):
    ranges = "ranges:\n  client.memory_mb: {min: 16, max: 24, step: 8}\n" \
             "  topology.bulk_hosts: {min: 4, max: 5}\n"
    got, c = campaign_on(campaign_cluster, tmp_path, monkeypatch, ranges, waves=12)
    assert c.found and c.found[0].confirmed is True
    phases = {t[1] for t in got}
    assert {"sample", "confirm", "shrink"} <= phases, got
    ran = [t for t in got if t[3] != "invalid"]
    assert all((c.out / t[0] / "cluster.json").exists() for t in ran)


@pytest.mark.cli
def test_a_sweep_to_an_unreachable_scheduler_is_one_line_and_creates_nothing(tmp_path, capsys):
    from testbed.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    t0 = time.monotonic()
    assert main(["sweep", "baseline", "--param", "client.memory_mb=32,40", "--cluster",
                 f"tcp://127.0.0.1:{port}", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--cluster tcp://127.0.0.1:{port}: no Dask scheduler answered within 10 s" in err
    assert "Traceback" not in err and not out.exists() and time.monotonic() - t0 < 30
