"""``--cluster tcp://HOST:PORT``: the runs of a batch on the workers of a Dask cluster.

When one machine is not enough, ``sweep``, ``compare`` and ``stress`` hand their runs to
an existing Dask distributed scheduler (``dask scheduler`` on one machine, ``dask
worker`` on each of the others, as root, with the project installed; docs/cluster.md).
Dask fits a Python project: a run is a picklable :class:`~testbed.pool.RunSpec`, a task
is one function call, and the scheduler re-queues the task of a worker that dies.

The design keeps one run path and one batch path:

- **On the worker, one task = one whole run**, run exactly as ``--workers N`` runs one
  (:func:`run_task`): a :class:`~testbed.pool.RunPool` with ``processes=True`` starts
  ``python -m testbed.pool JOB`` (a task runs in a worker's thread, which cannot own a
  run's SIGINT/SIGTERM handlers; the child does, with its own run id and namespaces).
  The run folder is made in a scratch folder of the worker's, under the name the asking
  side gave it, with ``cluster.json`` beside the summary (which worker, its network
  namespace, its host) and ``provenance.json`` (the worker's machine and code, which
  the results store records), then packed as a tar.gz (at most :data:`MAX_FOLDER_BYTES`; past
  it the run comes back as a failed run saying so) and the scratch folder removed.
- **On the asking side, a backend of the pool** (:class:`Cluster`, given to
  :class:`~testbed.pool.RunPool` as ``backend``): it submits every spec, waits for the
  results in the specs' order and unpacks each into the batch folder under the name a
  local run would have had (:func:`unpack`), so ``_run_batch`` and the stress campaign
  print, index and record them in the results store exactly as local runs: the run
  folder stays the unit of truth. Errors come back by class, as the pool's children
  hand them back (:func:`testbed.pool.error_report`).
- **Stopping**: leaving the loop (Ctrl-C, an error) cancels every future not yet
  collected. A running task notices that its future was cancelled (the scheduler
  releases it; also when the asking side's client is gone) within
  :data:`WATCH_S` and interrupts its run: one SIGINT, the run's own teardown. SIGINT
  and SIGTERM raise while the asking side waits, set by the pool around its backend as
  around its own children (:func:`testbed.runctx.signals_handled`): a batch started with
  SIGINT ignored (``nohup``, CI) still stops on Ctrl-C.
- **Every wait is bounded**: connecting (:data:`CONNECT_TIMEOUT_S`), the first worker
  (:data:`WORKERS_TIMEOUT_S`), and each result (its run's limit, times the runs queued
  before it per slot, plus :data:`TRANSFER_S`); the worker's pool stops a run past its
  own limit as ``--workers`` does.

How many runs go at once is the cluster's business: one per worker thread (``dask
worker --nthreads 1`` runs one run at a time on its machine). ``--workers`` is refused
beside ``--cluster``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Optional, Sequence

from . import results, store
from .errors import ConfigError, EnvironmentProblem, TestbedError, TimeoutExpired
from .pool import Done, RunPool, RunSpec, error_from, error_report, read_summary

CONNECT_TIMEOUT_S = 10.0      # a scheduler that does not answer by then is not there
WORKERS_TIMEOUT_S = 30.0      # a scheduler without a worker by then cannot run anything
TRANSFER_S = 120.0            # beyond a run's limit: queueing, packing, sending
WATCH_S = 1.0                 # how often a task looks whether its future was cancelled
POLL_S = 0.2
MAX_FOLDER_BYTES = 256 * 2**20   # a packed run folder; the largest seen are a few MiB
PROVENANCE = "cluster.json"   # in the run folder: where it ran

_ADDRESS = re.compile(r"tcp://(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})")


def check_address(text: str) -> str:
    """``text`` if it is ``tcp://HOST:PORT`` with a port in 1..65535, else a ConfigError."""
    m = _ADDRESS.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise ConfigError(f"--cluster {text!r}: expected the scheduler's address as "
                          f"tcp://HOST:PORT, e.g. tcp://192.0.2.10:8786")
    return text.strip()


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise EnvironmentProblem(f"--cluster needs Dask distributed ({exc}): run `make "
                                 f"setup` (it installs the project's cluster extra)") from None
    return distributed


# -- the run folder in transit ------------------------------------------------------------

