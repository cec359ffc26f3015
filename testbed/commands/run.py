"""``testbed run | compare | sweep | report``: scenarios end to end, and their reports.

- ``run SCENARIO``: one run; exit status 0 when the verdict is the expected one.
- ``compare SCENARIO --policies a,b [--repeat N]``: the same load under each policy, one
  table and one report (exit 0 when every run reached its expected verdict).
- ``compare SCENARIO --clients emulated:gorman-3.6,kernel [--repeat N]``: the same load on
  the model and on the real kernel (a guest), and the validation table
  (:mod:`testbed.validation`). ``kernel`` takes no policy: it does what Linux 6.1 does.
  ``--set-model KEY=VALUE`` sets a key for the model's runs only (its memory, say).
- ``sweep SCENARIO --param key=v1,v2 [--param key2=w1,w2] [--repeat N]``: a grid of runs
  over one or two parameters, with a plot of the outcome. ``--series FILE`` is one
  parameter whose points each set several keys together (:mod:`testbed.series`: memory,
  link and loads scaled as one), alone or with one ``--param`` (the policy, say).
- ``run`` and ``compare`` with ``--live [--live-port P]``: lecture mode, the run drawn as it
  goes on a page served on 127.0.0.1 (:mod:`testbed.report.live`).
- ``report DIR``: rebuild the report of a run folder, or of a compare/sweep folder.

With ``--repeat N`` every policy (or grid point) runs N times, interleaved (a, b, a, b,
...: a machine that slows down during the batch slows every group alike), and the
batch's statistics follow the table: per group the count of each verdict and each
figure's median with its 95 % interval (:func:`testbed.results.group_stats`), also in
``stats.json`` and the batch's report.html.

With ``--workers N`` (compare, sweep) N whole runs go at once, each in its own process
with its own run id and namespaces (:mod:`testbed.pool`); each run's progress lines go to
its folder's ``progress.log``, and the results are printed, indexed and recorded in the
order one worker gives. A run starved by the others is marked invalid by its own
fidelity figures and left out of the statistics, as always.

With ``--cluster tcp://HOST:PORT`` (compare, sweep; instead of ``--workers``) the runs go
to the workers of a Dask scheduler (:mod:`testbed.cluster`, docs/cluster.md) and each run
folder comes back into the batch folder under the same name; the rest is the same.

A scenario is loaded and checked completely before anything starts: a mistake in it
is reported with file, line and key, and nothing is created.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

from .. import cluster as cluster_mod, results, store, validation
from .. import scenario as scenario_mod
from .. import series as series_mod
from ..errors import ConfigError, EnvironmentProblem, TestbedError
from ..guest.qemu import KERNEL_POLICY
from ..mm.policy.loader import label as policy_label
from ..orchestrator import Orchestrator, RunResult
from ..pool import RunPool, RunSpec, check_workers
from ..report import build_compare_report, build_report, live
from ..report.summary import cycle_lines, evidence
from ..scenario import Scenario
from ..schema import Problem, SchemaError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a scenario end to end and give its verdict")
    p.add_argument("scenario", help="scenario file, or a built-in name (e.g. contention-none)")
    _common(p)
    p.add_argument("--out", type=Path, help="run folder (default: runs/<time>-<name>-<id>)")
    live_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="the same load under several policies, or on the model "
                                       "and the kernel, side by side")
    p.add_argument("scenario")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--policies", help="comma-separated, e.g. none,gorman-3.6")
    which.add_argument("--clients", help="kinds of storage client, comma-separated: "
                                         "emulated[:POLICY] and kernel (Linux 6.1's own "
                                         "policy), e.g. emulated:gorman-3.6,kernel")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per policy or client (default 1)")
    batch_options(p)
    p.add_argument("--set-model", dest="model_overrides", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="with --clients: override a scenario key for the emulated clients "
                        "only, e.g. --set-model client.memory_mb=21 to give the model the "
                        "memory the kernel's load had (repeatable)")
    _common(p)
    out_option(p, "folder for the runs and the combined report")
    live_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="a grid of runs over one or two parameters")
    p.add_argument("scenario")
    p.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a scenario key and its values (once or twice; once with --series)")
    p.add_argument("--series", type=Path, metavar="FILE",
                   help="a series file: keys that move together, one row per point "
                        "(testbed.series; e.g. scenarios/series/scale.yaml); it counts as "
                        "one parameter, named by its first key")
    p.add_argument("--repeat", type=int, default=1, help="runs per grid point (default 1)")
    batch_options(p)
    _common(p)
    out_option(p, "folder for the runs and the sweep report")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="rebuild the report of a run, compare or sweep folder")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set client.policy=none (repeatable)")
    p.add_argument("--backend", choices=("mininet", "docker"),
                   help="where the nodes run (default: the scenario's backend, mininet)")


def out_option(p: argparse.ArgumentParser, what: str) -> None:
    """A batch's --out, and --force to move an existing one aside (see _batch_dir)."""
    p.add_argument("--out", type=Path, help=f"{what} (new or empty; default: "
                                            f"runs/<time>-<command>-<scenario>)")
    p.add_argument("--force", action="store_true",
                   help="if --out exists and is not empty, move it aside to OUT.old-<time> "
                        "first (nothing is deleted)")


