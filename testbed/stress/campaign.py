"""A stress campaign: sample loads, run them, shrink what refutes the policy's claim.

The loop, under a time budget:

1. draw a load from the ranges (:mod:`.sampling`) and build the scenario with it through
   the scenario checker; a load the checker refuses is counted ``refused``, not run;
2. run it with the orchestrator, as ``testbed compare`` runs each of its runs, into the
   campaign's folder; record it in the results store (command ``stress``, the load as the
   run's parameters) and in ``runs.json``, so the folder is a batch that
   :mod:`testbed.results`, ``testbed report`` and ``testbed results --rebuild`` read;
3. judge the verdict by the policy's claim (:data:`testbed.claims.POLICY_CLAIMS`): a fix
   that locks up, or ``none`` / ``reserve-only`` that completes, is a counterexample;
   a run without a verdict, or with a verdict that neither holds nor refutes the claim
   (``degraded``), is counted as such and is not one; nor is a run past a fidelity bound
   (:mod:`testbed.fidelity`: starved, its verdict is no evidence), counted without one;
4. on a counterexample, confirm it (below); a confirmed one is shrunk (:mod:`.shrink`),
   every candidate a run of its own, and the smallest load that still failed is
   confirmed the same way; the scenario file (``counterexample-K.yaml``: ``extends:``
   the scenario, with only what differs; one file per distinct load) holds the shrunk
   load if its confirmation held, else the sampled load, which did ("shrunk, not
   confirmed" is recorded as such; a shrunk load whose confirmation the campaign ended
   before judging is written beside it, marked unconfirmed, as
   ``counterexample-K-shrunk.yaml``). Shrink candidates already run for an earlier
   counterexample are not run again (the shrinker's ``known`` answers).

Confirming. The sampling run was picked because it failed, so it is no evidence that the
load fails: one more run that fails is one draw of a flaky verdict. A counterexample is
therefore a hypothesis tested like the article's claims (:mod:`testbed.claims`): N
(``--confirm``) fresh runs of the load, each its own run folder (``<label>-confirm1..N``),
the sampling run not counted, judged by the exact one-sided binomial test
:func:`testbed.stats.rate_test` of H1 "the load refutes the claim in more than
:data:`testbed.claims.P0` of runs" at :data:`testbed.stats.ALPHA`. The runs that reached
a verdict count (a ``degraded`` one counts as not refuting); runs without one, or past a
fidelity bound, are left out and counted, as the claims do. All N are run (the test is
the fixed-N one whose p-value is stated). A confirmation the budget or Ctrl-C cut short
is not judged (``confirmed: null``). The default N is the fewest runs that can confirm
(:func:`testbed.stats.runs_to_support`: 5 at P0 = 1/2, p = 0.031); a smaller N is
allowed and said to be unable to confirm. Each shrink candidate stays one run (it only
steers the search); only the load that is written is confirmed (``<label>-shrunk-
confirm1..N``), which costs N more runs per counterexample that shrank. A load judged
once in a campaign (two samples, or two shrinks, that reach it) keeps its judgement and
is not run again: those runs were not picked by their outcome, whichever led to them.

Parallel runs (``--workers N``, :mod:`testbed.pool`): the samples are drawn in waves of
N from the same seeded sequence and run at once, each in its own process and run id, and
are judged and noted in their sequence's order; a counterexample among them is pursued
after its wave. A confirmation's N fresh runs go N at once as well. On a cluster
(``--cluster``, :mod:`testbed.cluster`) a wave is as many runs as its worker threads, and
every run, a shrink candidate too, goes to the cluster. Shrinking stays one
run at a time: each candidate depends on the answer to the one before. A run starved by
the others is past a fidelity bound and counted ``invalid``, not judged (3. above).

A run starts only if the time left covers it (the longest run so far, or before any
the scenario's deadline plus :data:`RUN_OVERHEAD_S`); a run in flight is always
finished, so a campaign can end past its budget by less than one run. Ctrl-C stops the
run in flight as ``testbed run`` does (folder marked ``interrupted``) and the campaign's
files are written before the interrupt goes on: what was found stays readable.

The folder: ``tried.ndjson`` (one line per load tried, written as it ends),
``runs.json``, one folder per run, ``progress.log`` (the runs' own progress lines),
``stress.json`` (the campaign's counts and counterexamples), ``report.md`` and the
``counterexample-K.yaml`` (and ``counterexample-K-shrunk.yaml``) files.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import yaml

from .. import claims, results, stats, store
from .. import scenario as scenario_mod
from ..errors import ConfigError, EnvironmentProblem, TestbedError
from ..mm.config import WorkloadConfig
from ..orchestrator import Orchestrator, Progress
from ..pool import Backend, Done, RunPool, RunSpec
from ..scenario import Scenario
from ..schema import SchemaError
from . import ranges as ranges_mod
from .ranges import Load, Ranges
from .sampling import sample
from .shrink import Shrunk, load_mark, shrink

RUN_OVERHEAD_S = 20.0       # bring-up, node start, read-back and report beyond the deadline
MAX_FAILED_IN_A_ROW = 3     # runs failing for the testbed's own reasons: the machine is broken
TRIED = "tried.ndjson"
SUMMARY = "stress.json"
REPORT = "report.md"

# What a load's run says about the claim.
# A refused load was never run (the scenario checker said no); an invalid run ran past a
# fidelity bound (testbed.fidelity), so its verdict, whatever it is, counts for nothing.
COUNTEREXAMPLE, HOLDS, INCONCLUSIVE, NO_VERDICT, INVALID, REFUSED = (
    "counterexample", "holds", "inconclusive", "no-verdict", "invalid", "refused")
JUDGED = (COUNTEREXAMPLE, HOLDS, INCONCLUSIVE)     # a run with a valid verdict

# H0 of a confirmation: the load refutes the claim in at most half its runs. The claims'
# own P0 (one rule for both): a counterexample is the claim's test with the event
# reversed, so it must clear the same bar the claim does.
P0 = claims.P0


def confirm_runs(n: Optional[int]) -> int:
    """``--confirm``: ``n`` fresh runs per confirmation, or by default the fewest that
    can confirm at ALPHA; a ConfigError below 1."""
    if n is None:
        return stats.runs_to_support(P0)
    if n < 1:
        raise ConfigError(f"--confirm: must be at least 1 (fresh runs that confirm a "
                          f"counterexample), got {n}")
    return n


class OutOfTime(Exception):
    """The budget left does not cover another run."""


@dataclass
class Tried:
    """One load tried: a line of ``tried.ndjson``."""

    n: int
    label: str
    phase: str                  # sample, confirm, shrink
    load: Load
    outcome: str                # COUNTEREXAMPLE, HOLDS, INCONCLUSIVE, NO_VERDICT, INVALID, REFUSED
    verdict: Optional[str] = None
    status: Optional[str] = None
    run_dir: Optional[str] = None
    wall_s: float = 0.0
    detail: str = ""


def hypothesis(claim: str, n: int) -> str:
    """What a confirmation tests, in words (stress.json, the report, the output)."""
    return (f"H1: the load refutes '{claim}' in more than {P0:g} of runs (H0: <= {P0:g}); "
            f"exact one-sided binomial test on {n} fresh runs, the run that found it not "
            f"counted")


def cannot_confirm(n: int, short: bool = False) -> Optional[str]:
    """Why ``n`` runs can never confirm at ALPHA, or None when they can; ``short``
    leaves out the best p-value they could give."""
    need = stats.runs_to_support(P0)
    if n >= need:
        return None
    why = (f"{n} run{'s' if n != 1 else ''} cannot confirm at {stats.CONFIDENCE:.0%} "
           f"confidence: at least {need} are needed")
    return why if short else (f"{why} (all {n} refuting give "
                              f"p = {stats.format_pvalue(stats.p0_floor(n, P0))})")


@dataclass
class Confirmation:
    """``asked`` fresh runs of one load and the rate test of how many refuted the claim
    (see the module docstring); ``test`` is None until all of them ran."""

    asked: int
    runs: list[Tried] = field(default_factory=list)
    test: Optional[stats.RateTest] = None

    def judge(self) -> None:
        counted = [t for t in self.runs if t.outcome in JUDGED]
        k = sum(t.outcome == COUNTEREXAMPLE for t in counted)
        self.test = stats.rate_test(k, len(counted), P0)

    @property
    def confirmed(self) -> Optional[bool]:
        """True: supported at ALPHA; False: not; None: not judged (cut short)."""
        return None if self.test is None else self.test.supported

    def text(self) -> str:
        """The outcome in a sentence: figures, p-value, supported or not."""
        if self.test is None:
            return (f"not judged: {len(self.runs)} of {self.asked} fresh runs done before "
                    f"the campaign ended")
        t = self.test
        none = len(self.runs) - t.n
        figures = (f"{t.successes} of {t.n} fresh runs refute the claim"
                   + (f" ({none} without a valid verdict left out)" if none else "")
                   + (f", rate >= {t.lower_bound:.0%} at {stats.CONFIDENCE:.0%}" if t.n else ""))
        word = "supported: confirmed" if t.supported else "not supported: not confirmed"
        why = cannot_confirm(t.n, short=True) if not t.supported else None
        return f"{figures}; p = {stats.format_pvalue(t.pvalue)}, {word}" + (
            f"; {why}" if why else "")

    def to_json(self, claim: str) -> dict[str, Any]:
        return {"hypothesis": hypothesis(claim, self.asked), "asked": self.asked,
                "runs": [{"label": t.label, "outcome": t.outcome, "verdict": t.verdict}
                         for t in self.runs],
                "outcomes": [t.outcome for t in self.runs],
                "successes": None if self.test is None else self.test.successes,
                "counted": None if self.test is None else self.test.n,
                "pvalue": None if self.test is None else self.test.pvalue,
                "confirmed": self.confirmed, "text": self.text(),
                "test": None if self.test is None else self.test.to_json()}


@dataclass
class Found:
    """A counterexample: the sampled load, its confirmation, its shrinking and the
    shrunk load's confirmation."""

    label: str
    load: Load
    confirmation: Optional[Confirmation] = None
    shrunk: Optional[Shrunk] = None
    shrunk_confirmation: Optional[Confirmation] = None
    scenario_file: Optional[str] = None
    shrunk_file: Optional[str] = None   # the shrunk load, written unconfirmed

    @property
    def confirmed(self) -> Optional[bool]:
        """None: not judged (the budget, or Ctrl-C, before its N runs were done)."""
        return None if self.confirmation is None else self.confirmation.confirmed

    @property
    def shrunk_confirmed(self) -> Optional[bool]:
        """Whether the shrunk load is confirmed (the sampled load's own confirmation when
        shrinking moved nothing); None: not shrunk, or its confirmation not judged."""
        if self.shrunk is None:
            return None
        if self.shrunk.load == self.load:
            return self.confirmed
        return None if self.shrunk_confirmation is None else self.shrunk_confirmation.confirmed

    @property
    def written_load(self) -> Load:
        """The load of the scenario file: the shrunk one if confirmed, else the sampled."""
        return self.shrunk.load if self.shrunk is not None and self.shrunk_confirmed \
            else self.load

    def to_json(self, defaults: Load, claim: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"label": self.label, "load": self.load,
                               "confirmed": self.confirmed,
                               "confirmation": self.confirmation and
                               self.confirmation.to_json(claim),
                               "scenario_file": self.scenario_file,
                               "shrunk_file": self.shrunk_file}
        if self.shrunk is not None:
            doc["shrunk"] = {"load": self.shrunk.load, "changed": self.shrunk.changed(defaults),
                             "converged": self.shrunk.converged,
                             "attempts": len(self.shrunk.attempts),
                             "confirmed": self.shrunk_confirmed,
                             "confirmation": self.shrunk_confirmation and
                             self.shrunk_confirmation.to_json(claim)}
            doc["scenario_load"] = "shrunk" if self.shrunk_confirmed else "sampled"
        return doc


