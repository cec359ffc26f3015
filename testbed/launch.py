"""Starting the node programs of ``nodes/`` in a host, and knowing when they serve.

The orchestrator, ``testbed up`` and the tests start the node programs through this
one module:

- **argv**: each program is a small typed record (:class:`Target`, :class:`BulkSource`,
  :class:`StorageClient`, :class:`Verify`) whose :meth:`~Program.args` is its command
  line; :func:`command` makes it ``python -m nodes.X ...`` with ``sys.executable``
  (which the Docker backend maps to the image's interpreter);
- **start**: :func:`start` runs it through the backend's ``Host.popen`` (tracked and
  ended by pid at teardown), stdout and stderr appended to ``<name>.log`` in the run
  folder, and, for a program that reports readiness, its NDJSON events (``--stats``)
  in ``<name>.ndjson`` there;
- **readiness, one signal**: a node serves once its NDJSON file has a line
  ``{"event": "ready", ...}`` written after it was started. That line already says
  what is served (portal, tgtd pid, port) and lands where the run's evidence is kept;
  a word on stdout would say neither. :func:`wait_ready` waits for it and names the
  node and its log when the node exits first (reported at once) or never gets there.

The testbed's own names live here as well: the target's IQN and the bulk sources'
ports. The iSCSI port is the protocol's (:data:`testbed.iscsi.pdu.ISCSI_PORT`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional, Protocol

from .errors import ConfigError, TestbedError, TimeoutExpired
from .iscsi.pdu import ISCSI_PORT

if TYPE_CHECKING:          # only for annotations: the nodes import this module too
    from .backends.base import Host

TARGET_IQN = "iqn.2026-11.org.testbed:lun"
BULK_PORTS = {"tcp": 5001, "http": 8080}   # where bulk sources serve downloads, by mode
FLOOD_PORT = 9            # udp flood: the discard port, no socket listens on the client
READY_TIMEOUT_S = 20.0
POLL_S = 0.05


class NodeExited(TestbedError):
    """A node program ended before it was ready."""


def portal(ip: str) -> str:
    """The testbed target's portal on ``ip``: ``IP:3260``."""
    return f"{ip}:{ISCSI_PORT}"


class ChapAccounts(Protocol):
    """CHAP accounts as a scenario (``ChapSection``) or the initiator (``ChapCredentials``)
    holds them: the initiator's, and for mutual CHAP the target's."""

    @property
    def user(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def mutual_user(self) -> Optional[str]: ...
    @property
    def mutual_secret(self) -> Optional[str]: ...


def chap_args(chap: Optional[ChapAccounts]) -> list[str]:
    """The CHAP options, spelt the same by nodes.iscsi_target and nodes.verify."""
    if chap is None:
        return []
    argv = ["--chap-user", chap.user, "--chap-secret", chap.secret]
    if chap.mutual_user is not None:     # an absent secret is then the node's error to report
        argv += ["--mutual-user", chap.mutual_user, "--mutual-secret", chap.mutual_secret or ""]
    return argv


# -- the programs -----------------------------------------------------------------------


class Program:
    """A node program: its module and its command line."""

    module: ClassVar[str]
    # Takes --stats FILE and writes {"event": "ready"} there once it serves.
    reports_ready: ClassVar[bool] = False

    def args(self) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Target(Program):
    """nodes.iscsi_target: tgtd serving ``backing_file`` as LUN 1 of ``iqn`` on ``ip``."""

    ip: str
    backing_file: Path
    size_mb: int
    workdir: Path               # tgtd's control socket: a short path (the run's scratch)
    block_size: int = 512
    iqn: str = TARGET_IQN
    chap: Optional[ChapAccounts] = None

    module: ClassVar[str] = "nodes.iscsi_target"
    reports_ready: ClassVar[bool] = True

    def args(self) -> list[str]:
        return ["--portal", portal(self.ip), "--iqn", self.iqn,
                "--backing-file", str(self.backing_file), "--size-mb", str(self.size_mb),
                "--block-size", str(self.block_size), "--workdir", str(self.workdir),
                *chap_args(self.chap)]


@dataclass(frozen=True)
class BulkSource(Program):
    """nodes.bulk_source in ``mode``, given the facts of the topology that mode needs.

    tcp, http: serve downloads on ``BULK_PORTS[mode]``, on ``bind`` (None: every
    address); udp: flood the client's discard port (``client_ip``); spoof: forge
    segments of the client's iSCSI flow, from the target's portal (``target_ip``) to
    the client's ``initiator_port``. ``rate_mbit`` is per flow, 0 for the link's speed.
    """

    mode: str
    rate_mbit: float = 0.0
    bind: Optional[str] = None
    client_ip: Optional[str] = None
    target_ip: Optional[str] = None
    initiator_port: Optional[int] = None
    size: int = 1400             # udp, spoof: payload bytes
    seed: int = 1                # spoof: seed of the forged numbers

    module: ClassVar[str] = "nodes.bulk_source"
    reports_ready: ClassVar[bool] = True
    NEEDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "tcp": (), "http": (), "udp": ("client_ip",),
        "spoof": ("client_ip", "initiator_port", "target_ip")}

    def __post_init__(self) -> None:
        if self.mode not in self.NEEDS:
            raise ConfigError(f"bulk source: mode {self.mode!r} is unknown "
                              f"(known: {', '.join(self.NEEDS)})")
        missing = [f for f in self.NEEDS[self.mode] if getattr(self, f) is None]
        if missing:
            raise ConfigError(f"bulk source in mode {self.mode} needs {', '.join(missing)}")

    def args(self) -> list[str]:
        argv = ["--mode", self.mode, "--rate-mbit", str(self.rate_mbit)]
        if self.mode == "udp":
            return argv + ["--dest", f"{self.client_ip}:{FLOOD_PORT}", "--size", str(self.size)]
        if self.mode == "spoof":
            return argv + ["--dest", f"{self.client_ip}:{self.initiator_port}",
                           "--spoof-src", portal(str(self.target_ip)),
                           "--size", str(self.size), "--seed", str(self.seed)]
        argv += ["--port", str(BULK_PORTS[self.mode])]
        return argv + (["--bind", self.bind] if self.bind else [])