def live_options(p: argparse.ArgumentParser) -> None:
    """Lecture mode (testbed.report.live): the run drawn live on a page on 127.0.0.1."""
    p.add_argument("--live", action="store_true",
                   help="serve a page on 127.0.0.1 that draws the run as it goes")
    p.add_argument("--live-port", type=int, default=live.DEFAULT_PORT, metavar="PORT",
                   help=f"its port (default {live.DEFAULT_PORT}; 0: a free one, printed)")


def _live(args: argparse.Namespace, folder: live.FolderSource) -> contextlib.AbstractContextManager:
    """The live page for the duration of a run or batch, or nothing without --live."""
    if not args.live:
        return contextlib.nullcontext()
    return live.serve(folder, args.live_port, say=lambda text: print(text, flush=True))


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
    for line in cycle_lines(s):         # a lockup's proof: what holds the machine
        print(f"  {line}")
    print(f"report: {res.run_dir / 'report.html'}")


# -- run -----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    sc = scenario_mod.load(args.scenario, _overrides(args))
    _require_root()
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"--out {args.out}: folder exists and is not empty")
    orch = Orchestrator(sc, out_dir=args.out)
    # the run's folder is named by its context, once the run has started
    folder = lambda: orch.run_ctx.dir if hasattr(orch, "run_ctx") else None   # noqa: E731
    try:
        with _live(args, folder):
            res = orch.run()
    finally:
        # an interrupted or failed run keeps its folder and summary: it is indexed too
        ctx = getattr(orch, "run_ctx", None)
        if ctx is not None:
            store.record_run(ctx.dir, "run")
    _print_result(res)
    return 0 if res.ok else 1


# -- compare and sweep ---------------------------------------------------------------------

