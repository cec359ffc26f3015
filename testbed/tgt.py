"""Start, configure and stop a tgtd (the Linux SCSI target framework's daemon).

tgtd is fully user space, so it runs anywhere, including inside a Mininet host. Each
:class:`TgtDaemon` gets its own control socket (``TGT_IPC_SOCKET`` in its work folder),
so several can run at once and none touches the machine's own ``/var/run/tgtd``. The
control socket is a filesystem unix socket: ``tgtadm`` reaches it from any network
namespace, so only tgtd itself has to be started inside the target host (pass that
host's ``popen`` as ``spawn``).

Two quirks decide how it is stopped (see docs/iscsi-notes in the design notes):
tgtd ignores SIGTERM while it has targets, and ``--op delete --mode system`` is refused
while targets exist. So :meth:`TgtDaemon.stop` deletes every target with ``--force``,
then the system, waits for the process to exit, and only then signals it by pid.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import EnvironmentProblem, TestbedError, TimeoutExpired
from .iscsi.pdu import ISCSI_PORT

TGTD = "/usr/sbin/tgtd"
TGTADM = "/usr/sbin/tgtadm"

Spawn = Callable[..., subprocess.Popen]


class TgtError(TestbedError):
    """tgtd could not be started, configured or stopped."""


@dataclass(frozen=True)
class Connection:
    """One I_T nexus connection as ``tgtadm --op show`` lists it."""

    tid: int
    sid: int
    cid: int
    initiator: str
    ip: str


class TgtDaemon:
    """One tgtd process with its own control socket, targets and accounts.

    Args:
        workdir: folder for the control socket, the log and (by default) LUN files.
        portal: ``IP:PORT`` to listen on; port 0 lets tgtd pick a free port.
        spawn: how to start a process (``subprocess.Popen`` or a host's ``popen``).
        nop_interval, nop_count: target-initiated NOP-In pings (0 = off, tgtd's default).
    """

    def __init__(self, workdir: Path | str, portal: str = f"127.0.0.1:{ISCSI_PORT}",
                 spawn: Optional[Spawn] = None, nop_interval: int = 0, nop_count: int = 0):
        self.workdir = Path(workdir)
        self.portal = portal
        self.ip, port = _split_portal(portal)
        self.port = port
        self._spawn: Spawn = spawn or subprocess.Popen
        self.nop_interval = nop_interval
        self.nop_count = nop_count
        self.socket_path = self.workdir / "tgtd.sock"
        self.log_path = self.workdir / "tgtd.log"
        self.proc: Optional[subprocess.Popen] = None
        self.tids: list[int] = []

    # -- life cycle -------------------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> "TgtDaemon":
        """Start tgtd in the foreground and wait until tgtadm answers and it listens."""
        for tool in (TGTD, TGTADM):
            if not os.access(tool, os.X_OK):
                raise EnvironmentProblem(f"{tool} not found: install the Debian package 'tgt'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        opts = f"portal={self.ip}:{self.port}"
        if self.nop_interval:
            opts += f",nop_interval={self.nop_interval},nop_count={self.nop_count}"
        env = dict(os.environ, TGT_IPC_SOCKET=str(self.socket_path))
        with open(self.log_path, "ab") as log:
            self.proc = self._spawn([TGTD, "-f", "--iscsi", opts], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise TgtError(f"tgtd exited with status {self.proc.returncode} at start; "
                               f"its log: {self._log_tail()}")
            try:
                out = self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "portal",
                                  timeout=max(0.5, deadline - time.monotonic()))
            except TgtError:
                out = ""
            port = _listening_port(out, self.ip)
            if port:
                self.port = port
                self.portal = f"{self.ip}:{port}"
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutExpired(f"tgtd on {self.portal} not ready after {timeout}s; "
                                     f"its log: {self._log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Delete targets and the system through tgtadm, then make sure the process is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            deadline = time.monotonic() + timeout
            try:
                for tid in self._live_tids():
                    self.tgtadm("--lld", "iscsi", "--op", "delete", "--force", "--mode", "target",
                                "--tid", str(tid), timeout=timeout / 2)
                self.tgtadm("--op", "delete", "--mode", "system", timeout=timeout / 2)
            except (TgtError, TimeoutExpired):
                pass  # fall through to signals below
            try:
                self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if not self._signal(signal.SIGTERM, 1.0):
                    self._signal(signal.SIGKILL, 5.0)
        self._reap()

    def kill(self) -> None:
        """SIGKILL tgtd by pid (to emulate a crashed target) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL, 5.0)
        self._reap()

    def __enter__(self) -> "TgtDaemon":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- configuration ----------------------------------------------------------------

    def tgtadm(self, *args: str, timeout: float = 10.0) -> str:
        """Run tgtadm against this daemon's control socket; return its stdout."""
        env = dict(os.environ, TGT_IPC_SOCKET=str(self.socket_path))
        try:
            r = subprocess.run([TGTADM, *args], env=env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutExpired(f"tgtadm {' '.join(args)} did not answer in {timeout}s")
        if r.returncode != 0:
            raise TgtError(f"tgtadm {' '.join(args)} failed: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def add_target(self, tid: int, iqn: str, backing_file: Path | str,
                   size_bytes: Optional[int] = None, block_size: int = 512,
                   initiators: str = "ALL", lun: int = 1) -> None:
        """Create target ``tid`` named ``iqn`` with a file-backed LUN (1 by default).

        LUN 0 is tgtd's own controller; the disk goes on LUN 1. The file is created (or
        resized) when ``size_bytes`` is given.
        """
        if tid <= 0:
            raise TgtError(f"target id must be > 0, got {tid}")
        if not re.fullmatch(r"[A-Za-z0-9:.\-]+", iqn):
            raise TgtError(f"target name {iqn!r} may contain only letters, digits, ':', '.', '-'")
        path = Path(backing_file)
        if size_bytes is not None:
            if size_bytes <= 0 or size_bytes % block_size:
                raise TgtError(f"LUN size {size_bytes} is not a positive multiple of {block_size}")
            with open(path, "ab") as f:
                f.truncate(size_bytes)
        elif not path.exists():
            raise TgtError(f"backing file {path} does not exist and no size was given")
        self.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", str(tid),
                    "-T", iqn)
        self.tids.append(tid)
        self.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", str(tid),
                    "--lun", str(lun), "-b", str(path.resolve()), f"--blocksize={block_size}")
        self.tgtadm("--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", str(tid),
                    "-I", initiators)

    def add_account(self, tid: int, user: str, password: str, outgoing: bool = False) -> None:
        """Create a CHAP account and bind it to ``tid``.

        Incoming accounts authenticate the initiator; an outgoing one is what the target
        answers with in mutual CHAP.
        """
        self.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "account", "--user", user,
                    "--password", password)
        extra = ["--outgoing"] if outgoing else []
        self.tgtadm("--lld", "iscsi", "--op", "bind", "--mode", "account", "--tid", str(tid),
                    "--user", user, *extra)

    def set_param(self, tid: int, name: str, value: str) -> None:
        """Change a target's iSCSI parameter (HeaderDigest, MaxRecvDataSegmentLength, ...)."""
        self.tgtadm("--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", str(tid),
                    "-n", name, "-v", str(value))

    def show_target(self) -> str:
        return self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target")

    def connections(self, tid: Optional[int] = None) -> list[Connection]:
        """The logged-in connections, parsed from ``tgtadm --op show --mode target``."""
        return [c for c in parse_connections(self.show_target()) if tid is None or c.tid == tid]

    # -- helpers ----------------------------------------------------------------------

    def _live_tids(self) -> list[int]:
        out = self.show_target()
        return [int(m) for m in re.findall(r"^Target (\d+):", out, re.M)]

    def _signal(self, sig: int, wait: float) -> bool:
        """Send ``sig`` to tgtd by pid; True if it exited within ``wait`` seconds."""
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            return True
        try:
            self.proc.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise TgtError(f"tgtd pid {self.proc.pid} did not exit")
        self.proc = None
        self.tids = []
        for leftover in self.workdir.glob("tgtd.sock*"):
            leftover.unlink(missing_ok=True)

    def _log_tail(self, n: int = 400) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip() or "(empty)"
        except OSError:
            return "(no log)"


