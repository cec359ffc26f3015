"""RunContext: one run of the testbed, its id, its folder, and everything it made.

A run is the unit of clean-up. Everything a run creates is tagged with its id, an
8-hex-digit string (see docs/architecture.md, "Run tags"):

- processes carry ``TESTBED_RUN=<id>`` in their environment. The context puts it in
  ``os.environ`` while it is open, so every child (Mininet's host shells, tc, tgtd,
  the node programs) inherits it; :meth:`RunContext.env` gives it to a child explicitly;
- named network namespaces are ``tb-<id>-<what>`` (:meth:`RunContext.netns_name`);
- links and bridges carry the interface alias ``testbed:<id>`` (:attr:`RunContext.tag`);
- iptables/nft rules carry the comment ``testbed:<id>``;
- the state file ``/run/testbed/<id>.json`` names the owner process (pid and start
  time, so a reused pid is not mistaken for a live run) and lists what was made;
- the scratch folder ``/run/testbed/<id>/`` holds what needs a short path (unix
  sockets such as tgtd's control socket: at most 107 bytes) and goes with the run.

The state file is written before anything else exists, so every tagged resource on the
machine belongs to a run with a state file, and a run is *alive* exactly while its owner
process is. :mod:`testbed.cleanup` removes what dead runs left, by tag only.

Teardown always runs: leaving the ``with`` block normally, by an exception, by Ctrl-C
(SIGINT) or by SIGTERM (turned into KeyboardInterrupt while the context is open) calls
:meth:`RunContext.close`, which

1. calls the registered teardown functions, newest first (an error in one is reported
   and does not stop the others);
2. sweeps by tag: ends every process that still carries this run's id (SIGTERM, a
   grace period, then SIGKILL, each by pid), deletes ``tb-<id>-*`` namespaces, links
   with the run's alias and rules with its comment;
3. removes the state file.

A second Ctrl-C during teardown is noted and ignored; SIGKILL of the owner leaves the
tags for ``testbed clean``.

Usage::

    with RunContext.create(base_dir="runs", name="contention") as run:
        run.register("tgtd", "target", daemon.stop)     # teardown, newest first
        subprocess.Popen(argv, env=run.env())            # tagged child
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Optional

from .errors import ConfigError, EnvironmentProblem, TestbedError

ENV_VAR = "TESTBED_RUN"
STATE_DIR = Path(os.environ.get("TESTBED_STATE_DIR", "/run/testbed"))
NETNS_PREFIX = "tb-"
TAG_PREFIX = "testbed:"


def netns_name(run_id: str, what: str) -> str:
    """Name of a network namespace of run ``run_id``: ``tb-<id>-<what>``."""
    return f"{NETNS_PREFIX}{run_id}-{what}"


def proc_starttime(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/pid/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return int(stat[stat.rindex(")") + 2:].split()[19])


@dataclass
class Resource:
    """Something a run made, and how to remove it."""

    kind: str
    name: str
    teardown: Optional[Callable[[], None]] = field(default=None, repr=False)


SignalHandler = Callable[[int, Optional[FrameType]], None]


def raise_interrupt(signum: int, _frame: Optional[FrameType]) -> None:
    """SIGINT and SIGTERM as KeyboardInterrupt, so the with-blocks around unwind."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def signals_handled(handler: SignalHandler) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block, the previous handlers
    after it. Set explicitly, not left to Python: a process started with SIGINT ignored
    (a script's background job, ``nohup``) keeps it ignored otherwise. Main thread only
    (signal handlers cannot be set elsewhere); elsewhere the block changes nothing."""
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class RunContext:
    """One run: id, folder, state file, resources and their teardown.

    Create it with :meth:`create` and use it as a context manager; the API is
    ``id``, ``dir``, ``scratch``, ``tag``, ``env()``, ``netns_name()``, ``register()``, ``close()``.
    """

    def __init__(self, run_id: str, run_dir: Path, state_dir: Path = STATE_DIR):
        self.id = run_id
        self.dir = run_dir
        self.state_path = state_dir / f"{run_id}.json"
        self.scratch = state_dir / run_id
        self.tag = TAG_PREFIX + run_id
        self.resources: list[Resource] = []
        self.errors: list[str] = []       # teardown problems, reported by close()
        self.closed = False
        self._lock = threading.Lock()
        self._old_env: Optional[str] = None
        self._old_handlers: dict[int, object] = {}
        self._deferred_signal: Optional[int] = None

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(cls, base_dir: str | Path = "runs", name: str = "run",
               clean_stale: bool = True, state_dir: Path = STATE_DIR,
               run_dir: Optional[str | Path] = None) -> "RunContext":
        """Make a new run: id, folder ``<base_dir>/<time>-<name>-<id>``, state file.

        ``run_dir`` names the folder instead (it may exist already). ``clean_stale``
        first removes what dead runs left behind (by tag only). A ``state_dir`` other
        than :data:`STATE_DIR` hides the run from every other process's sweep, which
        then takes its tagged children for a dead run's and ends them.
        """
        if clean_stale and os.geteuid() == 0:
            from . import cleanup   # cleanup imports this module
            cleanup.clean_dead_runs(state_dir=state_dir)
        run_id = secrets.token_hex(4)
        given = run_dir is not None
        run_dir = Path(run_dir) if given else \
            Path(base_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{run_id}"
        run = cls(run_id, run_dir.resolve(), state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            run._write_state()
        except OSError as exc:
            raise EnvironmentProblem(f"run state folder {state_dir}: {exc.strerror} "
                                     f"(the testbed runs as root)") from None
        run.scratch.mkdir()
        try:
            run_dir.mkdir(parents=True, exist_ok=given)
        except OSError as exc:
            run.close()
            raise ConfigError(f"run folder {run_dir}: {exc.strerror}") from None
        run._old_env = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = run_id
        atexit.register(run.close)
        return run

    # -- what other parts use ---------------------------------------------------------

    def env(self, extra: Optional[dict[str, str]] = None,
            base: Optional[dict[str, str]] = None) -> dict[str, str]:
        """The environment for a child: ``base`` (default: ours), ``extra``, ``TESTBED_RUN``."""
        env = dict(os.environ if base is None else base)
        env.update(extra or {})
        env[ENV_VAR] = self.id
        return env

    def netns_name(self, what: str) -> str:
        """Name for a network namespace this run creates: ``tb-<id>-<what>``."""
        return netns_name(self.id, what)

    def register(self, kind: str, name: str,
                 teardown: Optional[Callable[[], None]] = None) -> Resource:
        """Record a resource (and how to remove it) in the state file.

        Teardown functions run newest first when the run closes.
        """
        res = Resource(kind, name, teardown)
        with self._lock:
            if self.closed:
                raise TestbedError(f"run {self.id}: register({kind} {name}) after close")
            self.resources.append(res)
            self._write_state()
        return res

    def unregister(self, res: Resource) -> None:
        """Forget a resource that its owner already removed."""
        with self._lock:
            if res in self.resources:
                self.resources.remove(res)
                self._write_state()

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Tear down everything of this run (idempotent); see the module docstring."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for res in reversed(self.resources):
            if res.teardown is None:
                continue
            try:
                res.teardown()
            except BaseException as exc:   # keep going: the rest must still go
                self.errors.append(f"{res.kind} {res.name}: {type(exc).__name__}: {exc}")
        from . import cleanup
        # Sweep by tag until nothing is found: a process caught inside exec() reads
        # with an empty environment, so one pass could miss it.
        for _ in range(3):
            left = cleanup.find_run(self.id, state_dir=self.state_path.parent)
            left.state, left.files = None, []       # ours to remove last, below
            if left.empty:
                break
            try:
                cleanup.remove(left, state_dir=self.state_path.parent)
            except (TestbedError, OSError, subprocess.SubprocessError) as exc:
                self.errors.append(f"sweep: {exc}")
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.state_path.with_suffix(".tmp").unlink(missing_ok=True)   # if interrupted
        self.state_path.unlink(missing_ok=True)
        if os.environ.get(ENV_VAR) == self.id:
            if self._old_env is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = self._old_env
        atexit.unregister(self.close)
        for err in self.errors:
            print(f"testbed: run {self.id} teardown: {err}", file=sys.stderr)

    def __enter__(self) -> "RunContext":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, raise_interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._old_handlers:
            for sig in self._old_handlers:
                signal.signal(sig, self._defer_signal)
        try:
            self.close()
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            self._old_handlers.clear()
        if self._deferred_signal is not None and exc_type is None:
            raise KeyboardInterrupt(f"signal {self._deferred_signal} during teardown")

    # -- internals --------------------------------------------------------------------

    def _defer_signal(self, signum: int, _frame: Optional[FrameType]) -> None:
        self._deferred_signal = signum
        print(f"testbed: run {self.id}: tearing down, please wait", file=sys.stderr)

    def _write_state(self) -> None:
        state = {
            "id": self.id,
            "pid": os.getpid(),
            "starttime": proc_starttime(os.getpid()),
            "dir": str(self.dir),
            "created": time.time(),
            "resources": [{"kind": r.kind, "name": r.name} for r in self.resources],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_path)


def self_and_ancestors() -> set[int]:
    """This process and its ancestors: never ended by our own sweep."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            break
    return pids
