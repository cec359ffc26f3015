"""Run overhead: what a run costs beyond the workload, for 1, 4 and 16 bulk hosts.

Runs a tiny scenario (a 2 MiB write, bulk sources idle) through the orchestrator, the
same path as `testbed run`, and prints each step's time from summary.json (bring-up,
starting the nodes, the run itself, the read-back, stopping the nodes, the report) plus
the tear-down after it. Overhead = everything but the run step. Needs root.

    .venv/bin/python bench/bench_run.py [--rounds 3] [--sizes 1,4,16]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed import scenario as scenario_mod                  # noqa: E402
from testbed.orchestrator import Orchestrator, Progress         # noqa: E402

TINY = """name: bench-overhead
duration_s: 20
deadline_s: 40
topology: {{bulk_hosts: {n}, client_bw_mbit: 100, bw_mbit: 100}}
client:
  memory_mb: 32
  workloads: [{{kind: writer, total_mb: 2, rate_mbps: 0}}]
target: {{lun_mb: 16}}
"""

STEPS = ("bring_up", "start_nodes", "run", "verify", "stop_nodes", "report")


def one(n: int, base: Path) -> dict[str, float]:
    path = base / f"tiny-{n}.yaml"
    path.write_text(TINY.format(n=n))
    sc = scenario_mod.load(path)
    t0 = time.monotonic()
    res = Orchestrator(sc, out_dir=base / f"run-{n}-{time.monotonic_ns()}",
                       progress=Progress(io.StringIO())).run()
    total = time.monotonic() - t0
    if res.summary["verdict"] != "completed":
        raise SystemExit(f"bench: the tiny run with {n} bulk hosts did not complete: "
                         f"{res.summary.get('detail')}")
    t = dict(res.summary["timings"])
    t["teardown"] = total - sum(t.values())
    t["total"] = total
    t["overhead"] = total - t["run"]
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1,4,16")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_run: needs root", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.sizes.split(",")]
    cols = (*STEPS, "teardown", "overhead", "total")
    print(f"run overhead, median of {args.rounds} rounds (seconds)")
    print("bulk hosts  " + "  ".join(f"{c:>11}" for c in cols))
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        results: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
        for _ in range(args.rounds):
            for n in sizes:               # interleaved, so machine noise spreads evenly
                results[n].append(one(n, Path(tmp)))
        for n in sizes:
            med = {c: statistics.median(r[c] for r in results[n]) for c in cols}
            print(f"{n:>10}  " + "  ".join(f"{med[c]:>11.2f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
