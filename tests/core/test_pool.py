"""The run pool (``--workers N``): order, concurrency, errors, stopping, N checked.

The children here are a small stand-in program (``WORKER``) that reads the pool's real
job file and writes the real result file, so the pool's processes, signals, timeouts
and files are exercised for real; what a child does is written in its folder's name:
``<label>-<seconds>-<mode>`` (``bare``: SIGINT left to Python's default, a traceback;
``stubborn``: SIGINT ignored). The runs themselves (Mininet, tgtd) are the machine
test's (tests/e2e/test_workers.py).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from testbed import pool as pool_mod
from testbed import results
from testbed import scenario as scenario_mod
from testbed.cli import main
from testbed.errors import ConfigError, TestbedError, TimeoutExpired
from testbed.pool import RunPool, RunSpec, check_workers

WORKER = r'''
import json, pickle, signal, sys, time
from pathlib import Path
spec, result = pickle.loads(Path(sys.argv[1]).read_bytes())
out = spec.out_dir
label, seconds, mode = out.name.split("-")

def interrupted(signum, frame):
    (out / "interrupted").write_text("1")
    Path(result).write_text(json.dumps({"run_dir": str(out), "error": {
        "kind": "TestbedError", "message": "interrupted"}}))
    sys.exit(130)

if mode != "bare":      # bare: Python's own handler, as a run before its context is entered
    signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "stubborn" else interrupted)
(out / "started").write_text(repr(time.time()))
time.sleep(float(seconds))
(out / "ended").write_text(repr(time.time()))
if mode == "crash":
    sys.exit(3)
error = {"config": {"kind": "ConfigError", "message": "x.yaml:3: client.policy: bad"},
         "odd": {"kind": "SomethingElse", "message": "a node did not start"}}.get(mode)
(out / "summary.json").write_text(json.dumps({"verdict": "completed",
                                              "expected": "completed"}))
Path(result).write_text(json.dumps({"run_dir": str(out), "error": error}))
'''


@pytest.fixture
def worker(tmp_path: Path) -> list[str]:
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return [sys.executable, str(path)]


@pytest.fixture(scope="module")
def scenario():
    return scenario_mod.load("baseline")


def specs(tmp_path: Path, scenario, *names: str, **kw) -> list[RunSpec]:
    return [RunSpec(scenario, tmp_path / "batch" / name, **kw) for name in names]


def span(done) -> tuple[float, float]:
    d = done.spec.out_dir
    return float((d / "started").read_text()), float((d / "ended").read_text())


@pytest.mark.cli
def test_results_come_in_the_order_given_whatever_order_the_runs_end(tmp_path, worker,
                                                                     scenario):
    started = []
    jobs = specs(tmp_path, scenario, "a-2.5-ok", "b-1.0-ok", "c-1.7-ok")
    with RunPool(3, argv=worker, on_start=lambda i, s: started.append(i)) as pool:
        got = list(pool.run(jobs))
    assert [d.spec for d in got] == jobs and started == [0, 1, 2]
    assert all(d.error is None and d.ok and d.summary["verdict"] == "completed" for d in got)
    ends = [span(d)[1] for d in got]
    assert ends[1] < ends[2] < ends[0]          # they ended in another order
    assert max(span(d)[0] for d in got) < min(ends)     # and all three ran at once
    assert all(d.run_dir == d.spec.out_dir and (d.run_dir / "progress.log").exists()
               for d in got)


@pytest.mark.cli
def test_never_more_than_n_runs_at_once(tmp_path, worker, scenario):
    jobs = specs(tmp_path, scenario, *(f"r{i}-0.4-ok" for i in range(5)))
    with RunPool(2, argv=worker) as pool:
        spans = [span(d) for d in pool.run(jobs)]
    for t in {s for s, _ in spans}:
        assert sum(s <= t < e for s, e in spans) <= 2


@pytest.mark.cli
def test_an_error_comes_back_as_its_class_and_a_crash_as_a_failed_run(tmp_path, worker,
                                                                       scenario):
    jobs = specs(tmp_path, scenario, "a-0-config", "b-0-odd", "c-0-crash", "d-0-ok")
    with RunPool(2, argv=worker) as pool:
        a, b, c, d = pool.run(jobs)
    assert type(a.error) is ConfigError and str(a.error) == "x.yaml:3: client.policy: bad"
    assert type(b.error) is TestbedError and "a node did not start" in str(b.error)
    assert type(c.error) is TestbedError and "status 3 and no result" in str(c.error)
    assert d.error is None and d.ok and not a.ok


@pytest.mark.cli
def test_leaving_early_stops_every_run_in_flight_and_removes_the_job_files(tmp_path, worker,
                                                                          scenario):
    # a ends after 3 s, so b and c have set their SIGINT handlers (a Python start on a
    # loaded machine) before the caller stops: 0.1 s lost that race under load
    jobs = specs(tmp_path, scenario, "a-3-ok", "b-30-ok", "c-30-ok", "d-30-ok")
    pool = RunPool(3, argv=worker)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        with pool:
            for done in pool.run(jobs):
                assert done.error is None and pool._tmp is not None
                tmp = pool._tmp
                raise RuntimeError("the caller stops")     # as a ConfigError would
    assert time.monotonic() - t0 < 15
    assert all((j.out_dir / "interrupted").exists() for j in jobs[1:3])
    assert not jobs[3].out_dir.exists() or not (jobs[3].out_dir / "started").exists()
    assert pool.live == {} and pool._tmp is None
    assert not tmp.exists()


@pytest.mark.cli
def test_ctrl_c_stops_the_runs_in_flight(tmp_path, worker, scenario, monkeypatch):
    jobs = specs(tmp_path, scenario, "a-30-ok", "b-30-ok")
    pool = RunPool(2, argv=worker)
    pressed, real_sleep = [], time.sleep

    def sleep(seconds: float) -> None:          # Ctrl-C once, when both runs are under way
        if not pressed and all((j.out_dir / "started").exists() for j in jobs):
            pressed.append(True)
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(pool_mod.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        list(pool.run(jobs))
    assert all((j.out_dir / "interrupted").exists() for j in jobs)
    assert pool.live == {}


@pytest.mark.cli
def test_sigint_stops_the_runs_even_when_the_process_started_with_it_ignored(tmp_path, worker,
                                                                              scenario):
    """A batch started in the background of a script (SIGINT ignored, inherited) still
    stops on SIGINT: the pool raises on it while it waits, as a run's context does."""
    jobs = specs(tmp_path, scenario, "a-30-ok", "b-30-ok")
    pool = RunPool(2, argv=worker)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def press() -> None:
        deadline = time.monotonic() + 20
        while not all((j.out_dir / "started").exists() for j in jobs):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press)
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            list(pool.run(jobs))
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN      # the caller's, back
    finally:
        presser.join(30)
        signal.signal(signal.SIGINT, old)
    assert all((j.out_dir / "interrupted").exists() for j in jobs)
    assert pool.live == {}


