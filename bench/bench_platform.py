"""Bring-up + tear-down of the contention topology: the testbed vs plain Mininet calls.

For N = 1, 4, 16 bulk hosts, each round times (a) the testbed: RunContext.create,
MininetBackend.up (namespaced bridge, every link shaped, tagged, read back and
verified) and the run's teardown; and (b) plain Mininet for the same Topo:
``Mininet(topo, switch=LinuxBridge, link=TCLink, controller=None)``, ``start()``,
``stop()``. The two alternate, so they see the same machine state; the median of
the rounds is printed with the ratio. Goals: ratio <= 1.2, testbed N=16 under 10 s.

Run as root: ``.venv/bin/python bench/bench_platform.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mininet.link import TCLink  # noqa: E402
from mininet.log import setLogLevel  # noqa: E402
from mininet.net import Mininet  # noqa: E402
from mininet.nodelib import LinuxBridge  # noqa: E402

from testbed.backends.base import ContentionParams  # noqa: E402
from testbed.backends.mininet import MininetBackend  # noqa: E402
from testbed.runctx import RunContext  # noqa: E402

BW_CLIENT, BW = 10, 100


def testbed_round(n: int, base: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    run = RunContext.create(base_dir=base, name=f"bench{n}")
    with run:
        MininetBackend(run).up(ContentionParams(n=n, bw_client=BW_CLIENT, bw=BW))
        t1 = time.perf_counter()
    return t1 - t0, time.perf_counter() - t1


def plain_round(n: int) -> tuple[float, float]:
    topo = ContentionParams(n=n, bw_client=BW_CLIENT, bw=BW).topo()
    setLogLevel("critical")   # TCLink prints htb quantum warnings as errors
    t0 = time.perf_counter()
    net = Mininet(topo=topo, switch=LinuxBridge, link=TCLink, controller=None,
                  waitConnected=False)
    net.start()
    t1 = time.perf_counter()
    net.stop()
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="1,4,16")
    args = ap.parse_args()
    print(f"bench_platform: up+down of the contention topology, median of {args.rounds} "
          f"rounds (seconds)")
    print(f"{'N':>3} {'testbed up':>11} {'down':>7} {'total':>7} | {'mininet up':>11} "
          f"{'down':>7} {'total':>7} | ratio")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as base:
        for n in map(int, args.sizes.split(",")):
            tb, mn = [], []
            for _ in range(args.rounds):
                tb.append(testbed_round(n, base))
                mn.append(plain_round(n))
            tb_up, tb_down = (statistics.median(x) for x in zip(*tb))
            mn_up, mn_down = (statistics.median(x) for x in zip(*mn))
            ratio = (tb_up + tb_down) / (mn_up + mn_down)
            worst = max(worst, ratio)
            print(f"{n:>3} {tb_up:>11.3f} {tb_down:>7.3f} {tb_up + tb_down:>7.3f} | "
                  f"{mn_up:>11.3f} {mn_down:>7.3f} {mn_up + mn_down:>7.3f} | {ratio:5.2f}x")
    print(f"worst ratio {worst:.2f}x (goal <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