def _split_portal(portal: str) -> tuple[str, int]:
    host, sep, port = portal.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise TgtError(f"portal {portal!r} is not IP:PORT")
    return host, int(port)


def _listening_port(show_portal: str, ip: str) -> Optional[int]:
    for m in re.finditer(r"Portal:\s*(\S+):(\d+),\d+", show_portal):
        if m.group(1) in (ip, "0.0.0.0", "[::]") and int(m.group(2)):
            return int(m.group(2))
    return None


def parse_connections(show: str) -> list[Connection]:
    """Parse I_T nexus / connection entries from ``tgtadm --op show --mode target``."""
    conns: list[Connection] = []
    tid = sid = cid = None
    initiator = ""
    for line in show.splitlines():
        s = line.strip()
        if m := re.match(r"Target (\d+):", s):
            tid = int(m.group(1))
        elif m := re.match(r"I_T nexus: (\d+)", s):
            sid = int(m.group(1))
        elif m := re.match(r"Initiator: (\S+)", s):
            initiator = m.group(1)
        elif m := re.match(r"Connection: (\d+)", s):
            cid = int(m.group(1))
        elif (m := re.match(r"IP Address: (\S+)", s)) and None not in (tid, sid, cid):
            conns.append(Connection(tid, sid, cid, initiator, m.group(1)))
    return conns
