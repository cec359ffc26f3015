"""``testbed claims [SCENARIO] [--repeat N] [--workers N | --cluster ADDRESS] [--out DIR]``
and ``testbed claims --from DIR``.

Runs every policy on the contention load (default ``scenarios/contention.yaml``) and the
baseline N times each (default 10), interleaved, into one batch folder with compare's
machinery (runs.json, each run's folder, report.html, stats.json); ``--workers N`` runs
N at once here and ``--cluster`` sends them to a Dask cluster's workers, exactly as for
compare and sweep (:func:`testbed.commands.run.run_batch`). Then it states each of
the article's claims as a hypothesis with its test (:mod:`testbed.claims`) and prints
``supported`` or ``not supported`` beside the figures and the p-value; the same goes to
``claims.json`` in the folder. ``--from DIR`` re-evaluates a folder without running.

Exit status 0 when every claim is supported, 1 otherwise (with N = 2 no rate claim can
be: two of two runs give p = 0.25).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from .. import claims, results, stats
from .. import scenario as scenario_mod
from ..errors import ConfigError
from ..report import build_compare_report
from . import run as run_cmd

DEFAULT_SCENARIO = "contention"       # scenarios/contention.yaml
DEFAULT_REPEAT = 10
CLAIMS = "claims.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("claims", help="test the article's claims on repeated runs of each policy")
    p.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO,
                   help=f"the contention load (default: {DEFAULT_SCENARIO})")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                   help=f"runs per policy and of the baseline (default {DEFAULT_REPEAT})")
    p.add_argument("--from", dest="source", type=Path, metavar="DIR",
                   help="evaluate an existing claims folder instead of running")
    run_cmd.batch_options(p)
    run_cmd._common(p)
    run_cmd.out_option(p, "folder for the runs, report and claims.json")
    p.set_defaults(func=cmd_claims)


def cmd_claims(args: argparse.Namespace) -> int:
    if args.source is not None:
        given = [o for o, v in (("--out", args.out is not None), ("--workers", args.workers != 1),
                                ("--cluster", args.cluster is not None)) if v]
        if given:
            raise ConfigError(f"--from and {given[0]}: --from reads a folder, it runs nothing")
        return report(args.source)
    run_cmd.check_batch_options(args)
    jobs = claim_jobs(args.scenario, run_cmd._overrides(args), args.backend, args.repeat)
    run_cmd._require_root()
    title = f"{jobs[0].scenario.name}: the article's claims, {args.repeat} runs each"
    base, _status, _report = run_cmd.run_batch(args, "claims", jobs, title)
    run_cmd.print_stats(base)
    return report(base)


def claim_jobs(scenario: str, overrides: list[str], backend: Optional[str],
               n: int) -> list[run_cmd.Job]:
    """Every policy on ``scenario`` and the baseline, each ``n`` times, interleaved.
    ``--set`` options apply to the contention load only; ``--backend`` to both."""
    run_cmd._check_repeat(n)
    load = run_cmd.compare_jobs(scenario, list(claims.POLICIES), overrides, 1)
    base = scenario_job(claims.BASELINE, [f"backend={backend}"] if backend else [])
    return run_cmd.repeated(load + [base], n)


def scenario_job(name: str, overrides: list[str]) -> run_cmd.Job:
    return run_cmd.Job(name, scenario_mod.load(name, overrides), {})


def report(folder: Path) -> int:
    """Evaluate the claims on a batch folder, print them, write claims.json."""
    batch = results.open_batch(folder)
    runs = claims.split(batch)
    got = claims.evaluate(runs)
    (batch.path / CLAIMS).write_text(json.dumps(claims.document(batch, runs, got), indent=2))
    print_claims(got, runs)
    print(f"claims: {batch.path / CLAIMS}")
    if not (batch.path / "report.html").exists():
        build_compare_report(batch.path)
    print(f"report: {batch.path / 'report.html'}")
    return 0 if all(r.supported for r in got) else 1


def claims_table(got: Sequence[claims.Result]) -> results.Table:
    """The claims as rows: claim, figures, p-value, supported or not."""
    return results.Table(["claim", "figures", "p", "result"],
                         [[r.claim, r.figures, stats.format_pvalue(r.pvalue),
                           "supported" if r.supported else "not supported"] for r in got])


def print_claims(got: Sequence[claims.Result], runs: claims.Runs) -> None:
    counts = ", ".join(f"{p} {len(rs)}" for p, rs in runs.by_policy.items())
    print(f"\nThe article's claims on {runs.scenario} ({counts}; {claims.BASELINE} "
          f"{len(runs.baseline)} runs), each at {stats.ALPHA:g}:")
    run_cmd.print_columns(claims_table(got))
    print("\nHypotheses and tests:")
    for i, r in enumerate(got, 1):
        print(f"  {i}. {r.claim}: {r.hypothesis}")
