"""A stress campaign: sample loads, run them, shrink what refutes the policy's claim.

The loop, under a time budget:

1. draw a load from the ranges (:mod:`.sampling`) and build the scenario with it through
   the scenario checker; a load the checker refuses is counted ``invalid``, not run;
2. run it with the orchestrator, as ``testbed compare`` runs each of its runs, into the
   campaign's folder; record it in the results store (command ``stress``, the load as the
   run's parameters) and in ``runs.json``, so the folder is a batch that
   :mod:`testbed.results`, ``testbed report`` and ``testbed results --rebuild`` read;
3. judge the verdict by the policy's claim (:data:`testbed.claims.POLICY_CLAIMS`): a fix
   that locks up, or ``none`` / ``reserve-only`` that completes, is a counterexample;
   a run without a verdict, or with a verdict that neither holds nor refutes the claim
   (``degraded``), is counted as such and is not one; nor is a run past a fidelity bound
   (:mod:`testbed.fidelity`: starved, its verdict is no evidence), counted without one;
4. on a counterexample, run the same load again to confirm it (verdicts can be
   flaky); a confirmed one is shrunk (:mod:`.shrink`), every candidate a run of its own,
   and the smallest load that still failed is written as a scenario file
   (``counterexample-K.yaml``: ``extends:`` the scenario, with only what differs; one
   file per distinct shrunk load). Shrink candidates already run for an earlier
   counterexample are not run again (the shrinker's ``known`` answers).

A run starts only if the time left covers it (the longest run so far, or before any
the scenario's deadline plus :data:`RUN_OVERHEAD_S`); a run in flight is always
finished, so a campaign can end past its budget by less than one run. Ctrl-C stops the
run in flight as ``testbed run`` does (folder marked ``interrupted``) and the campaign's
files are written before the interrupt goes on: what was found stays readable.

The folder: ``tried.ndjson`` (one line per load tried, written as it ends),
``runs.json``, one folder per run, ``progress.log`` (the runs' own progress lines),
``stress.json`` (the campaign's counts and counterexamples), ``report.md`` and the
``counterexample-K.yaml`` files.
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

from .. import claims, results, store
from .. import scenario as scenario_mod
from ..errors import ConfigError, EnvironmentProblem, TestbedError
from ..mm.config import WorkloadConfig
from ..orchestrator import Orchestrator, Progress
from ..scenario import Scenario
from ..schema import SchemaError
from . import ranges as ranges_mod
from .ranges import Load, Ranges
from .sampling import sample
from .shrink import Shrunk, shrink

RUN_OVERHEAD_S = 20.0       # bring-up, node start, read-back and report beyond the deadline
MAX_FAILED_IN_A_ROW = 3     # runs failing for the testbed's own reasons: the machine is broken
TRIED = "tried.ndjson"
SUMMARY = "stress.json"
REPORT = "report.md"

# What a load's run says about the claim.
COUNTEREXAMPLE, HOLDS, INCONCLUSIVE, NO_VERDICT, INVALID = (
    "counterexample", "holds", "inconclusive", "no-verdict", "invalid")


class OutOfTime(Exception):
    """The budget left does not cover another run."""


@dataclass
class Tried:
    """One load tried: a line of ``tried.ndjson``."""

    n: int
    label: str
    phase: str                  # sample, confirm, shrink
    load: Load
    outcome: str                # COUNTEREXAMPLE, HOLDS, INCONCLUSIVE, NO_VERDICT, INVALID
    verdict: Optional[str] = None
    status: Optional[str] = None
    run_dir: Optional[str] = None
    wall_s: float = 0.0
    detail: str = ""


@dataclass
class Found:
    """A counterexample: the sampled load, whether a re-run confirmed it, its shrinking."""

    label: str
    load: Load
    confirmed: Optional[bool] = None    # None: not re-run (the budget, or Ctrl-C)
    confirm_outcome: Optional[str] = None
    shrunk: Optional[Shrunk] = None
    scenario_file: Optional[str] = None

    def to_json(self, defaults: Load) -> dict[str, Any]:
        doc: dict[str, Any] = {"label": self.label, "load": self.load,
                               "confirmed": self.confirmed,
                               "confirm_outcome": self.confirm_outcome,
                               "scenario_file": self.scenario_file}
        if self.shrunk is not None:
            doc["shrunk"] = {"load": self.shrunk.load, "changed": self.shrunk.changed(defaults),
                             "converged": self.shrunk.converged,
                             "attempts": len(self.shrunk.attempts)}
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
    echo: TextIO = sys.stdout
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
        try:
            while True:
                load = sample(self.ranges, self.rng)
                label = f"s{sum(t.phase == 'sample' for t in self.tried) + 1:03d}"
                if self.attempt(load, label, "sample") == COUNTEREXAMPLE:
                    self.pursue(Found(label, load))
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
        """Confirm a counterexample by a re-run, then shrink it and write its scenario."""
        self.found.append(found)
        found.confirm_outcome = self.attempt(found.load, f"{found.label}-confirm", "confirm")
        found.confirmed = found.confirm_outcome == COUNTEREXAMPLE
        if not found.confirmed:
            self.say(f"  {found.label}: not confirmed: the re-run gave {found.confirm_outcome}"
                     f"; not shrunk")
            return
        self.say(f"  {found.label}: confirmed; shrinking toward the scenario's defaults")
        count = iter(range(1, 10**6))
        timed_out = []

        def fails(load: Load) -> Optional[bool]:
            try:
                return self.attempt(load, f"{found.label}-shrink{next(count):02d}",
                                    "shrink") == COUNTEREXAMPLE
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
        finally:
            if found.shrunk is None:    # interrupted mid-shrink: the confirmed load stands
                found.shrunk = Shrunk(found.load)
            found.scenario_file = self.write_counterexample(found)
        if timed_out:
            raise OutOfTime()

    def attempt(self, load: Load, label: str, phase: str) -> str:
        """Build, run and judge one load; its line in tried.ndjson and the progress."""
        try:
            sc = ranges_mod.build(self.data, load)
        except SchemaError as exc:
            return self.note(Tried(len(self.tried) + 1, label, phase, load, INVALID,
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
        return entry.outcome

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
            entry.outcome = NO_VERDICT
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

    def note(self, entry: Tried) -> str:
        """Keep and show one load tried; its outcome."""
        self.tried.append(entry)
        with open(self.out / TRIED, "a") as f:
            f.write(json.dumps(asdict(entry)) + "\n")
        what = entry.verdict or entry.status or "no run"
        moved = {k: v for k, v in entry.load.items() if self.defaults.get(k) != v}
        self.say(f"[{entry.n:3d}] {entry.label:<14} {_load_text(moved)} -> {what}: "
                 f"{entry.outcome}  ({entry.wall_s:.1f} s; {_clock(self.elapsed())} of "
                 f"{_clock(self.budget_s)})"
                 + (f"  [{entry.detail[:160]}]" if entry.outcome in (INVALID, NO_VERDICT) else ""))
        return entry.outcome

    def say(self, text: str) -> None:
        print(text, file=self.echo, flush=True)

    def counts(self) -> dict[str, int]:
        by = [t.outcome for t in self.tried]
        return {"tried": len(self.tried), "sampled": sum(t.phase == "sample" for t in self.tried),
                "runs": sum(t.outcome != INVALID for t in self.tried),
                **{o: by.count(o) for o in (INVALID, NO_VERDICT, INCONCLUSIVE, HOLDS,
                                            COUNTEREXAMPLE)},
                "counterexamples_found": len(self.found),
                "counterexamples_confirmed": sum(f.confirmed is True for f in self.found)}

    def write_summary(self) -> None:
        doc = {"scenario": self.base.name, "scenario_file": str(self.base_file),
               "policy": self.policy, "claim": self.claim.claim, "seed": self.seed,
               "budget_s": self.budget_s, "ranges": str(self.ranges.path),
               "started": self.started_utc, "elapsed_s": round(self.elapsed(), 1),
               "stopped_by": self.stopped_by, "defaults": self.defaults,
               "counts": self.counts(),
               "counterexamples": [f.to_json(self.defaults) for f in self.found]}
        (self.out / SUMMARY).write_text(json.dumps(doc, indent=2))
        (self.out / REPORT).write_text(report_text(doc))

    def print_summary(self) -> None:
        c = self.counts()
        self.say(f"\nstress {self.base.name}, policy {self.policy}: {c['tried']} loads tried "
                 f"in {_clock(self.elapsed())} ({self.stopped_by}): {c['runs']} runs, "
                 f"{c[INVALID]} invalid, {c[NO_VERDICT]} without a verdict, "
                 f"{c[INCONCLUSIVE]} inconclusive, {c[HOLDS]} held the claim, "
                 f"{c[COUNTEREXAMPLE]} refuted it")
        self.say(f"counterexamples: {c['counterexamples_found']} found, "
                 f"{c['counterexamples_confirmed']} confirmed by a re-run")
        for f in self.found:
            if f.shrunk is not None:
                self.say(f"  {f.label} shrunk to {_load_text(f.shrunk.changed(self.defaults))}"
                         f" -> {f.scenario_file}")
        self.say(f"report: {self.out / REPORT}")

    def write_counterexample(self, found: Found) -> str:
        """``counterexample-K.yaml``: the shrunk load as a scenario that extends the
        scenario file, holding only what differs from it; checked by loading it back."""
        assert found.shrunk is not None
        for other in self.found:        # shrunk to one already written: the same file
            if other is not found and other.shrunk is not None and other.scenario_file \
                    and other.shrunk.load == found.shrunk.load:
                self.say(f"  {found.label}: shrunk to the same load as {other.label}")
                return other.scenario_file
        k = 1 + sum(1 for f in self.found if f.scenario_file)
        path = self.out / f"counterexample-{k}.yaml"
        sc = ranges_mod.build(self.data, found.shrunk.load)
        sc.name = f"{self.base.name}-stress-{self.policy}-{k}"
        # expected: what the claim says, which the base scenario may not (its expectation
        # can be what the models give, as contention's for the 2005 fixes is)
        sc.expect_by_policy = {**sc.expect_by_policy, self.policy: self.claim.expect}
        head = (f"# A counterexample to '{self.claim.claim}', found by testbed stress (seed "
                f"{self.seed}, load {found.label}) and shrunk toward {self.base.name}'s values.\n"
                f"# `testbed run` on it reaches a verdict other than the expected one.\n")
        diff = _diff(scenario_mod.load(self.base_file).to_dict(), sc.to_dict())
        for w in (diff.get("client") or {}).get("workloads", []):
            for k, v in asdict(WorkloadConfig()).items():   # a list is written whole: only
                if w.get(k) == v and k != "kind":           # what differs from a workload's
                    w.pop(k)                                # own defaults
        rel = os.path.relpath(self.base_file.resolve(), path.parent.resolve())
        path.write_text(head + yaml.safe_dump({"extends": rel, **diff}, sort_keys=False))
        if scenario_mod.load(path).to_dict() != sc.to_dict():   # extends could not say it
            path.write_text(head + scenario_mod.dump(sc))
        return str(path)


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


def report_text(doc: dict[str, Any]) -> str:
    """``report.md``: the campaign as a page (from the same document as stress.json)."""
    c = doc["counts"]
    lines = [f"# Stress search: {doc['scenario']} under {doc['policy']}", "",
             f"Claim tested: **{doc['claim']}**. Seed {doc['seed']}, budget "
             f"{_clock(doc['budget_s'])}, ranges `{doc['ranges']}`, started {doc['started']}, "
             f"ran {_clock(doc['elapsed_s'])}, stopped by {doc['stopped_by']}.", "",
             "| loads tried | runs | invalid | no verdict | inconclusive | held | refuted |",
             "|---|---|---|---|---|---|---|",
             f"| {c['tried']} | {c['runs']} | {c[INVALID]} | {c[NO_VERDICT]} | "
             f"{c[INCONCLUSIVE]} | {c[HOLDS]} | {c[COUNTEREXAMPLE]} |", "",
             f"Counterexamples: {c['counterexamples_found']} found, "
             f"{c['counterexamples_confirmed']} confirmed by a re-run.", ""]
    if not doc["counterexamples"]:
        lines.append("No load within the ranges refuted the claim in this campaign.")
    for f in doc["counterexamples"]:
        confirm = {True: "Confirmed by a re-run.",
                   False: f"Not confirmed: the re-run gave {f.get('confirm_outcome')} (a verdict "
                          f"that varies from run to run); not shrunk.",
                   None: "Not re-run to confirm: the campaign ended first."}[f["confirmed"]]
        lines += [f"## {f['label']}", "", f"Sampled load: `{_load_text(f['load'])}`.",
                  confirm, ""]
        if f.get("shrunk") and f["confirmed"]:
            s = f["shrunk"]
            how = ("no single key can go back to the scenario's value and still fail"
                   if s["converged"] else "stopped before it converged")
            lines += [f"Shrinking: {s['attempts']} runs ({how}). Smallest failing load: "
                      f"`{_load_text(s['changed'])}`, every other key at the scenario's value."
                      if s["attempts"] else "Not shrunk: the budget left no time for a run.",
                      f"Scenario: `{f['scenario_file']}`.", ""]
    lines += ["Every load tried, with its run folder: `tried.ndjson`; the runs are indexed in "
              "`runs.json` and in the results store (`testbed results`).", ""]
    return "\n".join(lines)
