"""Parallel runs: the same batch with 1, 2 and 3 workers, and each run's own fidelity.

Runs one short load (two downloads that fill the 20 Mbit/s client link, so its achieved
rate is judged, and a throttled writer; gorman-3.6, which completes it) ``--runs`` times
through :class:`testbed.pool.RunPool`, the pool ``testbed compare|sweep|stress --workers``
use, once per worker count. Per count it prints the batch's wall time and runs per
minute, the runs valid and invalid (:mod:`testbed.fidelity`'s judgement of each run,
read back through :mod:`testbed.results`) and, over the runs, the fidelity figures:
the storage client's scheduling lag p99 and max, the bottleneck link's achieved rate
over its configured rate, and the host's CPU pressure (share of the run with some task
waiting for a CPU). Needs root; each count's runs are kept in a folder (printed).

    .venv/bin/python bench/bench_workers.py [--runs 6] [--workers 1,2,3] [--out DIR]
                                            [--scenario contention-gorman-3.6]

``--scenario`` batches a scenario of the project (or a file) instead of the short load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed import results, stats                             # noqa: E402
from testbed import scenario as scenario_mod                   # noqa: E402
from testbed.pool import RunPool, RunSpec, check_workers       # noqa: E402

LOAD = """name: bench-workers
expect: completed
duration_s: 20
deadline_s: 45
topology: {bulk_hosts: 2, client_bw_mbit: 20, bw_mbit: 100}
client:
  memory_mb: 64
  policy: gorman-3.6
  workloads:
    - {kind: writer, total_mb: 8, rate_mbps: 2, files: 1}
    - {kind: downloader, total_mb: 8}
    - {kind: downloader, total_mb: 8}
target: {lun_mb: 64}
bulk: {mode: tcp}
"""


def batch(workers: int, runs: int, sc: scenario_mod.Scenario, base: Path) -> dict[str, Any]:
    """One batch of ``runs`` runs with ``workers`` at once: its wall time and figures."""
    folder = base / f"workers-{workers}"
    specs = [RunSpec(sc, folder / f"run{i + 1}", log=folder / f"run{i + 1}.log")
             for i in range(runs)]
    t0 = time.monotonic()
    with RunPool(workers) as pool:
        done = list(pool.run(specs))
    wall = time.monotonic() - t0
    outcomes = [results.read_run(d.run_dir) for d in done if d.error is None]
    read = [r for r in outcomes if r is not None]
    fid = [(r.summary.get("fidelity") or {}) for r in read]
    lag = [f.get("lag") or {} for f in fid]
    link = [(f.get("link") or {}).get("ratio") for f in fid]
    cpu = [(f.get("cpu_pressure") or {}).get("some_fraction") for f in fid]
    return {"workers": workers, "folder": folder, "wall_s": wall, "runs": runs,
            "errors": [str(d.error) for d in done if d.error is not None],
            "verdicts": [r.verdict for r in read],
            "valid": sum(not r.invalid for r in read), "invalid": sum(r.invalid for r in read),
            "invalid_by": sorted({w for f in fid for w in f.get("invalid_by") or []}),
            "lag_p99": [x["p99_ms"] for x in lag if x.get("p99_ms") is not None],
            "lag_max": [x["max_ms"] for x in lag if x.get("max_ms") is not None],
            "link": [x for x in link if x is not None],
            "cpu": [x for x in cpu if x is not None]}


def spread(values: list[float], fmt: str) -> str:
    """median [min, max] of the runs, or n/a."""
    if not values:
        return "n/a"
    return (f"{stats.quantile(values, 0.5):{fmt}} [{min(values):{fmt}}, "
            f"{max(values):{fmt}}]")


def others_live() -> Optional[str]:
    """Why the machine is not ours alone now (another run, a guest), or None."""
    state = Path("/run/testbed")
    live = sorted(p.stem for p in state.glob("*.json")) if state.is_dir() else []
    qemu = subprocess.run(["pgrep", "-a", "qemu"], capture_output=True, text=True).stdout
    if live or qemu.strip():
        return f"live runs {live or 'none'}; qemu: {qemu.strip() or 'none'}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6, help="runs per batch (default 6)")
    ap.add_argument("--workers", default="1,2,3", help="worker counts (default 1,2,3)")
    ap.add_argument("--scenario", help="a scenario file or built-in name instead of the "
                                       "short load (e.g. contention-gorman-3.6)")
    ap.add_argument("--out", type=Path, help="folder for the batches (default: a new one "
                                             "under /tmp)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_workers: needs root (Mininet, tgtd)", file=sys.stderr)
        return 1
    counts = [check_workers(int(w)) for w in args.workers.split(",")]
    base = args.out or Path(tempfile.mkdtemp(prefix="bench-workers-"))
    base.mkdir(parents=True, exist_ok=True)
    if args.scenario:
        sc, where = scenario_mod.load(args.scenario), args.scenario
    else:
        (base / "load.yaml").write_text(LOAD)
        sc, where = scenario_mod.load(base / "load.yaml"), base / "load.yaml"
    busy = others_live()
    print(f"load: {where}; {args.runs} runs per batch; {os.cpu_count()} CPUs; "
          f"other runs on the machine at the start: {busy or 'none'}")
    print(f"{'workers':>7}  {'wall (s)':>8}  {'runs/min':>8}  {'valid':>5}  {'invalid':>7}  "
          f"{'lag p99 ms, median [min, max]':>30}  {'lag max ms':>18}  "
          f"{'link ratio':>22}  {'CPU pressure (some)':>22}")
    for w in counts:
        b = batch(w, args.runs, sc, base)
        print(f"{w:>7}  {b['wall_s']:8.1f}  {60 * args.runs / b['wall_s']:8.2f}  "
              f"{b['valid']:>5}  {b['invalid']:>7}  {spread(b['lag_p99'], '.0f'):>30}  "
              f"{spread(b['lag_max'], '.0f'):>18}  "
              f"{spread(b['link'], '.3f'):>22}  {spread(b['cpu'], '.2f'):>22}", flush=True)
        if b["invalid_by"]:
            print(f"         invalid by: {'; '.join(b['invalid_by'])}")
        if b["errors"]:
            print(f"         runs without a verdict: {len(b['errors'])}: {b['errors'][0]}")
        odd = [v for v in b["verdicts"] if v != "completed"]
        if odd:
            print(f"         verdicts other than completed: {odd}")
        print(f"         runs: {b['folder']}")
    busy = others_live()
    print(f"other runs on the machine at the end: {busy or 'none'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:         # the runs in flight have torn themselves down
        print("bench_workers: interrupted", file=sys.stderr)
        sys.exit(130)
