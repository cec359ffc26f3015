"""RunPool: N whole runs at once on one machine (``--workers N``), results in order.

A run is not thread-safe and was never meant to be: its :class:`~testbed.runctx.RunContext`
puts ``TESTBED_RUN`` in ``os.environ`` for every child to inherit, owns the process's
SIGINT/SIGTERM handlers, and Mininet keeps class-level state. So each run of a pool is a
process of its own (``python -m testbed.pool JOB``), with its own RunContext, run id and
tags; two runs share no name, port or bridge (docs/architecture.md, "Run tags": the
switch, every veth and the kernel client's TAP and bridge live in the run's own
``tb-<id>-*`` namespaces, tgtd's control socket in the run's scratch folder).

How the pool behaves:

- **Order.** :meth:`RunPool.run` takes the runs in a list and yields one :class:`Done`
  per run in the list's order, whatever order they end in: a caller prints, indexes and
  records them exactly as one worker would have.
- **One worker** runs in this process, as the batches always did (progress on stderr,
  the same Ctrl-C path); no child process is involved.
- **N workers**: at most N children at once, started in list order. A child's output
  (the run's progress lines, or a crash's traceback) goes to its log file, by default
  ``<run folder>/progress.log``; the child reports how it ended in a small JSON file.
  A child that raised a :class:`~testbed.errors.TestbedError` hands back the same class
  (``ConfigError``, ``EnvironmentProblem``, else ``TestbedError``) and message, so the
  caller decides as before which errors stop a batch.
- **Ctrl-C, an error, or a caller that stops early**: every run in flight is sent one
  SIGINT (the children are in sessions of their own, so the terminal's Ctrl-C reaches
  the pool alone, and each run's teardown is asked once), given :data:`STOP_TIMEOUT_S`
  to tear itself down (folder marked ``interrupted``), then killed by pid; what a killed
  run left is then removed by tag (:func:`testbed.cleanup.clean_dead_runs`). A run that
  was asked to stop and left no summary (SIGINTed before its own handlers were set, it
  died of the KeyboardInterrupt; or killed) gets its folder marked ``interrupted`` by the
  pool, as the run marks it itself (:func:`testbed.orchestrator.mark_interrupted`). A
  second Ctrl-C meanwhile is noted and ignored, as a run's own teardown does.
- **SIGINT and SIGTERM raise** while the pool waits, locally or on a cluster backend
  (:func:`testbed.runctx.signals_handled`), as a run's context does in its own process:
  a batch started with SIGINT ignored (``nohup``, a script's background job, CI) still
  stops on Ctrl-C.
- **Every wait is bounded**: a run past its scenario's deadline plus
  :data:`RUN_ALLOWANCE_S` is stopped the same way and reported as a failed run.

Parallel runs compete for the CPU; each judges its own fidelity (:mod:`testbed.fidelity`)
and a starved run is marked ``invalid`` by its summary. The pool adds no rule of its own.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Callable, Iterator, Optional, Protocol, Sequence

from .errors import ConfigError, EnvironmentProblem, TestbedError, TimeoutExpired
from .runctx import raise_interrupt, signals_handled
from .scenario import Scenario

RUN_ALLOWANCE_S = 600.0   # beyond a scenario's deadline: bring-up, read-back, report, a
                          # kernel client's boot; only a safety net, never a judge
STOP_TIMEOUT_S = 120.0    # a run's own teardown after SIGINT (nodes, summary, report)
POLL_S = 0.1
MAX_WORKERS = 64

# The errors a child can hand back as themselves; any other TestbedError comes back as one.
_ERRORS: dict[str, type[TestbedError]] = {
    "ConfigError": ConfigError, "EnvironmentProblem": EnvironmentProblem,
    "TimeoutExpired": TimeoutExpired}


def error_kind(exc: TestbedError) -> str:
    """The name a child reports ``exc`` by: its class among :data:`_ERRORS` (a subclass
    such as a schema error is its base's), else ``TestbedError``."""
    return next((name for name, cls in _ERRORS.items() if isinstance(exc, cls)),
                "TestbedError")


def error_report(exc: TestbedError) -> dict[str, str]:
    """``exc`` as a child or a cluster task hands it back (JSON)."""
    return {"kind": error_kind(exc), "message": str(exc)}


def error_from(report: dict[str, str]) -> TestbedError:
    """The error a child or a cluster task handed back, as its class again."""
    return _ERRORS.get(report["kind"], TestbedError)(report["message"])


def check_workers(n: int, option: str = "--workers") -> int:
    """``n`` if it is a usable number of workers, else a ConfigError saying why."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"{option}: expected a whole number of runs at once, got {n!r}")
    if n < 1:
        raise ConfigError(f"{option}: must be at least 1 (runs at once), got {n}")
    if n > MAX_WORKERS:
        raise ConfigError(f"{option}: at most {MAX_WORKERS} runs at once, got {n}")
    return n


@dataclass(frozen=True)
class RunSpec:
    """One run for the pool: the scenario, its run folder, where its progress goes
    (None: with one worker, our stderr; with more, ``<out_dir>/progress.log``), and how
    long it may take (None: the scenario's deadline plus :data:`RUN_ALLOWANCE_S`)."""

    scenario: Scenario
    out_dir: Path
    log: Optional[Path] = None
    timeout_s: Optional[float] = None

    @property
    def limit_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else \
            self.scenario.deadline_s + RUN_ALLOWANCE_S


@dataclass
class Done:
    """How one run ended: ``summary`` of its run folder, or the ``error`` it raised."""

    spec: RunSpec
    run_dir: Path
    summary: Optional[dict] = None
    error: Optional[TestbedError] = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """The run reached its expected verdict (as RunResult.ok)."""
        s = self.summary or {}
        return self.error is None and bool(s.get("verdict")) and s["verdict"] == s.get("expected")


@dataclass
class _Child:
    index: int
    spec: RunSpec
    proc: subprocess.Popen
    result: Path
    started: float = field(default_factory=time.monotonic)
    stopping: Optional[str] = None       # why we asked it to stop, if past its time
    asked: bool = False                  # sent SIGINT by the pool (any reason)


Runner = Callable[[RunSpec], tuple[Path, dict]]


class Backend(Protocol):
    """Runs elsewhere than this machine's processes (:class:`testbed.cluster.Cluster`):
    the same contract as the pool's own loop (one Done per spec, in order; errors by
    class; stopping every run in flight when the caller stops)."""

    def run(self, specs: Sequence[RunSpec],
            on_start: Callable[[int, RunSpec], None]) -> Iterator[Done]: ...


def run_here(spec: RunSpec) -> tuple[Path, dict]:
    """One run in this process with the orchestrator: its folder and summary."""
    from .orchestrator import Orchestrator, Progress
    if spec.log is None:
        res = Orchestrator(spec.scenario, out_dir=spec.out_dir).run()
    else:
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "a") as log:
            res = Orchestrator(spec.scenario, out_dir=spec.out_dir,
                               progress=Progress(out=log)).run()
    return res.run_dir, res.summary


class RunPool:
    """Runs whole runs, ``workers`` at once (see the module docstring).

    ``argv`` is the child's command before its job file (tests give another program);
    ``on_start(i, spec)`` is called as run ``i`` (0-based) starts. ``backend`` (a
    cluster, :mod:`testbed.cluster`) runs the specs instead of this machine, and
    ``workers`` is then unused. ``processes``: each run a child process even with one
    worker (a cluster's task runs in a worker's thread, which cannot own the run's
    signal handlers).
    """

    def __init__(self, workers: int, argv: Optional[Sequence[str]] = None,
                 on_start: Optional[Callable[[int, RunSpec], None]] = None,
                 runner: Runner = run_here, stop_timeout_s: float = STOP_TIMEOUT_S,
                 backend: Optional[Backend] = None, processes: bool = False):
        self.workers = check_workers(workers)
        self.backend = backend
        self.processes = processes
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "testbed.pool"]
        self.on_start = on_start or (lambda i, spec: None)
        self.runner = runner
        self.stop_timeout_s = stop_timeout_s
        self.live: dict[int, _Child] = {}
        self._tmp: Optional[Path] = None

    def __enter__(self) -> "RunPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the one loop -------------------------------------------------------------------

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Done]:
        """One Done per spec, in the order of ``specs``. Leaving the loop early, an
        exception or Ctrl-C stops every run in flight (see the module docstring)."""
        if self.backend is None and self.workers == 1 and not self.processes:
            yield from self._run_here(specs)     # each run's own context handles signals
            return
        # as a run's RunContext does in the run's own process
        with signals_handled(raise_interrupt):
            if self.backend is not None:
                yield from self.backend.run(specs, self.on_start)
            else:
                yield from self._run_children(specs)

    def _run_children(self, specs: Sequence[RunSpec]) -> Iterator[Done]:
        """At most ``workers`` children at once, started in order, yielded in order."""
        done: dict[int, Done] = {}
        following, nxt = 0, 0
        try:
            while following < len(specs):
                while nxt < len(specs) and len(self.live) < self.workers:
                    self._start(nxt, specs[nxt])
                    nxt += 1
                for i in self._reap():
                    done[i] = self._collect(self.live.pop(i))
                while following in done:
                    yield done.pop(following)
                    following += 1
                time.sleep(POLL_S)
        finally:
            self.stop()

    def _run_here(self, specs: Sequence[RunSpec]) -> Iterator[Done]:
        for i, spec in enumerate(specs):
            self.on_start(i, spec)
            t0 = time.monotonic()
            try:
                run_dir, summary = self.runner(spec)
            except TestbedError as exc:
                yield Done(spec, spec.out_dir, error=exc, wall_s=time.monotonic() - t0)
            else:
                yield Done(spec, run_dir, summary, wall_s=time.monotonic() - t0)

    # -- children -----------------------------------------------------------------------

    def _start(self, i: int, spec: RunSpec) -> None:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="testbed-pool-"))
        job = self._tmp / f"{i}.job"
        result = self._tmp / f"{i}.json"
        log = spec.log or spec.out_dir / "progress.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        job.write_bytes(pickle.dumps((spec, str(result))))
        self.on_start(i, spec)
        with open(log, "ab") as out:
            # own session: the terminal's Ctrl-C reaches the pool, which asks each run once
            proc = subprocess.Popen(self.argv + [str(job)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.live[i] = _Child(i, spec, proc, result)

    def _reap(self) -> list[int]:
        """Indexes of children that ended; a child past its time is asked to stop."""
        ended = []
        for i, child in self.live.items():
            if child.proc.poll() is not None:
                ended.append(i)
            elif child.stopping is None and \
                    time.monotonic() - child.started > child.spec.limit_s:
                child.stopping = f"did not end within {child.spec.limit_s:g} s"
                _ask_to_stop(child)
            elif child.stopping and time.monotonic() - child.started > \
                    child.spec.limit_s + self.stop_timeout_s:
                _signal(child.proc, signal.SIGKILL)
        return ended

    def _collect(self, child: _Child) -> Done:
        wall = time.monotonic() - child.started
        spec = child.spec
        try:
            report = json.loads(child.result.read_text())
        except (OSError, ValueError):
            report = {"error": {"kind": "TestbedError", "message":
                                f"run worker ended with status {child.proc.returncode} and no "
                                f"result (see {spec.log or spec.out_dir / 'progress.log'})"}}
        if child.stopping:
            report["error"] = {"kind": "TimeoutExpired",
                               "message": f"run {spec.out_dir.name}: {child.stopping}"}
        if child.proc.returncode == -signal.SIGKILL:
            _sweep_dead_runs()
        run_dir = Path(report.get("run_dir") or spec.out_dir)
        if child.asked:
            _mark_if_unmarked(run_dir, child)
        summary = read_summary(run_dir)
        err = report.get("error")
        if err:
            return Done(spec, run_dir, summary, error_from(err), wall)
        return Done(spec, run_dir, summary, wall_s=wall)

    # -- stopping -----------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ask every run in flight to stop, from any thread (a cluster task's watcher):
        one SIGINT each, as Ctrl-C would; the loop collects them as they end, each
        marked ``interrupted`` by its own teardown."""
        for child in list(self.live.values()):
            _ask_to_stop(child)

    def stop(self) -> None:
        """Stop every run in flight: SIGINT once, wait, SIGKILL, sweep by tag. A second
        Ctrl-C meanwhile is ignored (each run is tearing itself down)."""
        if self.live:
            with signals_handled(_note_signal):
                for child in self.live.values():
                    _ask_to_stop(child)
                deadline = time.monotonic() + self.stop_timeout_s
                killed = False
                for child in self.live.values():
                    try:
                        child.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        _signal(child.proc, signal.SIGKILL)
                        child.proc.wait(timeout=10)
                        killed = True
                if killed:
                    _sweep_dead_runs()
                for child in self.live.values():
                    _mark_if_unmarked(child.spec.out_dir, child)
                self.live.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def _ask_to_stop(child: _Child) -> None:
    """One SIGINT, as Ctrl-C would: the run's own teardown marks its folder."""
    if child.proc.poll() is None:
        child.asked = True
    _signal(child.proc, signal.SIGINT)


def _mark_if_unmarked(run_dir: Path, child: _Child) -> None:
    """A run the pool asked to stop that left its folder without a summary (it died
    before its own handlers were set, or was killed) gets the marking the run would
    have written itself: ``interrupted``, what was collected kept, no verdict."""
    if not run_dir.is_dir() or (run_dir / "summary.json").exists():
        return
    from .orchestrator import mark_interrupted     # heavy: the child never needs it
    try:
        mark_interrupted(run_dir, child.spec.scenario, time.monotonic() - child.started)
    except (TestbedError, OSError, ValueError) as exc:
        print(f"testbed: pool: marking {run_dir} interrupted: {exc}", file=sys.stderr)


def _sweep_dead_runs() -> None:
    """What a killed run left, removed by its tags (the run is dead: its owner is gone)."""
    if os.geteuid() != 0:
        return
    from . import cleanup
    try:
        cleanup.clean_dead_runs()
    except (TestbedError, OSError, subprocess.SubprocessError) as exc:
        print(f"testbed: pool: sweeping a killed run: {exc}", file=sys.stderr)


def read_summary(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _note_signal(signum: int, _frame: Optional[FrameType]) -> None:
    """While the runs in flight tear down, a second Ctrl-C is noted and ignored."""
    print("testbed: stopping the runs in flight, please wait", file=sys.stderr, flush=True)


# -- the child ------------------------------------------------------------------------


def child_main(job: Path) -> int:
    """``python -m testbed.pool JOB``: one run; how it ended goes to the job's result
    file. Exit 0 when it ran (whatever its verdict), 1 on an error, 130 on Ctrl-C."""
    # Ctrl-C from the pool raises from here on, also when SIGINT was ignored where the
    # batch started (inherited): else it would be lost until the run's context is entered
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    spec, result = pickle.loads(job.read_bytes())
    report: dict = {"run_dir": None, "error": None}
    status = 0
    try:
        run_dir, _summary = run_here(RunSpec(spec.scenario, spec.out_dir, log=None))
        report["run_dir"] = str(run_dir)
    except KeyboardInterrupt:
        report["error"] = error_report(TestbedError("interrupted"))
        status = 130
    except TestbedError as exc:
        report["error"] = error_report(exc)
        print(f"testbed: {exc}", file=sys.stderr)
        status = 1
    except Exception as exc:    # a bug of the testbed's: named in the batch, not lost
        traceback.print_exc()   # into the run's log
        report["error"] = error_report(TestbedError(
            f"internal error in the run: {type(exc).__name__}: {exc} (the traceback is in "
            f"its log)"))
        status = 1
    finally:
        Path(result).write_text(json.dumps(report))
    return status


if __name__ == "__main__":
    sys.exit(child_main(Path(sys.argv[1])))
