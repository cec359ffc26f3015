"""The scaling series' cost: a run's wall time against the machine's memory (issue 17).

Runs ``testbed sweep SCENARIO --series SERIES --param client.policy=...`` (the command
itself, in this process) over the sizes asked for, or reads a sweep folder such a
command made (``--from``), and prints one row per run, read through
:mod:`testbed.results`: the size, policy, verdict, time to the verdict, the run's wall
time and its steps (the run itself, and the read-back of every acknowledged page, which
grows with what was written), its validity, and the fidelity figures that judge it (the
client link's achieved rate over its configured one, the client's wake-up lag, the
host's CPU pressure). The last column is the wall time over the smallest size's, for
the same policy: how the cost grows as memory, link and loads grow together.

The defaults (the two smallest sizes, gorman-3.6) took 73 s on the project's 2-core
machine; the whole series under ``none`` and ``gorman-3.6`` 8 min 19 s (docs/measurements.md,
"Gigabit and the scaling series"). Needs root (a real sweep) unless ``--from``.

    .venv/bin/python bench/bench_scale.py [--sizes 32,64] [--policies gorman-3.6]
                                          [--series scenarios/series/scale.yaml]
                                          [--scenario contention] [--out DIR]
    .venv/bin/python bench/bench_scale.py --from runs/<sweep folder>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed import results, series                            # noqa: E402
from testbed.cli import main as testbed_main                     # noqa: E402
from testbed.errors import TestbedError                          # noqa: E402
from testbed.scenario import SCENARIO_DIR                        # noqa: E402

SCALE = SCENARIO_DIR / "series" / "scale.yaml"


def subset(path: Path, sizes: list[str], out: Path) -> Path:
    """A series file of ``path``'s points whose knob is one of ``sizes`` (same keys and
    values, read and checked by :func:`testbed.series.read`)."""
    try:
        s = series.read(path)
    except TestbedError as exc:
        raise SystemExit(f"bench_scale: {exc}")
    keys = list(s.points[0].load)
    rows = [list(p.load.values()) for p in s.points if str(p.value) in sizes]
    missing = set(sizes) - {str(p.value) for p in s.points}
    if missing:
        raise SystemExit(f"bench_scale: {path} has no point {', '.join(sorted(missing))} "
                         f"(it has {', '.join(str(p.value) for p in s.points)})")
    out.write_text(yaml.safe_dump({"description": f"{path.name}: {', '.join(sizes)}",
                                   "keys": keys, "points": rows}, sort_keys=False))
    return out


def figure(run: results.RunOutcome, *path: str, fmt: str = ".2f") -> str:
    got = run.fidelity_figure(*path)
    return "-" if got is None else f"{got:{fmt}}"


def rows(batch: results.Batch) -> list[list[str]]:
    runs = batch.runs()
    knob = batch.param_keys[0]
    first: dict[str, float] = {}
    out = []
    for r in runs:
        wall = r.duration_s
        t = r.timings
        base = first.setdefault(r.policy, wall) if wall else None
        out.append([r.params.get(knob, "-"), r.policy, str(r.verdict),
                    f"{r.time_s:.1f}" if r.time_s else "-",
                    f"{wall:.1f}" if wall else "-",
                    f"{t['run']:.1f}" if "run" in t else "-",
                    f"{t['verify']:.1f}" if "verify" in t else "-",
                    r.validity or "-",
                    figure(r, "link", "ratio"), figure(r, "lag", "p99_ms", fmt=".0f"),
                    figure(r, "lag", "max_ms", fmt=".0f"),
                    figure(r, "cpu_pressure", "some_fraction"),
                    f"{wall / base:.2f}" if wall and base else "-"])
    return out


HEADER = ["size", "policy", "verdict", "to verdict s", "wall s", "run s", "verify s",
          "validity", "link ratio", "lag p99 ms", "lag max ms", "CPU some", "wall / first"]


def show(folder: Path) -> None:
    batch = results.open_batch(folder)
    if not batch.is_sweep:
        raise SystemExit(f"bench_scale: {folder} is not a sweep folder")
    table = [HEADER] + rows(batch)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    print(f"== bench_scale: {batch.title} ({folder})")
    for r in table:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    for r in batch.runs():
        for reason in (r.summary.get("fidelity") or {}).get("invalid_by") or []:
            print(f"  {r.label}: invalid: {reason}")


def run_sweep(args: argparse.Namespace) -> Optional[Path]:
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-scale-")) / "sweep"
    with tempfile.TemporaryDirectory(prefix="bench-scale-series-") as tmp:
        part = subset(args.series, [s.strip() for s in args.sizes.split(",") if s.strip()],
                      Path(tmp) / "series.yaml")
        argv: list[Any] = ["sweep", args.scenario, "--series", str(part), "--param",
                           f"client.policy={args.policies}", "--out", str(out)]
        print(f"bench_scale: testbed {' '.join(argv)}", flush=True)
        status = testbed_main(argv)
    if not results.is_batch(out):
        print(f"bench_scale: the sweep made no folder (exit {status})", file=sys.stderr)
        return None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="folder", type=Path, help="a sweep folder to read, no runs")
    ap.add_argument("--sizes", default="32,64", help="the series' knob values (default 32,64)")
    ap.add_argument("--policies", default="gorman-3.6", help="comma-separated (default gorman-3.6)")
    ap.add_argument("--series", type=Path, default=SCALE, help=f"default {SCALE}")
    ap.add_argument("--scenario", default="contention", help="default contention")
    ap.add_argument("--out", type=Path, help="the sweep's folder (default: new, under /tmp)")
    args = ap.parse_args()
    folder = args.folder
    if folder is None:
        if os.geteuid() != 0:
            print("bench_scale: a sweep needs root (or give --from a sweep folder)",
                  file=sys.stderr)
            return 2
        folder = run_sweep(args)
        if folder is None:
            return 1
    try:
        show(folder)
    except TestbedError as exc:
        print(f"bench_scale: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
