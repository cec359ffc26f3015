"""The soak: the contention load under gorman-3.6 again and again, a random fault in each run.

The last part of issue 15's reliability campaign. Each run is the built-in contention
scenario (``scenarios/contention.yaml``) under ``gorman-3.6`` with one fault drawn at
random (:func:`draw_fault`: kind, time and length, from a seeded generator), written as
a small scenario that extends it, and run with ``testbed run`` as a user would. After
each run the read-back's figures are taken from the run folder (``integrity.json``,
through :mod:`testbed.results`' reader): bytes and pages checked against what the
target acknowledged (with a ``client_restart``, against the write journal kept outside
the client), and mismatches. The soak stops starting runs when its time is up.

A fault stalls writeback for a while (a pulled cable, a target restarting), which is
not a lockup, so each run waits 15 s before it opens a stall episode, as the built-in
fault scenarios do; the verdict is reported but what the soak checks is the data.

Usage (root, Mininet and tgtd): ``python -m tests.support.soak [--minutes 30] [--seed 1]
[--out DIR]`` (``make soak``). One line per run, then the totals; ``soak.json`` in the
out folder keeps them. Exits 1 if any page mismatched or a run left no read-back.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from testbed.results import read_json

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "scenarios" / "contention.yaml"
RUN_TIMEOUT_S = 300          # a run ends by its deadline (100 s) and its teardown
KINDS = ("target_restart", "target_pause", "link_down", "bulk_crash", "loss_burst",
         "client_restart")


def draw_fault(rng: random.Random) -> dict[str, Any]:
    """One fault of a random kind, in the middle of the load (8-25 s in)."""
    kind = rng.choice(KINDS)
    f: dict[str, Any] = {"kind": kind, "at_s": round(rng.uniform(8, 25), 1)}
    if kind in ("target_restart", "client_restart"):
        f["pause_s"] = round(rng.uniform(0.5, 3), 1)
    elif kind == "target_pause":
        f["for_s"] = round(rng.uniform(1, 5), 1)
    elif kind == "link_down":
        f.update(host="client", for_s=round(rng.uniform(1, 4), 1))
    elif kind == "bulk_crash":
        f["host"] = f"bulk{rng.randint(1, 3)}"
    else:
        f.update(host="client", for_s=round(rng.uniform(2, 6), 1),
                 loss_pct=round(rng.uniform(5, 30), 1))
    return f


def scenario(fault: dict[str, Any], index: int) -> dict[str, Any]:
    """The soak scenario of one run: the contention load, gorman-3.6, one fault."""
    return {"extends": str(BASE), "name": f"soak-{index}",
            "description": f"contention under gorman-3.6 with {fault['kind']}",
            "deadline_s": 100, "bounds": {"max_stall_s": 15},
            "client": {"policy": "gorman-3.6", "lockup_after_s": 15},
            "faults": [fault]}


@dataclass
class RunResult:
    index: int
    fault: dict[str, Any]
    verdict: str
    bytes_checked: int
    pages_checked: int
    mismatches: int
    seconds: float
    folder: str
    problem: Optional[str] = None


@dataclass
class Totals:
    runs: int = 0
    bytes_checked: int = 0
    pages_checked: int = 0
    mismatches: int = 0
    unchecked: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)

    def add(self, r: RunResult) -> None:
        self.runs += 1
        self.bytes_checked += r.bytes_checked
        self.pages_checked += r.pages_checked
        self.mismatches += r.mismatches
        self.unchecked += r.problem is not None
        self.verdicts[r.verdict] = self.verdicts.get(r.verdict, 0) + 1
        self.faults[r.fault["kind"]] = self.faults.get(r.fault["kind"], 0) + 1


def run_one(index: int, fault: dict[str, Any], out: Path) -> RunResult:
    """Write the run's scenario, run it with ``testbed run``, read its read-back."""
    spec = out / f"soak-{index}.yaml"
    spec.write_text(yaml.safe_dump(scenario(fault, index), sort_keys=False))
    folder = out / f"run-{index}"
    t0 = time.monotonic()
    problem = None
    try:
        p = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(spec), "--out", str(folder)],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT,
                           stdin=subprocess.DEVNULL)
        if p.returncode not in (0, 1):          # 1: a verdict other than the expected one
            problem = f"testbed run exited {p.returncode}: {p.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        problem = f"testbed run did not end in {RUN_TIMEOUT_S} s"
    seconds = time.monotonic() - t0
    summary = read_json(folder / "summary.json") or {}
    integrity = read_json(folder / "integrity.json")
    if integrity is None and problem is None:
        problem = "no integrity.json: nothing was read back"
    integrity = integrity or {}
    return RunResult(index, fault, str(summary.get("verdict", "none")),
                     int(integrity.get("bytes_checked", 0)), int(integrity.get("pages_checked", 0)),
                     int(integrity.get("mismatches", 0)), round(seconds, 1), str(folder), problem)


def describe(f: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in f.items())


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="stop starting runs after this long")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault draws")
    ap.add_argument("--out", type=Path, default=None, help="folder (default runs/soak-<time>)")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error(f"--minutes {args.minutes}: must be > 0")
    out = args.out or ROOT / "runs" / time.strftime("soak-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        ap.error(f"--out {out}: exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    end = time.monotonic() + args.minutes * 60
    totals, results = Totals(), []
    print(f"soak: contention under gorman-3.6, one random fault per run, {args.minutes:g} min, "
          f"seed {args.seed} -> {out}", flush=True)
    index = 0
    try:
        while time.monotonic() < end:
            index += 1
            fault = draw_fault(rng)
            r = run_one(index, fault, out)
            results.append(r)
            totals.add(r)
            print(f"  {index:3d} {describe(fault):60s} {r.verdict:10s} checked "
                  f"{r.bytes_checked / 2**20:6.1f} MiB  mismatches {r.mismatches}  {r.seconds:5.1f}s"
                  + (f"  PROBLEM: {r.problem}" if r.problem else ""), flush=True)
    except KeyboardInterrupt:
        print("soak: interrupted; the totals of the runs that ended:", flush=True)
    (out / "soak.json").write_text(json.dumps({"seed": args.seed, "minutes": args.minutes,
                                               "totals": asdict(totals),
                                               "runs": [asdict(r) for r in results]}, indent=1))
    print(f"soak: {totals.runs} runs, {totals.bytes_checked / 2**20:.1f} MiB "
          f"({totals.pages_checked} pages) checked, {totals.mismatches} mismatches, "
          f"{totals.unchecked} runs without a read-back; verdicts {totals.verdicts}; "
          f"faults {totals.faults}", flush=True)
    return 1 if totals.mismatches or totals.unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