def _batch_dir(out: Optional[Path], kind: str, name: str, force: bool = False) -> Path:
    """The batch's folder, made. A batch never writes into a folder that holds
    something: its runs.json and report would mix the runs there with its own. An
    existing non-empty ``--out`` is refused, or with ``force`` moved aside (renamed,
    nothing deleted; the results store follows it); a default name taken in the same
    second gets a suffix."""
    if out is None:
        return _claim_name(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{name}")
    else:
        d = out
        if d.exists() and not d.is_dir():
            raise ConfigError(f"--out {d}: exists and is not a folder")
        if d.exists() and any(d.iterdir()):
            if not force:
                raise ConfigError(
                    f"--out {d}: folder exists and is not empty (the {kind} would mix its "
                    f"runs with the ones there): give a new folder, or add --force to move "
                    f"this one aside to {d}.old-<time> first")
            aside = _free_name(d.with_name(f"{d.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"), "-")
            d.rename(aside)
            store.record_moved(d, aside)
            print(f"--force: moved the old {d} aside to {aside}", flush=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _free_name(d: Path, sep: str) -> Path:
    """``d``, or ``d-2``, ``d-3``, ... whichever does not exist yet."""
    k, got = 1, d
    while got.exists():
        k += 1
        got = d.with_name(f"{d.name}{sep}{k}")
    return got


def _claim_name(d: Path) -> Path:
    """``d``, or ``d-2``, ``d-3``, ..., made by this process: ``mkdir`` fails on a name
    another batch made first, even one started in the same second (``--workers`` or two
    terminals), so no two batches share a default folder."""
    d.parent.mkdir(parents=True, exist_ok=True)
    k, got = 1, d
    while True:
        try:
            got.mkdir()
            return got
        except FileExistsError:
            k += 1
            got = d.with_name(f"{d.name}-{k}")


class Job(NamedTuple):
    """One run of a batch: its label, the scenario as loaded, and (for a sweep) the
    parameter values it was loaded with, which runs.json keeps as they were given."""
    label: str
    scenario: Scenario
    params: results.Params


MAX_FAILED_IN_A_ROW = 3     # then the machine, not a run, is broken: stop the batch


def _run_batch(base: Path, jobs: list[Job], title: str,
               command: Optional[str] = None, workers: int = 1,
               cluster: Optional[cluster_mod.Cluster] = None) -> tuple[int, Path]:
    """Run the jobs into ``base``, ``workers`` at once (:class:`testbed.pool.RunPool`);
    then the combined report.

    Each run's result is printed, indexed and recorded in the jobs' order, whatever
    order they end in, so a batch with N workers gives the folder one worker would. A
    run that fails for the testbed's own reasons (a node that did not start, a link not
    configured) keeps its folder, marked ``error`` without a verdict, and the batch goes
    on: one such failure must not cost the other runs of a long batch, and the
    statistics count it as a run without a verdict. A wrong scenario or machine, or
    several failures in a row, still stop the batch (and the runs in flight).

    Each run is recorded in the results store as it ends (``command``: compare, sweep,
    claims; by default sweep when the jobs have parameters, else compare).

    With ``cluster`` (``--cluster``, :mod:`testbed.cluster`) the runs go to its workers
    and their folders come back here, under the same names; the rest is the same.
    """
    command = command or ("sweep" if any(j.params for j in jobs) else "compare")
    index: list[results.BatchEntry] = []
    ok, failed = True, 0
    specs = [RunSpec(job.scenario, base / _slug(job.label)) for job in jobs]
    apart = workers > 1 or cluster is not None      # results printed apart from progress

    def started(i: int, spec: RunSpec) -> None:
        where = f"queued on {cluster.address}" if cluster is not None else \
            f"progress: {spec.out_dir / 'progress.log'}" if workers > 1 else ""
        print(f"[{i + 1}/{len(jobs)}] {jobs[i].label}" + (f" ({where})" if where else ""),
              flush=True)

    with RunPool(workers, on_start=started, runner=_run_here, backend=cluster) as pool:
        for job, done in zip(jobs, pool.run(specs)):
            if apart:
                print(f"{job.label}:", flush=True)
            if isinstance(done.error, (ConfigError, EnvironmentProblem)):
                raise done.error
            if done.error is not None:
                failed += 1
                print(f"run failed: {done.error}", flush=True)
                if failed >= MAX_FAILED_IN_A_ROW:
                    raise done.error
                ok = False
            else:
                failed = 0
                res = RunResult(done.run_dir, done.summary or {})
                _print_result(res)
                ok &= res.ok
            out = done.run_dir
            index.append(results.BatchEntry(job.label, out.name, dict(job.params)))
            results.write_index(base, title, index)
            store.record_run(out, command, job.label, dict(job.params), batch=base)
    return (0 if ok else 1), build_compare_report(base)


def batch_options(p: argparse.ArgumentParser) -> None:
    """Where a batch's runs go (compare, sweep, claims, stress): ``--workers N`` here, or
    ``--cluster tcp://HOST:PORT``."""
    workers_option(p)
    cluster_mod.cluster_option(p)


def check_batch_options(args: argparse.Namespace) -> None:
    """``--workers`` and ``--cluster`` (every batch command) checked with the other
    options, before anything starts."""
    check_workers(args.workers)
    cluster_mod.check_options(args.cluster, args.workers)


def run_batch(args: argparse.Namespace, command: str, jobs: list[Job], title: str,
              made: Optional[Callable[[Path], None]] = None) -> tuple[Path, int, Path]:
    """The one place a batch (compare, sweep, claims) chooses where its runs go: the
    cluster is connected first (an unreachable scheduler creates nothing), then the
    batch folder is made (and ``made(folder)`` told), then the jobs run, here
    (``--workers N`` at once) or on the cluster. Returns the folder, the exit status
    and the combined report."""
    with cluster_mod.open_cluster(args.cluster, args.workers, command) as cluster:
        base = _batch_dir(args.out, command, jobs[0].scenario.name, args.force)
        if made is not None:
            made(base)
        status, report = _run_batch(base, jobs, title, command, args.workers, cluster)
    return base, status, report


def _run_here(spec: RunSpec) -> tuple[Path, dict]:
    """One worker: the run in this process, progress on stderr, as batches always ran."""
    res = Orchestrator(spec.scenario, out_dir=spec.out_dir).run()
    return res.run_dir, res.summary


def workers_option(p: argparse.ArgumentParser) -> None:
    """``--workers N``: whole runs at once, each isolated (testbed.pool)."""
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="runs at once, each isolated in its own process and namespaces "
                        "(default 1); results come in the order one worker gives")


def print_columns(table: results.Table) -> None:
    """A table as plain-text columns."""
    lines = [table.header] + table.rows
    widths = [max(len(r[i]) for r in lines) for i in range(len(table.header))]
    for r in lines:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_table(base: Path) -> None:
    """The batch's table as plain-text columns."""
    print_columns(results.table(results.open_batch(base).runs()))


def print_stats(base: Path) -> None:
    """The batch's statistics per policy or grid point (as in stats.json), and the
    validation table when it ran both kinds of client."""
    batch = results.open_batch(base)
    runs = batch.runs()
    print(f"\n{results.STATS_NOTE}:")
    print_columns(results.stats_table(results.batch_groups(batch, runs), runs))
    if validation.is_validation(runs):
        v = validation.validation(runs)
        print(f"\nthe model against the kernel: {validation.NOTE}:")
        print_columns(v.table)
        for line in validation.footnote_lines(v):
            print(line)


def _check_repeat(n: int) -> None:
    if n < 1:
        raise ConfigError(f"--repeat: must be at least 1, got {n}")


def repeated(variants: list[Job], n: int) -> list[Job]:
    """Each variant ``n`` times, interleaved (a, b, a, b), labelled ``label#k`` when n > 1."""
    if n == 1:
        return list(variants)
    return [j._replace(label=f"{j.label}#{k + 1}") for k in range(n) for j in variants]


def _finish_batch(base: Path, status: int, report: Path) -> int:
    _print_table(base)
    print_stats(base)
    print(f"report: {report}")
    return status


def compare_jobs(scenario: str, policies: list[str], overrides: list[str], n: int) -> list[Job]:
    """The jobs of a compare: every policy's scenario loaded first (a mistake starts
    nothing), each run ``n`` times. A policy file (``./mypolicy.py``, from the current
    folder) is labelled by its file's name, as its runs' summaries name it."""
    _check_repeat(n)
    variants = [Job(policy_label(p),
                    scenario_mod.load(scenario, overrides + [f"client.policy={p}"]), {})
                for p in policies]
    return repeated(variants, n)


def client_sets(spec: str) -> list[tuple[str, list[str]]]:
    """``--clients``: each client's label and the scenario keys that make it.
    ``emulated`` keeps the scenario's policy, ``emulated:P`` sets it; ``kernel`` runs
    Linux 6.1, whose policy is its own (Gorman's series): one given to it is refused."""
    out: list[tuple[str, list[str]]] = []
    for item in (c.strip() for c in spec.split(",")):
        if not item:
            continue
        kind, _, policy = item.partition(":")
        if kind == "kernel":
            if policy:
                raise ConfigError(
                    f"--clients {item}: the kernel client's policy is what its kernel (Linux "
                    f"6.1) does, Gorman's series ({KERNEL_POLICY}); it cannot be chosen: "
                    f"give `kernel` alone")
            out.append(("kernel", ["client.kind=kernel", f"client.policy={KERNEL_POLICY}"]))
        elif kind == "emulated":
            out.append((item, ["client.kind=emulated"]
                        + ([f"client.policy={policy}"] if policy else [])))
        else:
            raise ConfigError(f"--clients {item}: a client is emulated, emulated:POLICY or "
                              f"kernel")
    if not out:
        raise ConfigError("--clients: give at least one client, e.g. emulated:gorman-3.6,kernel")
    if len({label for label, _ in out}) < len(out):
        raise ConfigError(f"--clients {spec}: a client is named twice")
    return out


def client_jobs(scenario: str, spec: str, overrides: list[str], n: int,
                model_overrides: Sequence[str] = ()) -> list[Job]:
    """The jobs of ``compare --clients``: the same load on each client, loaded first.
    ``model_overrides`` (``--set-model``) apply to the emulated clients only: the guest's
    kernel keeps a share of its ``memory_mb`` for itself and its processes, so the same
    machine is the model at the memory the kernel's load had (the validation table's
    "memory for the load" row measures both)."""
    _check_repeat(n)
    variants = [Job(label, scenario_mod.load(
                    scenario, overrides + ([] if label == "kernel" else list(model_overrides))
                    + sets), {})
                for label, sets in client_sets(spec)]
    return repeated(variants, n)


def cmd_compare(args: argparse.Namespace) -> int:
    check_batch_options(args)
    if args.model_overrides and args.clients is None:
        raise ConfigError("--set-model: only with --clients (it sets keys of the emulated "
                          "clients against the kernel's); use --set for --policies")
    if args.clients is not None:
        jobs = client_jobs(args.scenario, args.clients, _overrides(args), args.repeat,
                           args.model_overrides)
        what = "the model against the kernel"
    else:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        if not policies:
            raise ConfigError("--policies: give at least one policy")
        jobs = compare_jobs(args.scenario, policies, _overrides(args), args.repeat)
        what = "policies compared"
    _require_root()
    batch: list[Path] = []      # the live page starts first: a port in use creates nothing
    with _live(args, lambda: live.newest_run(batch[0])() if batch else None):
        base, status, report = run_batch(args, "compare", jobs,
                                         f"{jobs[0].scenario.name}: {what}", made=batch.append)
    return _finish_batch(base, status, report)


def _parse_param(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not vals:
        raise ConfigError(f"--param {text!r}: expected KEY=V1,V2,... e.g. topology.bulk_hosts=1,2,4")
    return key, vals


def cmd_sweep(args: argparse.Namespace) -> int:
    if not args.param and args.series is None:
        raise ConfigError("sweep: give --param KEY=V1,V2 (once or twice) or --series FILE")
    if len(args.param) + (args.series is not None) > 2:
        raise ConfigError("--param: a sweep takes one or two parameters (a --series is one)")
    _check_repeat(args.repeat)
    check_batch_options(args)
    params = [_parse_param(p) for p in args.param]
    points = sweep_points(args.scenario, params, args.series, _overrides(args))
    jobs = repeated(points, args.repeat)
    _require_root()
    name = jobs[0].scenario.name
    keys = list(jobs[0].params)
    base, status, report = run_batch(args, "sweep", jobs,
                                     f"{name}: sweep over {' x '.join(keys)}")
    return _finish_batch(base, status, report)


def sweep_points(scenario: str, params: list[tuple[str, list[str]]],
                 series_file: Optional[Path], overrides: list[str]) -> list[Job]:
    """Every grid point's scenario, loaded and checked before anything starts: the
    ``--param`` values as ``--set`` keys, then a series point's keys over them (the
    series first in the label and the parameters: it is the x axis)."""
    series = series_mod.read(series_file) if series_file is not None else None
    if series is not None:
        clash = [k for k, _ in params if k in series.points[0].load]
        if clash:
            raise ConfigError(f"--param {clash[0]}: the series {series_file} sets this key "
                              f"at each point already")
    points = []
    problems: list[Problem] = []
    for combo in itertools.product(*(vals for _, vals in params)):
        sets = [f"{k}={v}" for (k, _), v in zip(params, combo)]
        given = {k: v for (k, _), v in zip(params, combo)}
        sc = scenario_mod.load(scenario, overrides + sets)
        if series is None:
            points.append(Job(" ".join(sets), sc, given))
            continue
        try:
            built = series_mod.scenarios(series, sc)
        except SchemaError as exc:      # the same point's problem once, not per --param value
            problems += [p for p in exc.problems if p not in problems]
            continue
        points += [Job(" ".join([pt.label] + sets), psc, {pt.knob: str(pt.value), **given})
                   for pt, psc in built]
    if problems:
        raise SchemaError(problems)
    return points


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


# -- report --------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    d: Path = args.dir
    if results.is_batch(d):
        for run in results.open_batch(d).runs():
            build_report(run.path)
        report = build_compare_report(d)    # with the sweep's plot when runs have params
    else:
        report = build_report(d)
    print(f"report: {report}")
    return 0