@dataclass(frozen=True)
class StorageClient(Program):
    """nodes.storage_client: the run's client, all of it in one JSON configuration."""

    config: Path

    module: ClassVar[str] = "nodes.storage_client"

    def args(self) -> list[str]:
        return ["--config", str(self.config)]


@dataclass(frozen=True)
class Verify(Program):
    """nodes.verify: read back every page of ``manifest`` and compare, from the LUN of
    the target on ``target_ip`` or, with ``disk_file``, from a local disk's file."""

    manifest: Path
    out: Path
    timeout_s: float
    target_ip: Optional[str] = None
    disk_file: Optional[Path] = None
    iqn: str = TARGET_IQN
    chap: Optional[ChapAccounts] = None
    journal: Optional[Path] = None      # the write journal of a restarted client

    module: ClassVar[str] = "nodes.verify"

    def __post_init__(self) -> None:
        if (self.target_ip is None) == (self.disk_file is None):
            raise ConfigError("verify: give either the target's address or a disk file")

    def args(self) -> list[str]:
        argv = ["--manifest", str(self.manifest), "--out", str(self.out),
                "--timeout", str(self.timeout_s)]
        if self.journal is not None:
            argv += ["--journal", str(self.journal)]
        if self.disk_file is not None:
            return argv + ["--file", str(self.disk_file)]
        return argv + ["--portal", portal(str(self.target_ip)), "--iqn", self.iqn,
                       *chap_args(self.chap)]


def command(program: Program) -> list[str]:
    """``python -m nodes.X ARGS``: how every node program is run."""
    return [sys.executable, "-m", program.module, *program.args()]


# -- starting and waiting -----------------------------------------------------------------


@dataclass
class Node:
    """A node program started in a host."""

    name: str
    proc: subprocess.Popen
    log: Path
    events: Optional[Path]      # its NDJSON file, if it reports readiness
    since: int = 0              # the file's size when the node started: older lines are not its

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self.events is None:
            raise TestbedError(f"node {self.name} does not report readiness")
        wait_ready(self.proc, self.name, self.events, self.log, timeout, self.since)


def start(host: Host, name: str, program: Program, run_dir: Path) -> Node:
    """Start ``program`` in ``host`` as node ``name``, its log in ``run_dir/<name>.log``
    and, if it reports readiness, its events in ``run_dir/<name>.ndjson``."""
    argv = command(program)
    log = run_dir / f"{name}.log"
    events, since = None, 0
    if program.reports_ready:
        events = run_dir / f"{name}.ndjson"
        since = events.stat().st_size if events.exists() else 0
        argv += ["--stats", str(events)]
    with open(log, "ab") as out:         # the child has its own descriptor once started
        proc = host.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return Node(name, proc, log, events, since)


def wait_ready(proc: subprocess.Popen, name: str, events: Path, log: Optional[Path] = None,
               timeout: float = READY_TIMEOUT_S, since: int = 0) -> None:
    """Return once ``events`` has a ``ready`` line past byte ``since``.

    NodeExited as soon as ``proc`` ends without one, TimeoutExpired after ``timeout``
    seconds; both name the node and its log.
    """
    where = f"see {log}" if log else "no log"
    deadline = time.monotonic() + timeout
    while True:
        # Look at the process first: a ready line written just before it ended counts.
        exited = proc.poll() is not None
        if has_ready_event(events, since):
            return
        if exited:
            raise NodeExited(f"node {name} exited with status {proc.returncode} before it "
                             f"was ready; {where}")
        if time.monotonic() > deadline:
            raise TimeoutExpired(f"node {name} was not ready after {timeout:g}s; {where}")
        time.sleep(POLL_S)


def has_ready_event(events: Path, since: int = 0) -> bool:
    """Whether a complete line of the NDJSON file ``events`` past byte ``since`` is the
    ``ready`` event."""
    try:
        with open(events, "rb") as f:
            f.seek(since)
            # The last piece has no newline yet: a line still being written.
            lines = f.read().split(b"\n")[:-1]
    except FileNotFoundError:
        return False
    return any(_event_of(line) == "ready" for line in lines)


def _event_of(line: bytes) -> Optional[str]:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj.get("event") if isinstance(obj, dict) else None
