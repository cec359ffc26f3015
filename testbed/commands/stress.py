"""``testbed stress SCENARIO --policy P --budget 30m [--workers N | --cluster ADDRESS]
[--seed S] [--ranges FILE] [--confirm N] [--out DIR]``.

Searches for a load under which the policy's claim fails (a fix that locks up, ``none``
or ``reserve-only`` that completes): loads drawn from the ranges file (default
``scenarios/stress/ranges.yaml``), each run, a counterexample confirmed by N fresh runs
and a rate test, shrunk toward the scenario's values, and the shrunk load confirmed the
same way (:mod:`testbed.stress.campaign`). The folder (default
``results/stress-<policy>``) gets every run, ``tried.ndjson``, ``stress.json``,
``report.md`` and a ``counterexample-K.yaml`` per distinct shrunk load.

Everything is checked before anything starts: the scenario, the ranges (file, line and
key of every problem), the budget, ``--workers`` (at least 1: N runs at once, each
isolated, :mod:`testbed.pool`) or ``--cluster tcp://HOST:PORT`` (the runs on a Dask
cluster's workers, as many at once as it has worker threads, :mod:`testbed.cluster`),
``--confirm`` (at least 1; below the fewest runs that
can confirm, a warning says so). Exit status 1 when a counterexample was confirmed, 0
when none was.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from .. import claims, cluster as cluster_mod
from .. import scenario as scenario_mod
from ..errors import ConfigError
from ..stress import ranges as ranges_mod
from ..stress.campaign import Campaign, confirm_runs
from . import run as run_cmd

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stress", help="search for the load under which a policy's claim fails")
    p.add_argument("scenario", help="the contention load to vary (file or built-in name)")
    p.add_argument("--policy", required=True, choices=claims.POLICIES)
    p.add_argument("--budget", required=True, type=parse_duration, metavar="TIME",
                   help="how long to search, e.g. 30m, 1h, 90s; a run in flight is finished")
    p.add_argument("--seed", type=int, help="seed of the sampling (default: from the clock, "
                                            "printed so the campaign can be repeated)")
    p.add_argument("--ranges", type=Path, default=ranges_mod.DEFAULT_RANGES,
                   help="the ranges file (default: scenarios/stress/ranges.yaml)")
    p.add_argument("--tries-per-key", type=int, default=3,
                   help="runs at most per key and pass while shrinking (default 3)")
    p.add_argument("--confirm", type=int, metavar="N",
                   help="fresh runs that confirm each counterexample by a rate test (default:"
                        " the fewest that can, 5 at the claims' H0 rate 1/2)")
    run_cmd.batch_options(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key before the search (repeatable)")
    run_cmd.out_option(p, "folder for the runs, the report and the counterexamples "
                          "(default: results/stress-<policy>)")
    p.set_defaults(func=cmd_stress)


def parse_duration(text: str) -> float:
    """``30m``, ``1h30m``, ``90s``, ``45`` (seconds) -> seconds; ArgumentTypeError if not."""
    t = text.strip()
    try:
        seconds = float(t)
    except ValueError:
        m = _DURATION.fullmatch(t)
        if not t or m is None or not any(m.groups()):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a time like 30m, 1h, 90s")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be more than nothing")
    return seconds


def cmd_stress(args: argparse.Namespace) -> int:
    run_cmd.check_batch_options(args)
    if args.tries_per_key < 1:
        raise ConfigError(f"--tries-per-key: must be at least 1, got {args.tries_per_key}")
    confirm = confirm_runs(args.confirm)
    base_file = scenario_mod.resolve(args.scenario)
    base = scenario_mod.load(base_file, args.overrides + [f"client.policy={args.policy}"])
    ranges = ranges_mod.load(args.ranges, base)
    run_cmd._require_root()
    with cluster_mod.open_cluster(args.cluster, args.workers, "stress") as cluster:
        out = run_cmd._batch_dir(args.out or Path("results") / f"stress-{args.policy}",
                                 "stress", base.name, args.force)
        seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
        # on a cluster, a wave is as many runs as it has worker threads
        workers = cluster.slots if cluster is not None else args.workers
        campaign = Campaign(base, base_file, ranges, out, args.budget, seed,
                            args.tries_per_key, confirm, workers=workers, cluster=cluster)
        return campaign.run()