@dataclass
class Campaign:
    """One stress campaign; :meth:`run` does it (see the module docstring)."""

    base: Scenario              # the scenario with the campaign's policy and --set options
    base_file: Path             # the scenario file it came from (counterexamples extend it)
    ranges: Ranges
    out: Path
    budget_s: float
    seed: int
    tries_per_key: int = 3
    confirm: Optional[int] = None   # fresh runs per confirmation; None: confirm_runs()
    echo: TextIO = sys.stdout
    workers: int = 1            # runs at once (testbed.pool); shrinking is one at a time
    cluster: Optional[Backend] = None   # --cluster: the runs on its workers (testbed.cluster)
    tried: list[Tried] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)
    stopped_by: str = "budget"

    def __post_init__(self) -> None:
        self.claim = claims.POLICY_CLAIMS[self.base.client.policy]
        self.data = self.base.to_dict()
        self.defaults = ranges_mod.defaults(self.data, self.ranges.keys)
        self.rng = random.Random(self.seed)
        self.started = time.monotonic()
        self.started_utc = store.utc(time.time())
        self.index: list[results.BatchEntry] = []
        self.walls: list[float] = []
        self.failed_in_a_row = 0
        self.known: dict[tuple, bool] = {}      # shrink candidates run so far -> failed
        self.confirmations: dict[tuple, Confirmation] = {}   # by load; a judged one is reused
        self.n_confirm: int = confirm_runs(self.confirm)

    @property
    def policy(self) -> str:
        return self.base.client.policy

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Sample, run and shrink until the budget is spent; 1 if a counterexample was
        confirmed, else 0. The campaign's files are written however it ends."""
        self.say(f"stress {self.base.name}, policy {self.policy} (claim: {self.claim.claim}), "
                 f"seed {self.seed}, budget {_clock(self.budget_s)}, ranges {self.ranges.path}"
                 f" -> {self.out}")
        self.say(f"a counterexample is confirmed by {self.n_confirm} fresh runs: "
                 f"{hypothesis(self.claim.claim, self.n_confirm)}, at {stats.ALPHA:g}")
        if cannot_confirm(self.n_confirm):
            self.say(f"warning: {cannot_confirm(self.n_confirm)}")
        try:
            while True:
                first = sum(t.phase == "sample" for t in self.tried) + 1
                wave = [(sample(self.ranges, self.rng), f"s{first + k:03d}", "sample")
                        for k in range(self.workers)]
                for entry in self.attempts(wave):
                    if entry.outcome == COUNTEREXAMPLE:
                        self.pursue(Found(entry.label, entry.load))
        except OutOfTime:
            self.stopped_by = "budget"
        except KeyboardInterrupt:
            self.stopped_by = "interrupted"
            raise
        except BaseException:
            self.stopped_by = "error"
            raise
        finally:
            self.write_summary()
            self.print_summary()
        return 1 if any(f.confirmed is True for f in self.found) else 0

    def pursue(self, found: Found) -> None:
        """Confirm a counterexample by N fresh runs, then shrink it, confirm the shrunk
        load and write the scenario."""
        self.found.append(found)
        found.confirmation = self.confirmation(found.load)
        self.run_confirmation(found.confirmation, found.load, f"{found.label}-confirm")
        if not found.confirmed:
            self.say(f"  {found.label}: {found.confirmation.text()}; not shrunk")
            return
        self.say(f"  {found.label}: {found.confirmation.text()}; shrinking toward the "
                 f"scenario's defaults")
        count = iter(range(1, 10**6))
        timed_out = []

        def fails(load: Load) -> Optional[bool]:
            try:
                return self.attempt(load, f"{found.label}-shrink{next(count):02d}",
                                    "shrink").outcome == COUNTEREXAMPLE
            except OutOfTime:
                timed_out.append(True)
                return None             # not run: the shrinker learns nothing from it

        def stop() -> bool:
            if not timed_out and not self.fits(self.base):
                timed_out.append(True)
            return bool(timed_out)

        try:
            found.shrunk = shrink(found.load, self.defaults, fails, dict(self.ranges.items),
                                  self.tries_per_key, stop=stop, known=self.known)
            if found.shrunk.load != found.load:
                # its one failing run picked it, as sampling did: confirm it afresh
                found.shrunk_confirmation = self.confirmation(found.shrunk.load)
                self.run_confirmation(found.shrunk_confirmation, found.shrunk.load,
                                      f"{found.label}-shrunk-confirm")
                self.say(f"  {found.label} shrunk to "
                         f"{_load_text(found.shrunk.changed(self.defaults))}: "
                         f"{found.shrunk_confirmation.text()}")
        finally:
            if found.shrunk is None:    # interrupted mid-shrink: the confirmed load stands
                found.shrunk = Shrunk(found.load)
            found.scenario_file = self.write_counterexample(found)
        if timed_out:
            raise OutOfTime()

    def confirmation(self, load: Load) -> Confirmation:
        """The confirmation of ``load``: the one of an earlier counterexample of this
        campaign that led to the same load, or a new one, not yet run."""
        return self.confirmations.setdefault(load_mark(load), Confirmation(self.n_confirm))

    def run_confirmation(self, got: Confirmation, load: Load, label: str) -> None:
        """The N fresh runs of ``load`` (``<label>1..N``), then the rate test. The runs
        are added to ``got`` as they end, so a campaign cut short (out of time, Ctrl-C)
        records those it had, unjudged. One judged already is not run again."""
        if got.test is not None:
            self.say(f"  {label}: the same load was judged before in this campaign")
            return
        todo = [(load, f"{label}{i}", "confirm") for i in range(len(got.runs) + 1, got.asked + 1)]
        for k in range(0, len(todo), self.workers):
            got.runs.extend(self.attempts(todo[k:k + self.workers]))
        got.judge()

    def attempt(self, load: Load, label: str, phase: str) -> Tried:
        """Build, run and judge one load; its line in tried.ndjson and the progress."""
        if self.cluster is not None:        # the run goes to the cluster, as waves do
            return self.attempts([(load, label, phase)])[0]
        try:
            sc = ranges_mod.build(self.data, load)
        except SchemaError as exc:
            return self.note(Tried(len(self.tried) + 1, label, phase, load, REFUSED,
                                   detail=str(exc).replace("\n", " ")))
        self.check_time(sc)
        t0 = time.monotonic()
        entry = Tried(len(self.tried) + 1, label, phase, load, NO_VERDICT,
                      run_dir=str(self.out / label))
        try:
            entry.detail = self.run_one(sc, label)
        except KeyboardInterrupt:
            entry.detail = "interrupted"
            raise
        finally:
            entry.wall_s = round(time.monotonic() - t0, 1)
            self.walls.append(entry.wall_s)
            self.judge(entry, load, label)
            self.note(entry)
        return entry

    def attempts(self, items: list[tuple[Load, str, str]]) -> list[Tried]:
        """Several loads (load, label, phase): with one worker :meth:`attempt` each in
        turn; with more, all at once in a :class:`~testbed.pool.RunPool` (at most
        ``workers`` items are given), judged and noted in the order given either way."""
        if self.workers == 1 and self.cluster is None:
            return [self.attempt(*item) for item in items]
        built: list[tuple[Load, str, str, Scenario | SchemaError]] = []
        for load, label, phase in items:
            try:
                built.append((load, label, phase, ranges_mod.build(self.data, load)))
            except SchemaError as exc:
                built.append((load, label, phase, exc))
        runs = [(label, sc) for _, label, _, sc in built if isinstance(sc, Scenario)]
        if runs:
            self.check_time(runs[0][1])
        dones: dict[str, Done] = {}
        got: list[Tried] = []
        try:
            with (RunPool(self.workers) if self.cluster is None
                  else RunPool(self.workers, backend=self.cluster)) as pool:
                specs = [RunSpec(sc, self.out / label, log=self.out / "progress.log")
                         for label, sc in runs]
                for (label, _), done in zip(runs, pool.run(specs)):
                    dones[label] = done
        finally:            # however the wave ended, what ran is judged and noted
            fatal = [self.note_done(load, label, phase, sc, dones.get(label), got)
                     for load, label, phase, sc in built]
        for exc in fatal:
            if exc is not None:
                raise exc
        return got

    def note_done(self, load: Load, label: str, phase: str, sc: Scenario | SchemaError,
                  done: Optional[Done], got: list[Tried]) -> Optional[TestbedError]:
        """Judge and note one run of a wave (or its refused load); the error that must
        stop the campaign, if the run raised one (as :meth:`run_one` would)."""
        if isinstance(sc, SchemaError):
            got.append(self.note(Tried(len(self.tried) + 1, label, phase, load, REFUSED,
                                       detail=str(sc).replace("\n", " "))))
            return None
        entry = Tried(len(self.tried) + 1, label, phase, load, NO_VERDICT,
                      run_dir=str(self.out / label))
        fatal: Optional[TestbedError] = None
        if done is None:
            entry.detail = "interrupted"
        elif done.error is not None:
            entry.detail = str(done.error)
            self.failed_in_a_row += 1
            if isinstance(done.error, (ConfigError, EnvironmentProblem)) or \
                    self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                fatal = done.error
        else:
            self.failed_in_a_row = 0
        entry.wall_s = round(done.wall_s, 1) if done is not None else 0.0
        self.walls.append(entry.wall_s)
        self.judge(entry, load, label)
        got.append(self.note(entry))
        return fatal

    def run_one(self, sc: Scenario, label: str) -> str:
        """One run with the orchestrator. A failure of the testbed's own (a node that
        did not start) is returned as the run's detail and the campaign goes on, as a
        compare batch does, until several in a row say the machine is broken; a wrong
        scenario or machine stops it at once."""
        with open(self.out / "progress.log", "a") as log:
            try:
                Orchestrator(sc, out_dir=self.out / label, progress=Progress(out=log)).run()
            except (ConfigError, EnvironmentProblem):
                raise
            except TestbedError as exc:
                self.failed_in_a_row += 1
                if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    raise
                return str(exc)
        self.failed_in_a_row = 0
        return ""

    def judge(self, entry: Tried, load: Load, label: str) -> None:
        """The run's verdict against the claim; index and record the run folder."""
        run_dir = self.out / label
        params = {k: str(v) for k, v in load.items()}
        run = results.read_run(run_dir, label, params)
        if run is None:
            return                      # never started: no summary.json to index
        self.index.append(results.BatchEntry(label, label, params))
        results.write_index(self.out, self.title, self.index)
        store.record_run(run_dir, "stress", label, params, batch=self.out)
        entry.verdict, entry.status = run.verdict, run.status
        entry.detail = entry.detail or run.detail
        if run.verdict is None:
            entry.outcome = NO_VERDICT
        elif run.invalid:               # starved (testbed.fidelity): its verdict is not evidence
            entry.outcome = INVALID
            why = "; ".join((run.summary.get("fidelity") or {}).get("invalid_by") or [])
            entry.detail = f"verdict {run.verdict} not counted: the run was past a fidelity bound ({why})"
        elif self.claim.refutes(run):
            entry.outcome = COUNTEREXAMPLE
        elif self.claim.holds(run):
            entry.outcome = HOLDS
        else:
            entry.outcome = INCONCLUSIVE

    @property
    def title(self) -> str:
        return f"{self.base.name}: stress search, policy {self.policy}, seed {self.seed}"

    # -- time ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fits(self, sc: Scenario) -> bool:
        """Does the time left cover one more run of ``sc`` (see the module docstring)?"""
        need = max(self.walls) if self.walls else sc.deadline_s + RUN_OVERHEAD_S
        return self.elapsed() + need <= self.budget_s

    def check_time(self, sc: Scenario) -> None:
        if not self.fits(sc):
            raise OutOfTime()

    # -- what is written and shown ---------------------------------------------------------------

    def note(self, entry: Tried) -> Tried:
        """Keep and show one load tried."""
        self.tried.append(entry)
        with open(self.out / TRIED, "a") as f:
            f.write(json.dumps(asdict(entry)) + "\n")
        what = entry.verdict or entry.status or "no run"
        moved = {k: v for k, v in entry.load.items() if self.defaults.get(k) != v}
        self.say(f"[{entry.n:3d}] {entry.label:<20} {_load_text(moved)} -> {what}: "
                 f"{entry.outcome}  ({entry.wall_s:.1f} s; {_clock(self.elapsed())} of "
                 f"{_clock(self.budget_s)})"
                 + (f"  [{entry.detail[:160]}]" if entry.outcome in (INVALID, NO_VERDICT, REFUSED) else ""))
        return entry

    def say(self, text: str) -> None:
        print(text, file=self.echo, flush=True)

    def counts(self) -> dict[str, int]:
        by = [t.outcome for t in self.tried]
        return {"tried": len(self.tried), "sampled": sum(t.phase == "sample" for t in self.tried),
                "runs": sum(t.outcome != REFUSED for t in self.tried),
                **{o: by.count(o) for o in (REFUSED, INVALID, NO_VERDICT, INCONCLUSIVE, HOLDS,
                                            COUNTEREXAMPLE)},
                "counterexamples_found": len(self.found),
                "counterexamples_confirmed": sum(f.confirmed is True for f in self.found),
                "counterexamples_not_confirmed": sum(f.confirmed is False for f in self.found),
                "counterexamples_not_judged": sum(f.confirmed is None for f in self.found),
                "shrunk_confirmed": sum(f.shrunk_confirmed is True for f in self.found)}

    def write_summary(self) -> None:
        doc = {"scenario": self.base.name, "scenario_file": str(self.base_file),
               "policy": self.policy, "claim": self.claim.claim, "seed": self.seed,
               "budget_s": self.budget_s, "ranges": str(self.ranges.path),
               "started": self.started_utc, "elapsed_s": round(self.elapsed(), 1),
               "stopped_by": self.stopped_by, "defaults": self.defaults,
               "counts": self.counts(),
               "confirm": {"runs": self.n_confirm, "hypothesis":
                           hypothesis(self.claim.claim, self.n_confirm),
                           "p0": P0, "alpha": stats.ALPHA,
                           "runs_needed": stats.runs_to_support(P0),
                           "cannot_confirm": cannot_confirm(self.n_confirm)},
               "counterexamples": [f.to_json(self.defaults, self.claim.claim)
                                   for f in self.found]}
        (self.out / SUMMARY).write_text(json.dumps(doc, indent=2))
        (self.out / REPORT).write_text(report_text(doc))

    def print_summary(self) -> None:
        c = self.counts()
        self.say(f"\nstress {self.base.name}, policy {self.policy}: {c['tried']} loads tried "
                 f"in {_clock(self.elapsed())} ({self.stopped_by}): {c['runs']} runs, "
                 f"{c[INVALID]} invalid (past a fidelity bound), {c[NO_VERDICT]} without a "
                 f"verdict, {c[REFUSED]} loads refused by the checker, "
                 f"{c[INCONCLUSIVE]} inconclusive, {c[HOLDS]} held the claim, "
                 f"{c[COUNTEREXAMPLE]} refuted it")
        self.say(f"counterexamples: {c['counterexamples_found']} found, "
                 f"{c['counterexamples_confirmed']} confirmed, "
                 f"{c['counterexamples_not_confirmed']} not confirmed, "
                 f"{c['counterexamples_not_judged']} not judged, each by {self.n_confirm} "
                 f"fresh runs ({hypothesis(self.claim.claim, self.n_confirm)}; "
                 f"at {stats.ALPHA:g})")
        if cannot_confirm(self.n_confirm):
            self.say(f"  {cannot_confirm(self.n_confirm)}")
        for f in self.found:
            self.say(f"  {f.label}: {f.confirmation.text() if f.confirmation else 'not run'}")
            if f.shrunk is None or f.shrunk.load == f.load:
                if f.scenario_file:
                    why = ("no key can go back to the scenario's value" if
                           f.shrunk.converged else "the campaign ended first")
                    self.say(f"    not shrunk ({why}) -> {f.scenario_file}")
                continue
            conf = f.shrunk_confirmation
            self.say(f"    shrunk to {_load_text(f.shrunk.changed(self.defaults))}: "
                     f"{conf.text() if conf else 'not confirmed: no time left to run it'}")
            self.say(f"    -> {f.scenario_file} ("
                     + ("the shrunk load)" if f.shrunk_confirmed else
                        "the sampled load: shrunk, not confirmed)"))
            if f.shrunk_file:
                self.say(f"    -> {f.shrunk_file} (the shrunk load, to confirm)")
        self.say(f"report: {self.out / REPORT}")

    def write_counterexample(self, found: Found) -> str:
        """``counterexample-K.yaml``: the confirmed load (:attr:`Found.written_load`) as
        a scenario that extends the scenario file, holding only what differs from it;
        checked by loading it back. A shrunk load that the campaign could not judge is
        written beside it (:meth:`write_unconfirmed`)."""
        load = found.written_load
        for other in self.found:        # the same load as one already written: its file
            if other is not found and other.scenario_file and other.written_load == load:
                self.say(f"  {found.label}: the same load as {other.label}")
                return other.scenario_file
        k = 1 + sum(1 for f in self.found if f.scenario_file)
        conf = found.shrunk_confirmation if found.shrunk_confirmed and \
            found.shrunk_confirmation is not None else found.confirmation
        shrunk = found.shrunk is not None and found.shrunk.load != found.load
        what = ("shrunk toward" if load != found.load else
                "its shrunk load not confirmed, so as sampled; shrunk toward" if shrunk else
                "not shrunk toward")
        head = (f"# A counterexample to '{self.claim.claim}', found by testbed stress (seed "
                f"{self.seed}, load {found.label}), {what} {self.base.name}'s values.\n"
                f"# Confirmed: {conf.text() if conf else '?'}.\n"
                f"# `testbed run` on it reaches a verdict other than the expected one.\n")
        path = self.out / f"counterexample-{k}.yaml"
        self.write_load(load, path, f"{self.base.name}-stress-{self.policy}-{k}", head)
        found.shrunk_file = self.write_unconfirmed(found, k)
        return str(path)

    def write_unconfirmed(self, found: Found, k: int) -> Optional[str]:
        """``counterexample-K-shrunk.yaml``: the shrunk load whose confirmation the
        campaign ended before judging (the budget, or Ctrl-C). It is the smallest load
        that failed once, no more: its header says so and how to confirm it. Not written
        when the shrunk load was confirmed (it is then ``counterexample-K.yaml``) or
        refuted by its fresh runs (it is no counterexample)."""
        if found.shrunk is None or found.shrunk.load == found.load or \
                found.shrunk_confirmed is not None:
            return None
        path = self.out / f"counterexample-{k}-shrunk.yaml"
        n = self.n_confirm
        head = (f"# The shrunk load of counterexample-{k}.yaml ('{self.claim.claim}', "
                f"testbed stress seed {self.seed}, load {found.label}): it refuted the "
                f"claim in its one\n# shrinking run, and the campaign ended before its {n} "
                f"fresh runs. NOT CONFIRMED. To confirm it:\n#   testbed compare "
                f"{path.name} --policies {self.policy} --repeat {n}\n"
                f"# and test the count as the campaign does ({hypothesis(self.claim.claim, n)}"
                f").\n")
        self.write_load(found.shrunk.load, path,
                        f"{self.base.name}-stress-{self.policy}-{k}-shrunk", head)
        return str(path)

    def write_load(self, load: Load, path: Path, name: str, head: str) -> None:
        """``load`` as a scenario file that extends the campaign's scenario file with
        only what differs (a workload list whole, less its defaults), or whole when
        ``extends:`` could not say it; the claim's verdict is its expectation (the base
        scenario's can be what the models give, as contention's for the 2005 fixes is)."""
        sc = ranges_mod.build(self.data, load)
        sc.name = name
        sc.expect_by_policy = {**sc.expect_by_policy, self.policy: self.claim.expect}
        diff = _diff(scenario_mod.load(self.base_file).to_dict(), sc.to_dict())
        for w in (diff.get("client") or {}).get("workloads", []):
            for key, v in asdict(WorkloadConfig()).items():
                if w.get(key) == v and key != "kind":
                    w.pop(key)
        rel = os.path.relpath(self.base_file.resolve(), path.parent.resolve())
        path.write_text(head + yaml.safe_dump({"extends": rel, **diff}, sort_keys=False))
        if scenario_mod.load(path).to_dict() != sc.to_dict():   # extends could not say it
            path.write_text(head + scenario_mod.dump(sc))


