"""Benchmark: the project's initiator against libiscsi's iscsi-perf, same tgtd, same LUN.

One tgtd on 127.0.0.1 (a free port) serves a 256 MiB LUN kept in /dev/shm (so
the disk is not what is measured). In one run, side by side, each load keeps 32
commands in flight for ``--seconds``:

* sequential reads of 64 KiB: iscsi-perf, then this initiator;
* sequential reads of 4 KiB: iscsi-perf, then this initiator;
* sequential writes of 64 KiB: this initiator (iscsi-perf only reads).

It prints every figure and the ratio of ours to iscsi-perf's. Goals: at least 1/2
of iscsi-perf at 64 KiB and 1/4 at 4 KiB. Run: ``.venv/bin/python bench/bench_iscsi.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.iscsi.perf import PerfResult, run_load          # noqa: E402
from testbed.iscsi.session import Session, SessionConfig     # noqa: E402
from testbed.runctx import RunContext                         # noqa: E402
from testbed.tgt import TgtDaemon                            # noqa: E402

IQN = "iqn.2026-11.org.testbed:bench"
LUN_BYTES = 256 << 20
QD = 32


def iscsi_perf(port: int, size: int, seconds: float) -> tuple[float, float]:
    """Run iscsi-perf for ``seconds``; return its average (IOPS, MB/s)."""
    url = f"iscsi://127.0.0.1:{port}/{IQN}/1"
    proc = subprocess.Popen(["iscsi-perf", "-m", str(QD), "-b", str(size // 512), url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(seconds + 0.5)                 # it prints a line per second
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    found = re.findall(r"iops average (\d+) \((\d+) MB/s\)", out)
    if not found:
        raise RuntimeError(f"iscsi-perf printed no figures: {out[-400:]}")
    iops, mbs = found[-1]
    return float(iops), float(mbs)


def ours(port: int, size: int, seconds: float, rw: str) -> PerfResult:
    cfg = SessionConfig(login_timeout=5, command_timeout=30)
    with Session(("127.0.0.1", port), IQN, cfg) as s:
        s.test_unit_ready(1)
        cap = s.read_capacity(1)
        return run_load(s, 1, size, QD, seconds, rw, cap.bytes, cap.block_size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if not shutil.which("iscsi-perf"):
        print("bench_iscsi: iscsi-perf not found (Debian package libiscsi-bin)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="tb-bench-iscsi-"))
    try:
        # a registered run: tgtd and iscsi-perf carry its tag, and `testbed clean`
        # (which ends tagged processes of dead runs) knows this one is alive
        with RunContext.create(base_dir=work, name="bench-iscsi") as run:
            return bench(work, run, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, run: RunContext, seconds: float) -> int:
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else work
    lun = Path(tempfile.mkstemp(prefix="tb-bench-iscsi-", suffix=".img", dir=shm)[1])
    daemon = TgtDaemon(run.scratch / "tgtd", portal="127.0.0.1:0")
    try:
        daemon.start(timeout=10)
        daemon.add_target(tid=1, iqn=IQN, backing_file=lun, size_bytes=LUN_BYTES)
        daemon.set_param(1, "MaxRecvDataSegmentLength", "262144")
        with open(lun, "r+b") as f:                # real data, not a sparse hole
            for _ in range(LUN_BYTES // (8 << 20)):
                f.write(os.urandom(8 << 20))
        print(f"tgtd pid {daemon.pid} on 127.0.0.1:{daemon.port}, LUN {LUN_BYTES >> 20} MiB "
              f"in {shm}, queue depth {QD}, {seconds:g} s per run")
        print(f"{'load':<16}{'iscsi-perf':>24}{'testbed initiator':>28}{'ratio':>8}  goal", flush=True)
        ok = True
        for size, goal in ((65536, 0.5), (4096, 0.25)):
            ref_iops, ref_mbs = iscsi_perf(daemon.port, size, seconds)
            mine = ours(daemon.port, size, seconds, "read")
            ratio = mine.iops / ref_iops if ref_iops else 0.0
            ok &= not mine.errors                 # a missed goal is reported, not fatal
            print(f"read {size // 1024:>3} KiB     {ref_iops:>9.0f} IOPS {ref_mbs:>6.0f} MB/s"
                  f"{mine.iops:>12.0f} IOPS {mine.mb_per_s:>7.0f} MB/s{ratio:>8.2f}  "
                  f">= {goal:g} {'met' if ratio >= goal else 'MISSED'}")
        mine = ours(daemon.port, 65536, seconds, "write")
        print(f"write 64 KiB    {'(iscsi-perf only reads)':>24}{mine.iops:>12.0f} IOPS "
              f"{mine.mb_per_s:>7.0f} MB/s")
        ok &= not mine.errors
        return 0 if ok else 1
    finally:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            print(f"tgtd exited early with {daemon.proc.returncode}: {daemon._log_tail()}",
                  file=sys.stderr)
        daemon.stop()
        lun.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
