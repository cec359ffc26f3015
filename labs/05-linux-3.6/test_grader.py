"""Grader of lab 5 (Linux 3.6): one test per check, run by `testbed lab check 5`.

Five runs of each policy, made up front (``testbed compare --repeat 5``). The verdict
claim is judged with the exact one-sided binomial test on the student's own runs (the
right answer is what they support at 95 %, whichever it is); counts are exact, figures
are medians over the runs that finished, and the first throttle is read from the first
gorman-3.6 run that was throttled. Fixed are only the policies and the number of runs.
The predictions earn their point for having been recorded before the first run, not for
being right; the short answers are only checked to be written: a TA grades them with the
instructor's rubric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, Key, NotApplicable, RunFolder,
                             Tally, agrees, evidence, expect, keyed_choice, predictions, same,
                             shortanswers)

COMPARE = "runs/compare"
POLICIES = ("phillips-2005", "gorman-3.6")
RUNS = 5
FILTER_REASON = {"phillips-2005": "NOT_MEMALLOC", "gorman-3.6": "PFMEMALLOC"}
PREDICTIONS = ("predict_throttled_runs", "predict_more_filter_drops")
SHORT_ANSWERS = ("prediction_vs_result", "what_the_throttle_protects")


@pytest.fixture(scope="module")
def runs(batch_folder) -> dict[str, list[RunFolder]]:
    b: BatchFolder = batch_folder(COMPARE)
    got = {p: b.policy_runs(p) for p in POLICIES}
    for p, rs in got.items():
        expect(len(rs) >= RUNS, f"{b.name} has fewer than {RUNS} runs of {p}: step 1 asks "
               f"for {RUNS} of each (--repeat {RUNS}) before you look at any of them")
    return got


def finished(rs: list[RunFolder]) -> list[RunFolder]:
    return [r for r in rs if r.finished]


def last(run: RunFolder, key: str) -> Any:
    return run.all_samples[-1].get(key)


def throttled(run: RunFolder) -> bool:
    return bool(last(run, "pgscan_direct_throttle"))


def per_policy(runs: dict[str, list[RunFolder]], answers: Answers, key: str,
               measure: Callable[[list[RunFolder]], Optional[float]], what: str,
               rel: float = 0.0, abs_: float = 0.0, unit: str = "") -> None:
    """One entry per policy against ``measure`` of its runs (an entry with nothing to
    measure, None, is not graded); partial credit per entry."""
    said = answers.mapping(key)
    tally = Tally(key)
    for p, rs in runs.items():
        measured = measure(rs)
        if measured is None:
            continue

        def one(p: str = p, measured: float = measured) -> None:
            expect(p in said, f"{key} has no entry for {p}: write one per policy, "
                   f"e.g. {{phillips-2005: ..., gorman-3.6: ...}}")
            try:
                value = float(said[p])
            except (TypeError, ValueError):
                raise CheckFailed(f"{key} for {p} must be a number")
            agrees(value, measured, f"{what} of {p} ({key})", f"your {p} runs",
                   rel=rel, abs_=abs_, unit=unit)
        tally.entry(one)
    tally.close()


@pytest.mark.points(1)
def test_five_runs_of_each_policy(runs: dict[str, list[RunFolder]]) -> None:
    """runs/compare holds the five runs of each policy that step 1 asks for."""


@pytest.mark.points(1)
def test_completion_counts(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The number of completed runs per policy is your runs' count."""
    per_policy(runs, answers, "completions",
               lambda rs: sum(r.verdict == "completed" for r in rs),
               "the number of completed runs")


@pytest.mark.points(2)
def test_gorman_completes(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """Your conclusion on gorman-3.6 is what your runs support at 95 % (binomial test)."""
    evidence.check_verdict_conclusion(answers, "gorman_completes", runs["gorman-3.6"],
                                      "completed", "gorman-3.6")


@pytest.mark.points(2)
def test_watermarks_and_reserves(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The min watermarks and the pages added for the network are those of your runs."""
    per_policy(runs, answers, "min_watermark", lambda rs: rs[0].samples[0]["wmark_min"],
               "the min watermark", unit=" pages")
    per_policy(runs, answers, "added_reserve_pages",
               lambda rs: sum((rs[0].samples[-1].get("reserve_pages") or {}).values()),
               "the pages added for the network", unit=" pages")


@pytest.mark.points(2)
def test_filter_drops(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The drops of each policy's protocol step agree with your runs' medians (within 2 %)."""
    def measure(rs: list[RunFolder]) -> Optional[float]:
        p = rs[0].policy
        return evidence.median([r.drops("other", FILTER_REASON[p]) for r in finished(rs)])
    per_policy(runs, answers, "filter_drops", measure, "the median of the protocol step's "
               "drops", rel=0.02, abs_=2)


@pytest.mark.points(1)
def test_completion_time(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The completion times agree with your completed runs' medians (within 0.2 s)."""
    per_policy(runs, answers, "completion_s",
               lambda rs: evidence.median([r.time_s for r in rs if r.verdict == "completed"]),
               "the median time to completion", abs_=0.2, unit=" s")


@pytest.mark.points(1)
def test_throttled_runs(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The number of runs in which direct reclaim was throttled is your runs' count."""
    per_policy(runs, answers, "throttled_runs",
               lambda rs: sum(throttled(r) for r in finished(rs)),
               "the number of throttled runs")


@pytest.mark.points(1)
def test_first_throttle(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The first throttle is where the samples of your first throttled gorman-3.6 run show it."""
    run = next((r for r in runs["gorman-3.6"] if r.finished and throttled(r)), None)
    if run is None:
        said = answers.text("first_throttle_s").lower()
        expect(said == "none", "first_throttle_s: none of your gorman-3.6 runs was "
               "throttled, so the answer is none")
        raise NotApplicable("no gorman-3.6 run of yours was throttled, and you said so")
    first = next(s for s in run.all_samples if s.get("pgscan_direct_throttle"))
    agrees(answers.number("first_throttle_s"), first["t"], "the first throttle "
           "(first_throttle_s)", "the first sample with pgscan_direct_throttle above 0 in "
           "your first throttled gorman-3.6 run", abs_=0.2, unit=" s")


@pytest.mark.points(1)
def test_throttle_limit(runs: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The throttle limit is half the min watermark of the gorman-3.6 runs (within 1 page)."""
    wmin = runs["gorman-3.6"][0].samples[0]["wmark_min"]
    agrees(answers.number("throttle_limit_pages"), wmin // 2,
           "the free pages at or below which direct reclaim waits (throttle_limit_pages)",
           "half the min watermark of your gorman-3.6 runs", abs_=1, unit=" pages")


@pytest.mark.points(3)
def test_who_is_throttled(answers: Answers, key: Key) -> None:
    """Throttled are the tasks the code of step 3 lets through to the wait."""
    keyed_choice(answers, key, "who_is_throttled", ("a", "b", "c", "d"),
                 "read step 3's code again: which tasks return before the wait?")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers,
                                          runs: dict[str, list[RunFolder]]) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    predictions.check_on_time(work, answers, PREDICTIONS,
                              [r for rs in runs.values() for r in rs], 5)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
