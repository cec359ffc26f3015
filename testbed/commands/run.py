"""``testbed run | compare | sweep | report``: scenarios end to end, and their reports.

- ``run SCENARIO``: one run; exit status 0 when the verdict is the expected one.
- ``compare SCENARIO --policies a,b``: the same load under each policy, one table and
  one report (exit 0 when every run reached its expected verdict).
- ``sweep SCENARIO --param key=v1,v2 [--param key2=w1,w2]``: a grid of runs over one or
  two parameters, with a plot of the outcome.
- ``report DIR``: rebuild the report of a run folder, or of a compare/sweep folder.

A scenario is loaded and checked completely before anything starts: a mistake in it
is reported with file, line and key, and nothing is created.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .. import scenario as scenario_mod
from ..errors import ConfigError, EnvironmentProblem
from ..orchestrator import Orchestrator, RunResult
from ..report import build_compare_report, build_report, table_rows
from ..report.summary import evidence
from ..scenario import Scenario

INDEX = "runs.json"     # a compare/sweep folder's list of runs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a scenario end to end and give its verdict")
    p.add_argument("scenario", help="scenario file, or a built-in name (e.g. contention-none)")
    _common(p)
    p.add_argument("--out", type=Path, help="run folder (default: runs/<time>-<name>-<id>)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="the same load under several policies, side by side")
    p.add_argument("scenario")
    p.add_argument("--policies", required=True, help="comma-separated, e.g. none,gorman-3.6")
    p.add_argument("--repeat", type=int, default=1, help="runs per policy (default 1)")
    _common(p)
    p.add_argument("--out", type=Path, help="folder for the runs and the combined report")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="a grid of runs over one or two parameters")
    p.add_argument("scenario")
    p.add_argument("--param", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a scenario key and its values (once or twice)")
    _common(p)
    p.add_argument("--out", type=Path, help="folder for the runs and the sweep report")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="rebuild the report of a run, compare or sweep folder")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set client.policy=none (repeatable)")
    p.add_argument("--backend", choices=("mininet", "docker"),
                   help="where the nodes run (default: the scenario's backend, mininet)")


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set options, with --backend as one more (it is the scenario key `backend`)."""
    return args.overrides + ([f"backend={args.backend}"] if args.backend else [])


def _require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("a run needs root (network namespaces, tc, tgtd): "
                                 "run it with sudo, or see `testbed doctor`")


def _print_result(res: RunResult) -> None:
    s = res.summary
    print(f"verdict: {s.get('verdict')} (expected {s['expected']})")
    for line in evidence(s):
        print(f"  {line}")
    print(f"report: {res.run_dir / 'report.html'}")


# -- run -----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    sc = scenario_mod.load(args.scenario, _overrides(args))
    _require_root()
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"--out {args.out}: folder exists and is not empty")
    res = Orchestrator(sc, out_dir=args.out).run()
    _print_result(res)
    return 0 if res.ok else 1


# -- compare and sweep ---------------------------------------------------------------------

def _batch_dir(out: Optional[Path], kind: str, name: str) -> Path:
    d = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run_batch(base: Path, jobs: list[tuple[str, Scenario]], title: str) -> tuple[int, Path]:
    """Run each (label, scenario) in turn into ``base``; then the combined report."""
    index: list[dict[str, Any]] = []
    ok = True
    for i, (label, sc) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {label}", flush=True)
        res = Orchestrator(sc, out_dir=base / _slug(label)).run()
        _print_result(res)
        ok &= res.ok
        index.append({"label": label, "dir": res.run_dir.name, "params": _params_of(label)})
        (base / INDEX).write_text(json.dumps({"title": title, "runs": index}, indent=2))
    report = build_compare_report(base, [base / r["dir"] for r in index],
                                  [r["label"] for r in index], title)
    return (0 if ok else 1), report


def _print_table(base: Path) -> None:
    summaries = json.loads((base / "summaries.json").read_text())
    header, rows = table_rows(summaries)
    strip = lambda c: c.replace("<b class='", "").split("'>")[-1].replace("</b>", "")  # noqa: E731
    rows = [[strip(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def cmd_compare(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policies: give at least one policy")
    if args.repeat < 1:
        raise ConfigError(f"--repeat: must be at least 1, got {args.repeat}")
    jobs = []
    for p in policies:   # load every variant first: a mistake starts nothing
        sc = scenario_mod.load(args.scenario, _overrides(args) + [f"client.policy={p}"])
        for k in range(args.repeat):
            jobs.append((p if args.repeat == 1 else f"{p}#{k + 1}", sc))
    _require_root()
    base = _batch_dir(args.out, "compare", jobs[0][1].name)
    status, report = _run_batch(base, jobs, f"{jobs[0][1].name}: policies compared")
    _print_table(base)
    print(f"report: {report}")
    return status


def _parse_param(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not vals:
        raise ConfigError(f"--param {text!r}: expected KEY=V1,V2,... e.g. topology.bulk_hosts=1,2,4")
    return key, vals


def cmd_sweep(args: argparse.Namespace) -> int:
    if len(args.param) > 2:
        raise ConfigError("--param: a sweep takes one or two parameters")
    params = [_parse_param(p) for p in args.param]
    jobs = []
    for combo in itertools.product(*(vals for _, vals in params)):
        sets = [f"{k}={v}" for (k, _), v in zip(params, combo)]
        sc = scenario_mod.load(args.scenario, _overrides(args) + sets)
        jobs.append((" ".join(sets), sc))
    _require_root()
    base = _batch_dir(args.out, "sweep", jobs[0][1].name)
    status, report = _run_batch(base, jobs, f"{jobs[0][1].name}: sweep over "
                                            f"{' x '.join(k for k, _ in params)}")
    from ..report.plots import sweep_plot
    summaries = json.loads((base / "summaries.json").read_text())
    sweep_plot(summaries, [k for k, _ in params], base / "sweep.png")
    index = json.loads((base / INDEX).read_text())
    report = build_compare_report(base, [base / r["dir"] for r in index["runs"]],
                                  [r["label"] for r in index["runs"]], index["title"])
    _print_table(base)
    print(f"report: {report}")
    return status


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def _params_of(label: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in label.split() if "=" in p)


# -- report --------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    d: Path = args.dir
    if (d / INDEX).exists():
        index = json.loads((d / INDEX).read_text())
        for r in index["runs"]:
            if (d / r["dir"] / "summary.json").exists():
                build_report(d / r["dir"])
        report = build_compare_report(d, [d / r["dir"] for r in index["runs"]],
                                      [r["label"] for r in index["runs"]], index["title"])
        if any(r["params"] for r in index["runs"]):
            from ..report.plots import sweep_plot
            summaries = json.loads((d / "summaries.json").read_text())
            sweep_plot(summaries, list(index["runs"][0]["params"]), d / "sweep.png")
            report = build_compare_report(d, [d / r["dir"] for r in index["runs"]],
                                          [r["label"] for r in index["runs"]], index["title"])
    else:
        report = build_report(d)
    print(f"report: {report}")
    return 0
