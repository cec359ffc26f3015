"""The iSCSI target node: tgtd serving one file-backed LUN, supervised and measured.

Runs inside the target host (``host.popen([python, "-m", "nodes.iscsi_target", ...])``)::

    python -m nodes.iscsi_target --portal 10.0.0.2:3260 --iqn iqn.2026-11.org.testbed:lun \\
        --backing-file lun.img --size-mb 64 [--block-size 512] \\
        [--chap-user U --chap-secret S] [--mutual-user U --mutual-secret S] \\
        [--stats stats.ndjson] [--interval 1.0] [--workdir DIR]

It starts tgtd through :class:`testbed.tgt.TgtDaemon` with its own control socket,
creates target 1 with the file on LUN 1 (LUN 0 is tgtd's controller), binds it to
every initiator, adds the CHAP accounts (incoming; ``--mutual-*`` is the outgoing
account of mutual CHAP). NDJSON lines go to ``--stats``: ``{"t": 0.0, "event":
"ready", ...}`` once logins are accepted (the readiness signal :mod:`testbed.launch`
waits for), then every ``--interval`` seconds the counters (connections, sessions, tgtd
CPU seconds and RSS, the backing file's size and allocated bytes), and a last
``"stop"`` line.

SIGTERM or SIGINT shuts tgtd down through tgtadm (it ignores SIGTERM while it has
targets) and exits 0. A configuration error prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Optional

from testbed.errors import TestbedError
from testbed.tgt import TgtDaemon

TID = 1
LUN = 1
SUN_PATH_MAX = 107         # bytes of a unix socket path (sun_path less the NUL)


class Stats:
    """NDJSON lines with the time since start (``t``) and an ``event`` name."""

    def __init__(self, path: Optional[str]):
        self.start = time.monotonic()
        self.file: Optional[IO[str]] = open(path, "a", buffering=1) if path else None

    def write(self, event: str, **fields: object) -> None:
        if self.file:
            line = {"t": round(time.monotonic() - self.start, 3), "event": event, **fields}
            self.file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        if self.file:
            self.file.close()


class StopFlag:
    """Set by SIGTERM/SIGINT; the main loop polls it."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a stop was asked for."""
        deadline = time.monotonic() + seconds
        while self.signal is None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.signal is not None


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nodes.iscsi_target",
                                description="Serve a file-backed LUN with tgtd and report it.")
    p.add_argument("--portal", required=True, help="IP:PORT to listen on")
    p.add_argument("--iqn", required=True, help="target name")
    p.add_argument("--backing-file", required=True, help="file behind LUN 1")
    p.add_argument("--size-mb", type=int, required=True, help="LUN size in MiB")
    p.add_argument("--block-size", type=int, default=512, choices=(512, 1024, 2048, 4096))
    p.add_argument("--chap-user")
    p.add_argument("--chap-secret")
    p.add_argument("--mutual-user")
    p.add_argument("--mutual-secret")
    p.add_argument("--stats", help="NDJSON file for state and counters")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between counters")
    p.add_argument("--workdir", help="folder for tgtd's socket and log (default, or if the "
                                     "path is too long for a unix socket: a temp dir)")
    args = p.parse_args(argv)
    if args.size_mb <= 0:
        p.error(f"--size-mb must be positive, got {args.size_mb}")
    if args.interval <= 0:
        p.error(f"--interval must be positive, got {args.interval}")
    for kind in ("chap", "mutual"):
        user, secret = getattr(args, f"{kind}_user"), getattr(args, f"{kind}_secret")
        if bool(user) != bool(secret):
            p.error(f"--{kind}-user and --{kind}-secret go together")
    if args.mutual_user and not args.chap_user:
        p.error("--mutual-user needs --chap-user (mutual CHAP is on top of incoming CHAP)")
    return args


def counters(daemon: TgtDaemon, backing: Path) -> dict[str, object]:
    """What tgtadm and /proc say about the target now."""
    conns = daemon.connections(TID)
    out: dict[str, object] = {
        "connections": len(conns),
        "sessions": len({c.sid for c in conns}),
        "initiators": sorted({c.ip for c in conns}),
    }
    out.update(_proc_figures(daemon.pid))
    st = backing.stat()
    out["backing_file_bytes"] = st.st_size
    out["backing_file_allocated"] = st.st_blocks * 512
    return out


def _proc_figures(pid: Optional[int]) -> dict[str, object]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return {"tgtd_cpu_s": None, "tgtd_rss_kb": None}
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = next((int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")), None)
    return {"tgtd_cpu_s": round((int(fields[11]) + int(fields[12])) / ticks, 2),
            "tgtd_rss_kb": rss}


def daemon_workdir(requested: Optional[str]) -> tuple[Path, bool]:
    """tgtd's folder and whether it is ours to remove.

    tgtd's control socket is a unix socket, whose path may not exceed 107 bytes: a
    longer ``--workdir`` (deep run folders) is replaced by a short temporary folder,
    in the run's scratch folder when there is one (see testbed.runctx).
    """
    if requested and len(str(Path(requested).resolve() / "tgtd.sock.0.lock")) <= SUN_PATH_MAX:
        Path(requested).mkdir(parents=True, exist_ok=True)
        return Path(requested), False
    scratch = Path("/run/testbed") / os.environ.get("TESTBED_RUN", "-")
    return Path(tempfile.mkdtemp(prefix="tgtd-", dir=scratch if scratch.is_dir() else None)), True


def serve(args: argparse.Namespace, stop: StopFlag, stats: Stats) -> None:
    workdir, temporary = daemon_workdir(args.workdir)
    backing = Path(args.backing_file).resolve()
    daemon = TgtDaemon(workdir, portal=args.portal)
    try:
        daemon.start(timeout=10)
        size = args.size_mb * 1024 * 1024
        daemon.add_target(tid=TID, iqn=args.iqn, backing_file=backing, size_bytes=size,
                          block_size=args.block_size, initiators="ALL")
        if args.chap_user:
            daemon.add_account(TID, args.chap_user, args.chap_secret, outgoing=False)
        if args.mutual_user:
            daemon.add_account(TID, args.mutual_user, args.mutual_secret, outgoing=True)
        stats.write("ready", portal=daemon.portal, iqn=args.iqn, lun=LUN, tgtd_pid=daemon.pid,
                    tgtd_workdir=str(workdir),
                    size_bytes=size, block_size=args.block_size,
                    chap=bool(args.chap_user), mutual_chap=bool(args.mutual_user))
        while not stop.sleep(args.interval):
            stats.write("stats", **counters(daemon, backing))
    finally:
        daemon.stop(timeout=10)
        if temporary:
            _remove_tree(workdir)
    stats.write("stop", signal=stop.signal)


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink(missing_ok=True)
    path.rmdir()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    stop = StopFlag()
    stats = Stats(args.stats)
    try:
        serve(args, stop, stats)
    except TestbedError as exc:
        stats.write("error", message=str(exc))
        print(f"iscsi_target: error: {exc}", file=sys.stderr)
        return 1
    finally:
        stats.close()
    return 0