def _diff(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What of ``new`` differs from ``base``: mappings key by key, anything else whole
    (as ``extends:`` merges)."""
    out: dict[str, Any] = {}
    for k, v in new.items():
        b = base.get(k)
        if isinstance(v, dict) and isinstance(b, dict) and v:
            sub = _diff(b, v)
            if sub:
                out[k] = sub
        elif v != b:
            out[k] = v
    return out


def _load_text(load: Load) -> str:
    return " ".join(f"{k}={v}" for k, v in load.items()) or "(the scenario's defaults)"


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _shrunk_lines(f: dict[str, Any]) -> list[str]:
    """The report's lines on a confirmed counterexample's shrinking and its scenario."""
    s = f["shrunk"]
    how = ("no single key can go back to the scenario's value and still fail"
           if s["converged"] else "stopped before it converged")
    smallest = (f"Smallest failing load: `{_load_text(s['changed'])}`, every other key at "
                f"the scenario's value.")
    if s["attempts"]:
        lines = [f"Shrinking: {s['attempts']} runs ({how}). {smallest}"]
    elif s["converged"]:        # every candidate answered by an earlier shrink's runs
        lines = [f"Shrunk without a new run (its candidates were run before in this "
                 f"campaign, or none differs from the scenario). {smallest}"]
    else:
        lines = ["Not shrunk: the budget left no time for a run."]
    if s["load"] != f["load"]:
        conf = s["confirmation"]
        lines.append(f"Its confirmation: {conf['text'] if conf else 'not run'}"
                     + ("." if s["confirmed"] else
                        " (shrunk, not confirmed: the scenario holds the sampled load)."))
    lines.append(f"Scenario: `{f['scenario_file']}`.")
    if f.get("shrunk_file"):
        lines.append(f"The shrunk load, not confirmed: `{f['shrunk_file']}` (its header says "
                     f"how to confirm it).")
    return lines + [""]


def report_text(doc: dict[str, Any]) -> str:
    """``report.md``: the campaign as a page (from the same document as stress.json)."""
    c = doc["counts"]
    lines = [f"# Stress search: {doc['scenario']} under {doc['policy']}", "",
             f"Claim tested: **{doc['claim']}**. Seed {doc['seed']}, budget "
             f"{_clock(doc['budget_s'])}, ranges `{doc['ranges']}`, started {doc['started']}, "
             f"ran {_clock(doc['elapsed_s'])}, stopped by {doc['stopped_by']}.", "",
             "| loads tried | runs | invalid (fidelity) | no verdict | refused loads | "
             "inconclusive | held | refuted |",
             "|---|---|---|---|---|---|---|---|",
             f"| {c['tried']} | {c['runs']} | {c[INVALID]} | {c[NO_VERDICT]} | "
             f"{c.get(REFUSED, '-')} | {c[INCONCLUSIVE]} | {c[HOLDS]} | {c[COUNTEREXAMPLE]} |",
             "",
             f"Counterexamples: {c['counterexamples_found']} found, "
             f"{c['counterexamples_confirmed']} confirmed, "
             f"{c['counterexamples_not_confirmed']} not confirmed, "
             f"{c['counterexamples_not_judged']} not judged.", "",
             f"Each is confirmed by {doc['confirm']['runs']} fresh runs: "
             f"{doc['confirm']['hypothesis']}, at {doc['confirm']['alpha']:g}."
             + (f" {doc['confirm']['cannot_confirm']}." if doc['confirm']['cannot_confirm']
                else ""), ""]
    if not doc["counterexamples"]:
        lines.append("No load within the ranges refuted the claim in this campaign.")
    for f in doc["counterexamples"]:
        conf = f["confirmation"]
        lines += [f"## {f['label']}", "", f"Sampled load: `{_load_text(f['load'])}`.",
                  f"Confirmation: {conf['text'] if conf else 'not run'}"
                  + ("." if f["confirmed"] else "; not shrunk."), ""]
        if f.get("shrunk") and f["confirmed"]:
            lines += _shrunk_lines(f)
    lines += ["Every load tried, with its run folder: `tried.ndjson`; the runs are indexed in "
              "`runs.json` and in the results store (`testbed results`).", ""]
    return "\n".join(lines)