@pytest.mark.cli
def test_a_run_that_does_not_stop_is_killed_and_a_late_one_is_a_timeout(tmp_path, worker,
                                                                        scenario):
    jobs = specs(tmp_path, scenario, "a-30-stubborn", timeout_s=0.5)
    t0 = time.monotonic()
    with RunPool(2, argv=worker, stop_timeout_s=0.5) as pool:
        (done,) = pool.run(jobs)
    assert time.monotonic() - t0 < 10
    assert isinstance(done.error, TimeoutExpired) and "did not end within 0.5 s" in str(done.error)
    # 3 s: the stand-in has set its handler by then (0.5 s lost that race under load,
    # and the pool then marks the folder itself: the test below)
    late = specs(tmp_path, scenario, "b-30-ok", timeout_s=3.0)
    with RunPool(2, argv=worker) as pool:
        (done,) = pool.run(late)
    assert isinstance(done.error, TimeoutExpired)
    assert (late[0].out_dir / "interrupted").exists()       # asked once, stopped itself


def marking(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.cli
def test_a_run_that_dies_of_the_sigint_or_is_killed_is_marked_interrupted(tmp_path, worker,
                                                                          scenario):
    """A run SIGINTed before it has set its handlers dies of the KeyboardInterrupt (a
    traceback, no summary); one that ignores it is killed: the pool marks both folders
    as the run marks itself on Ctrl-C. A run that ended by itself is left as it is."""
    jobs = specs(tmp_path, scenario, "a-1-ok", "b-30-bare", "c-30-stubborn")
    pool = RunPool(3, argv=worker, stop_timeout_s=2)
    with pytest.raises(RuntimeError):
        with pool:
            for done in pool.run(jobs):
                while not all((j.out_dir / "started").exists() for j in jobs):
                    time.sleep(0.05)        # b and c under way (a ended after 1 s)
                raise RuntimeError("the caller stops")
    a, b, c = (j.out_dir for j in jobs)
    assert "KeyboardInterrupt" in (b / "progress.log").read_text()     # died of it
    for d in (b, c):
        s = marking(d)
        assert s["status"] == "interrupted" and s["verdict"] is None, s
        assert s["scenario"] == scenario.name and s["policy"] == scenario.client.policy
        assert (d / "report.html").exists() and not (d / "ended").exists()
    assert marking(a) == {"verdict": "completed", "expected": "completed"}   # its own
    run = results.open_run(b)                   # and the results reader takes it as such
    assert run.verdict is None and run.summary["status"] == "interrupted"


@pytest.mark.cli
def test_a_run_past_its_time_that_dies_of_the_sigint_is_marked_interrupted(tmp_path, worker,
                                                                          scenario):
    jobs = specs(tmp_path, scenario, "a-30-bare", timeout_s=1.0)
    with RunPool(2, argv=worker) as pool:
        (done,) = pool.run(jobs)
    assert isinstance(done.error, TimeoutExpired)
    assert done.summary["status"] == "interrupted" == marking(jobs[0].out_dir)["status"]


def test_one_worker_runs_in_this_process_in_order(tmp_path, scenario):
    seen = []

    def runner(spec: RunSpec) -> tuple[Path, dict]:
        seen.append(spec.out_dir.name)
        if spec.out_dir.name == "b":
            raise TestbedError("node target did not start")
        return spec.out_dir, {"verdict": "lockup", "expected": "lockup"}

    jobs = specs(tmp_path, scenario, "a", "b", "c")
    got = list(RunPool(1, runner=runner).run(jobs))
    assert seen == ["a", "b", "c"] and [d.spec for d in got] == jobs
    assert got[0].ok and str(got[1].error) == "node target did not start" and got[2].ok

    def interrupted(spec: RunSpec) -> tuple[Path, dict]:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        list(RunPool(1, runner=interrupted).run(jobs))


@pytest.mark.parametrize("bad", [0, -2, 65, "2", True])
def test_the_number_of_workers_is_checked(bad):
    with pytest.raises(ConfigError, match="--workers"):
        check_workers(bad)
    with pytest.raises(ConfigError):
        RunPool(bad)


@pytest.mark.cli
@pytest.mark.parametrize("argv", [
    ["compare", "baseline", "--policies", "none"],
    ["sweep", "baseline", "--param", "client.memory_mb=32,40"],
    ["stress", "contention", "--policy", "none", "--budget", "1m"]])
def test_workers_below_one_is_a_one_line_error_and_starts_nothing(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(argv + ["--workers", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--workers: must be at least 1 (runs at once), got 0" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# -- the stress campaign's waves ----------------------------------------------------------------

CAMPAIGN_WORKER = r'''
import json, pickle, sys
from pathlib import Path
spec, result = pickle.loads(Path(sys.argv[1]).read_bytes())
sc, out = spec.scenario, spec.out_dir
out.mkdir(parents=True, exist_ok=True)
verdict = "lockup" if sc.client.memory_mb <= 24 and sc.topology.bulk_hosts >= 4 else "completed"
(out / "summary.json").write_text(json.dumps(
    {"scenario": sc.name, "policy": sc.client.policy, "verdict": verdict,
     "expected": sc.expected, "status": "finished", "duration_s": 1.0}))
Path(result).write_text(json.dumps({"run_dir": str(out), "error": None}))
'''


def campaign_with(workers: int, tmp_path: Path, monkeypatch, ranges_text: str, waves: int):
    """A stress campaign of ``waves`` time checks, its runs by the stand-in rule of
    tests/core/test_stress.py (in this process with one worker, child processes with more)."""
    from testbed.stress import campaign as campaign_mod
    from testbed.stress import ranges as ranges_mod
    from tests.core.test_stress import FakeOrchestrator
    import io
    worker = tmp_path / "campaign_worker.py"
    worker.write_text(CAMPAIGN_WORKER)
    monkeypatch.setattr(campaign_mod, "Orchestrator", FakeOrchestrator)
    monkeypatch.setattr(campaign_mod, "RunPool",
                        lambda n: RunPool(n, argv=[sys.executable, str(worker)]))
    checks = iter(range(waves + 1))
    monkeypatch.setattr(campaign_mod.Campaign, "fits", lambda self, sc: next(checks) < waves)
    monkeypatch.setenv("TESTBED_RESULTS_DB", str(tmp_path / "results.db"))
    base = scenario_mod.load("contention", ["client.policy=phillips-2005"])
    (tmp_path / "ranges.yaml").write_text(ranges_text)
    out = tmp_path / f"out{workers}"
    out.mkdir()
    c = campaign_mod.Campaign(base, scenario_mod.resolve("contention"),
                              ranges_mod.load(tmp_path / "ranges.yaml", base), out,
                              budget_s=3600, seed=7, echo=io.StringIO(), workers=workers)
    c.run()
    return [(t.label, t.phase, t.load, t.outcome) for t in c.tried], c


@pytest.mark.cli
def test_a_campaign_with_two_workers_tries_the_loads_one_worker_tries(tmp_path, monkeypatch):
    ranges = "ranges:\n  client.memory_mb: {min: 32, max: 64, step: 8}\n"
    one, _ = campaign_with(1, tmp_path, monkeypatch, ranges, waves=6)
    two, c = campaign_with(2, tmp_path, monkeypatch, ranges, waves=3)
    assert one == two and len(two) == 6                  # same loads, same order, same outcomes
    assert [r.label for r in results.open_batch(c.out).runs()] == [t[0] for t in two]


@pytest.mark.cli
def test_a_confirmation_runs_its_fresh_runs_in_waves(tmp_path, monkeypatch):
    ranges = "ranges:\n  client.memory_mb: {min: 16, max: 24, step: 8}\n" \
             "  topology.bulk_hosts: {min: 4, max: 5}\n"
    got, c = campaign_with(3, tmp_path, monkeypatch, ranges, waves=3)
    assert [t[1] for t in got[:3]] == ["sample"] * 3       # the first wave, noted in order
    confirms = [t for t in got if t[1] == "confirm"]
    assert [t[0] for t in confirms[:5]] == [f"s001-confirm{i}" for i in range(1, 6)]
    assert all(t[3] == "counterexample" for t in confirms[:5])
    assert c.found[0].confirmed is True


def test_a_state_file_being_written_is_not_taken_for_a_dead_run(tmp_path):
    """A run's first state file is <id>.tmp before it is <id>.json: a scan by a run
    starting next to it must leave a live owner's alone, and still remove a dead one's,
    however fresh (a run SIGKILLed between writing it and renaming it: CI of ee2bb21), or
    torn beside a dead owner's .json."""
    import json
    import os
    from testbed import cleanup
    from testbed.runctx import proc_starttime
    live, dead = tmp_path / "0123abcd.tmp", tmp_path / "89abcdef.tmp"
    live.write_text(json.dumps({"pid": os.getpid(), "starttime": proc_starttime(os.getpid())}))
    dead.write_text(json.dumps({"pid": os.getpid(), "starttime": -1}))   # pid reused since
    assert cleanup._being_written(live) and not cleanup._being_written(dead)
    torn, old = tmp_path / "01234567.tmp", tmp_path / "76543210.tmp"
    torn.write_text('{"id": "0123')
    old.write_text('{"id": "7654')
    long_ago = time.time() - cleanup.TMP_GRACE_S - 5
    os.utime(old, (long_ago, long_ago))
    assert cleanup._being_written(torn) and not cleanup._being_written(old)
    # a torn one beside its run's .json is judged by that owner (a SIGKILL mid-write)
    me = {"pid": os.getpid(), "starttime": proc_starttime(os.getpid())}
    assert cleanup._being_written(torn, me)
    assert not cleanup._being_written(torn, {**me, "starttime": -1})
    assert cleanup._being_written(torn, {"pid": None, "unreadable": True})   # by its age
    assert not cleanup._being_written(tmp_path / "0123abcd")          # a scratch folder
    assert cleanup._being_written(tmp_path / "gone.tmp")               # replaced meanwhile


def test_a_bug_in_a_run_comes_back_as_an_error_that_names_it(tmp_path, monkeypatch, capsys,
                                                              scenario):
    """A run that raises what no testbed error is (the summary's TypeError of a stress
    campaign, 2026-11-30) is a failed run with its exception named, its traceback in the
    log; before, the batch saw a run with no result and no reason."""
    result = tmp_path / "0.result"
    job = tmp_path / "0.job"
    job.write_bytes(pickle.dumps((RunSpec(scenario, tmp_path / "run"), str(result))))

    def bug(spec):
        raise TypeError("unsupported format string passed to NoneType.__format__")

    monkeypatch.setattr(pool_mod, "run_here", bug)
    monkeypatch.setattr(pool_mod.signal, "signal", lambda *a: None)   # pytest keeps its own
    assert pool_mod.child_main(job) == 1
    error = pool_mod.error_from(json.loads(result.read_text())["error"])
    assert type(error) is TestbedError
    assert str(error) == ("internal error in the run: TypeError: unsupported format string "
                          "passed to NoneType.__format__ (the traceback is in its log)")
    assert "Traceback (most recent call last)" in capsys.readouterr().err