def pack(run_dir: Path, max_bytes: int = MAX_FOLDER_BYTES) -> bytes:
    """The run folder as a tar.gz whose members are ``<folder name>/...``; a
    TestbedError if it is larger than ``max_bytes`` packed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(run_dir, arcname=run_dir.name)
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise TestbedError(f"run folder {run_dir.name}: {len(data) / 2**20:.1f} MiB packed, "
                           f"more than the {max_bytes / 2**20:.1f} MiB a cluster run may "
                           f"send back (testbed.cluster.MAX_FOLDER_BYTES)")
    return data


def unpack(data: bytes, dest: Path) -> Path:
    """Unpack a packed run folder as ``dest`` (which must not exist or be empty). Only
    files and folders under the packed folder's own name are accepted: a member that
    climbs out, is absolute, or is a link or device is refused with a TestbedError."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TestbedError(f"{dest}: exists and is not an empty folder; the run from the "
                           f"cluster is not unpacked over it")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            top = _top(members)
            with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
                tar.extractall(tmp, members=members)
                if dest.exists():
                    dest.rmdir()
                os.replace(Path(tmp) / top, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TestbedError(f"run folder for {dest}: the packed folder cannot be read "
                           f"({exc})") from None
    return dest


def _top(members: list[tarfile.TarInfo]) -> str:
    """The one top folder of the members, checked as :func:`unpack` says."""
    if not members:
        raise TestbedError("packed run folder: empty")
    tops = set()
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts or not (m.isfile() or m.isdir()):
            raise TestbedError(f"packed run folder: member {m.name!r} refused (absolute, "
                               f"climbing out, or not a plain file or folder)")
        tops.add(path.parts[0])
    if len(tops) != 1:
        raise TestbedError(f"packed run folder: expected one folder, got {sorted(tops)}")
    return tops.pop()


# -- the worker's side --------------------------------------------------------------------

def run_task(spec: RunSpec, command: str, max_bytes: int = MAX_FOLDER_BYTES) -> dict:
    """A cluster task: one whole run on this worker (see the module docstring). Returns
    the packed folder (``tar``, or None), how the run ended (``error``: kind and
    message, or None) and where it ran (``worker``). The folder's provenance.json is
    written here (``command``, this machine, this code), as the machine that made it."""
    distributed = _distributed()
    worker = distributed.get_worker()
    key = worker.get_current_task()
    where = provenance(worker.address)
    scratch = Path(tempfile.mkdtemp(prefix="testbed-cluster-"))
    local = RunSpec(spec.scenario, scratch / spec.out_dir.name, timeout_s=spec.timeout_s)
    reply: dict = {"tar": None, "error": None, "worker": where, "wall_s": 0.0}
    try:
        with RunPool(1, processes=True) as pool:
            watch = _CancelWatch(lambda: _cancelled(worker, key), pool.interrupt)
            with watch:
                done = next(iter(pool.run([local])))
        reply["wall_s"] = done.wall_s
        if done.error is not None:
            reply["error"] = error_report(done.error)
        if done.run_dir.is_dir():
            (done.run_dir / PROVENANCE).write_text(json.dumps(where, indent=1) + "\n")
            run = results.read_run(done.run_dir)
            if run is not None:
                store.ensure_provenance(run, command)
            reply["tar"] = pack(done.run_dir, max_bytes)
    except TestbedError as exc:
        reply["error"] = error_report(exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return reply


def provenance(worker_address: str) -> dict:
    """Where a task runs: the worker's address, this host's name, and the network
    namespace of the process (its inode: a worker in a namespace of its own differs
    from the root namespace's)."""
    try:
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = None
    return {"worker": worker_address, "hostname": socket.gethostname(), "net_ns": netns,
            "pid": os.getpid()}


def _cancelled(worker: Any, key: Any) -> bool:
    """The task ``key`` was released by the scheduler (its future cancelled, or the
    client that asked for it gone): the worker no longer wants its result."""
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


class _CancelWatch:
    """A thread that calls ``stop()`` once when ``cancelled()`` turns true."""

    def __init__(self, cancelled: Callable[[], bool], stop: Callable[[], None]):
        self.cancelled, self.stop = cancelled, stop
        self._end = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._end.wait(WATCH_S):
            if self.cancelled():
                self.stop()
                return

    def __enter__(self) -> "_CancelWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end.set()
        self._thread.join(timeout=5)


# -- the asking side ----------------------------------------------------------------------

class Cluster:
    """A connection to a Dask scheduler, and the pool backend that runs specs there."""

    def __init__(self, address: str, command: str = "sweep",
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 workers_timeout_s: float = WORKERS_TIMEOUT_S,
                 max_bytes: int = MAX_FOLDER_BYTES):
        self.address = check_address(address)
        self.command = command          # the runs' provenance: compare, sweep, stress
        self.connect_timeout_s = connect_timeout_s
        self.workers_timeout_s = workers_timeout_s
        self.max_bytes = max_bytes
        self.client: Any = None

    def __enter__(self) -> "Cluster":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect (bounded) and wait (bounded) for at least one worker."""
        distributed = _distributed()
        try:
            self.client = distributed.Client(self.address, timeout=self.connect_timeout_s,
                                             set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise EnvironmentProblem(
                f"--cluster {self.address}: no Dask scheduler answered within "
                f"{self.connect_timeout_s:g} s ({exc}); is `dask scheduler` running there "
                f"and its port open (docs/cluster.md)?") from None
        try:
            self.client.wait_for_workers(1, timeout=self.workers_timeout_s)
        except (OSError, TimeoutError):
            self.close()
            raise EnvironmentProblem(
                f"--cluster {self.address}: the scheduler has no worker after "
                f"{self.workers_timeout_s:g} s; start `dask worker {self.address}` on each "
                f"machine, as root in the project's folder (docs/cluster.md)") from None

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):    # closing must not hide what ended us
                self.client.close(timeout=self.connect_timeout_s)
            self.client = None

    @property
    def slots(self) -> int:
        """Runs at once: the worker threads the scheduler knows now (at least 1)."""
        workers = self.client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    def run(self, specs: Sequence[RunSpec],
            on_start: Callable[[int, RunSpec], None]) -> Iterator[Done]:
        """One Done per spec, in the specs' order (the pool's contract); every future
        not collected is cancelled when the loop is left."""
        token = uuid.uuid4().hex[:8]
        slots = self.slots
        t0 = time.monotonic()
        futures = []
        try:
            for i, spec in enumerate(specs):
                futures.append(self.client.submit(
                    run_task, spec, self.command, self.max_bytes,
                    key=f"testbed-run-{token}-{i}", pure=False))
                on_start(i, spec)
            for i, (spec, fut) in enumerate(zip(specs, futures)):
                limit = t0 + (i // slots + 1) * spec.limit_s + TRANSFER_S
                yield self._collect(spec, fut, limit, t0)
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                with contextlib.suppress(Exception):
                    self.client.cancel(pending)

    def _collect(self, spec: RunSpec, fut: Any, limit: float, t0: float) -> Done:
        while not fut.done():
            if time.monotonic() > limit:
                self.client.cancel([fut])
                return Done(spec, spec.out_dir, error=TimeoutExpired(
                    f"run {spec.out_dir.name}: no result from the cluster within "
                    f"{limit - t0:.0f} s"), wall_s=time.monotonic() - t0)
            time.sleep(POLL_S)
        try:
            reply = fut.result(timeout=self.connect_timeout_s)
        except Exception as exc:    # the task's own failure, or a worker lost too often
            return Done(spec, spec.out_dir, error=TestbedError(
                f"run {spec.out_dir.name}: the cluster gave no result "
                f"({type(exc).__name__}: {exc})"), wall_s=time.monotonic() - t0)
        return receive(spec, reply)


def receive(spec: RunSpec, reply: dict) -> Done:
    """A task's reply as the pool's Done: the folder unpacked where a local run would
    have made it, its progress lines appended to ``spec.log`` if that is elsewhere, its
    error of the class it was raised as."""
    err = reply.get("error")
    error: Optional[TestbedError] = None
    if reply.get("tar") is not None:
        try:
            unpack(reply["tar"], spec.out_dir)
        except TestbedError as exc:
            error = exc
        else:
            _copy_progress(spec)
    if err and error is None:
        error = error_from(err)
    return Done(spec, spec.out_dir, read_summary(spec.out_dir), error,
                float(reply.get("wall_s") or 0.0))


def _copy_progress(spec: RunSpec) -> None:
    own = spec.out_dir / "progress.log"
    if spec.log is None or spec.log == own or not own.is_file():
        return
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log, "a") as out:
        out.write(own.read_text(errors="replace"))


# -- the command line ---------------------------------------------------------------------

def cluster_option(p: argparse.ArgumentParser) -> None:
    """``--cluster tcp://HOST:PORT`` for sweep, compare and stress."""
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="run the runs on the workers of this Dask scheduler "
                        "(docs/cluster.md); results come back into this machine's folder "
                        "and results store. Not with --workers: the cluster's worker "
                        "threads say how many runs go at once")


def check_options(address: Optional[str], workers: int) -> None:
    """``--cluster`` well formed and not beside ``--workers`` (other than 1), checked
    with the other options, before anything starts."""
    if address is None:
        return
    check_address(address)
    if workers != 1:
        raise ConfigError(f"--cluster with --workers {workers}: give one of them; with "
                          f"--cluster the cluster's worker threads say how many runs go at "
                          f"once (`dask worker --nthreads N` on each machine)")


def open_cluster(address: Optional[str], workers: int,
                 command: str) -> contextlib.AbstractContextManager:
    """The connected cluster for the duration of ``command`` (compare, sweep, stress),
    or None without ``--cluster`` (:func:`check_options` first)."""
    check_options(address, workers)
    return contextlib.nullcontext() if address is None else Cluster(address, command)
