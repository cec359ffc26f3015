"""Bring-up and tear-down of the contention topology: Docker backend next to Mininet backend.

For N = 1, 4, 16 bulk hosts (N + 2 containers), each round times, inside a fresh run
(``RunContext``), ``Backend(run).up(params)`` (hosts made, every link built, shaped,
read back and verified) and the run's teardown, first with :class:`DockerBackend`,
then with :class:`MininetBackend`, so both see the same machine state. The median of
the rounds is printed, with the Docker/Mininet ratio of the totals.

dockerd is started if it is not running (``scripts/docker-up.sh``) and stopped again
if so; the node image is built if needed (``docker/build-images.sh``). Run as root:
``.venv/bin/python bench/bench_docker.py [--rounds 3] [--sizes 1,4,16]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.backends.base import ContentionParams  # noqa: E402
from testbed.backends.docker import DockerBackend  # noqa: E402
from testbed.backends.mininet import MininetBackend  # noqa: E402
from testbed.runctx import RunContext  # noqa: E402

BW_CLIENT, BW = 10, 100


def one_round(backend: type, n: int, base: str) -> tuple[float, float]:
    """(bring-up seconds, teardown seconds) of one run with ``backend``."""
    run = RunContext.create(base_dir=base, name=f"bench-{backend.name}{n}")
    with run:
        t0 = time.perf_counter()
        backend(run).up(ContentionParams(n=n, bw_client=BW_CLIENT, bw=BW))
        t1 = time.perf_counter()
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1,4,16")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_docker: needs root", file=sys.stderr)
        return 1
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as base:
        pidfile = Path(base) / "dockerd.pid"
        subprocess.run([str(ROOT / "scripts/docker-up.sh"), str(pidfile)], check=True, env=env)
        try:
            subprocess.run([str(ROOT / "docker/build-images.sh")], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            report(args, base)
        finally:
            subprocess.run([str(ROOT / "scripts/docker-down.sh"), str(pidfile)], env=env)
    return 0


def report(args: argparse.Namespace, base: str) -> None:
    print(f"bench_docker: up and down of the contention topology, N bulk hosts, median of "
          f"{args.rounds} rounds (seconds)")
    print(f"{'N':>3} {'docker up':>10} {'down':>7} {'total':>7} | {'mininet up':>11} "
          f"{'down':>7} {'total':>7} | docker/mininet")
    for n in map(int, args.sizes.split(",")):
        dk, mn = [], []
        for _ in range(args.rounds):
            dk.append(one_round(DockerBackend, n, base))
            mn.append(one_round(MininetBackend, n, base))
        dk_up, dk_down = (statistics.median(x) for x in zip(*dk))
        mn_up, mn_down = (statistics.median(x) for x in zip(*mn))
        print(f"{n:>3} {dk_up:>10.2f} {dk_down:>7.2f} {dk_up + dk_down:>7.2f} | "
              f"{mn_up:>11.2f} {mn_down:>7.2f} {mn_up + mn_down:>7.2f} | "
              f"{(dk_up + dk_down) / (mn_up + mn_down):6.1f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
