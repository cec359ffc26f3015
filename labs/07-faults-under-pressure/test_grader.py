"""Grader of lab 7 (faults under pressure): one test per check, run by `testbed lab check 7`.

Step 1 makes five runs of each policy with the target restarted when free memory first
reaches min (``runs/pressure``, ``compare --repeat 5``); step 2 one run of each with the
same restart and memory to spare (``runs/calm``). The recovery episodes are read from
each run's ``recoveries`` (the initiator's events in its own metric stream, which a
hand-in's verification summarises again). The two verdict claims are judged with the
exact one-sided binomial test on the student's own runs (the right answer is what they
support at 95 %, whichever it is); counts are exact, times medians over the runs that
reinstated, and the figures of "the first run that ..." come from that run of the
student's (``none`` when there is none: under gorman-3.6 a reinstatement's SYN goes out
on a socket not yet marked, so step 1 may have none); the read-back is step 2's. Fixed
are only the policies and the number of runs. The predictions earn their point for
having been recorded before the first run, not for being right; the short answers are
only checked to be written: a TA grades them with the rubric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from testbed import stats
from testbed.grading import (Answers, BatchFolder, CheckFailed, Key, NotApplicable, RunFolder,
                             Tally, agrees, evidence, expect, keyed_choice, predictions, same,
                             shortanswers)

PRESSURE, CALM = "runs/pressure", "runs/calm"
POLICIES = ("phillips-2005", "gorman-3.6")
RUNS = 5
PREDICTIONS = ("predict_phillips_reinstated", "predict_reinstate_under_pressure")
SHORT_ANSWERS = ("prediction_vs_result", "recovery_needs_memory")


def of_each_policy(batch_folder, rel: str, n: int, step: str) -> dict[str, list[RunFolder]]:
    b: BatchFolder = batch_folder(rel)
    got = {p: b.policy_runs(p) for p in POLICIES}
    for p, rs in got.items():
        expect(len(rs) >= n, f"{b.name} has fewer than {n} run(s) of {p}: {step} asks for "
               f"{n} of each before you look at any of them")
    return got


@pytest.fixture(scope="module")
def pressure(batch_folder) -> dict[str, list[RunFolder]]:
    return of_each_policy(batch_folder, PRESSURE, RUNS, "step 1 (--repeat 5)")


@pytest.fixture(scope="module")
def calm(batch_folder) -> dict[str, list[RunFolder]]:
    return of_each_policy(batch_folder, CALM, 1, "step 2")


def episode(run: RunFolder) -> Optional[dict[str, Any]]:
    """The run's first recovery episode (the restart's), None if it had none."""
    got = run.summary.get("recoveries") or []
    return got[0] if got else None


def reinstate_s(run: RunFolder) -> Optional[float]:
    """Seconds from the loss to the reinstatement (None: never reinstated)."""
    ep = episode(run)
    if ep is None or ep.get("reinstated_t") is None:
        return None
    return ep["reinstated_t"] - ep["lost_t"]


def first_reinstated(runs: list[RunFolder]) -> Optional[RunFolder]:
    return next((r for r in runs if reinstate_s(r) is not None), None)


def per_policy(runs: dict[str, list[RunFolder]], answers: Answers, key: str,
               measure: Callable[[list[RunFolder]], float], what: str, where: str) -> None:
    """One entry per policy, exactly ``measure`` of its runs; partial credit per entry."""
    said = answers.mapping(key)
    tally = Tally(key)
    for p, rs in runs.items():
        def one(p: str = p, measured: float = measure(rs)) -> None:
            expect(p in said, f"{key} has no entry for {p}: write one per policy, "
                   f"e.g. {{phillips-2005: ..., gorman-3.6: ...}}")
            try:
                value = float(said[p])
            except (TypeError, ValueError):
                raise CheckFailed(f"{key} for {p} must be a number")
            agrees(value, measured, f"{what} of {p} ({key})", f"your {p} runs of {where}")
        tally.entry(one)
    tally.close()


def none_or(answers: Answers, key: str, run: Optional[RunFolder], why: str) -> RunFolder:
    """``run``; when there is none, the answer must be ``none`` and the check is not graded."""
    if run is None:
        expect(answers.text(key).lower() == "none", f"{key}: {why}, so the answer is none")
        raise NotApplicable(f"{why}, and you said so")
    return run


@pytest.mark.points(1)
def test_the_runs_of_both_steps(pressure: dict[str, list[RunFolder]],
                                calm: dict[str, list[RunFolder]]) -> None:
    """runs/pressure holds five runs of each policy and runs/calm one of each, as the steps ask."""


@pytest.mark.points(1)
def test_completion_counts(pressure: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The number of completed runs per policy is your step 1 runs' count."""
    per_policy(pressure, answers, "completions",
               lambda rs: sum(r.verdict == "completed" for r in rs),
               "the number of completed runs", "step 1")


@pytest.mark.points(2)
def test_phillips_locks_up(pressure: dict[str, list[RunFolder]], answers: Answers) -> None:
    """Your conclusion on phillips-2005 is what your runs support at 95 % (binomial test)."""
    evidence.check_verdict_conclusion(answers, "phillips_locks_up", pressure["phillips-2005"],
                                      "lockup", "phillips-2005")


def reinstatement_test(runs: list[RunFolder]) -> stats.RateTest:
    """Exact one-sided binomial test that the session is reinstated in more than half of
    ``runs`` (those that reached a verdict, as for the verdict claims)."""
    done = [r for r in runs if r.finished]
    return stats.rate_test(sum(reinstate_s(r) is not None for r in done), len(done))


@pytest.mark.points(2)
def test_gorman_recovers(pressure: dict[str, list[RunFolder]], answers: Answers) -> None:
    """Your conclusion on gorman-3.6 is what your runs support at 95 % (binomial test)."""
    same(answers.conclusion("gorman_recovers"),
         evidence.word(reinstatement_test(pressure["gorman-3.6"]).supported),
         "gorman_recovers: not what the exact one-sided binomial test gives for your "
         "gorman-3.6 counts of reinstated sessions at 95 % (supported when p < 0.05)")


@pytest.mark.points(1)
def test_reinstated_runs(pressure: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The number of runs whose session was reinstated is your step 1 runs' count."""
    per_policy(pressure, answers, "reinstated_runs",
               lambda rs: sum(reinstate_s(r) is not None for r in rs),
               "the number of runs that reinstated their session", "step 1")


@pytest.mark.points(1)
def test_reinstatement_under_pressure(pressure: dict[str, list[RunFolder]],
                                      answers: Answers) -> None:
    """The time to reinstate under pressure agrees with your gorman-3.6 runs' median (within 0.2 s)."""
    times = [t for t in map(reinstate_s, pressure["gorman-3.6"]) if t is not None]
    if not times:
        none_or(answers, "pressure_reinstate_s", None,
                "none of your gorman-3.6 runs of step 1 reinstated its session")
    agrees(answers.number("pressure_reinstate_s"), evidence.median(times),
           "the median time from the loss to the reinstatement (pressure_reinstate_s)",
           "reinstated_t - lost_t of your gorman-3.6 runs of step 1 that reinstated",
           abs_=0.2, unit=" s")


@pytest.mark.points(1)
def test_reinstatement_without_pressure(calm: dict[str, list[RunFolder]],
                                        answers: Answers) -> None:
    """The times to reinstate without pressure are those of your step 2 runs (within 0.2 s)."""
    said = answers.mapping("calm_reinstate_s")
    tally = Tally("calm_reinstate_s")
    for p, rs in calm.items():
        def one(p: str = p, measured: Optional[float] = reinstate_s(rs[0])) -> None:
            expect(p in said, f"calm_reinstate_s has no entry for {p}: write one per policy")
            if measured is None:
                expect(str(said[p]).strip().lower() == "none", f"calm_reinstate_s for {p}: "
                       f"your {p} run of step 2 never reinstated its session, so it is none")
                return
            try:
                value = float(said[p])
            except (TypeError, ValueError):
                raise CheckFailed(f"calm_reinstate_s for {p} must be a number of seconds")
            agrees(value, measured, f"the time from the loss to the reinstatement of {p} "
                   f"(calm_reinstate_s)", f"reinstated_t - lost_t of your {p} run of step 2",
                   abs_=0.2, unit=" s")
        tally.entry(one)
    tally.close()


@pytest.mark.points(1)
def test_commands_reissued(pressure: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The commands re-issued are those of your first gorman-3.6 run that reinstated."""
    run = none_or(answers, "reissued", first_reinstated(pressure["gorman-3.6"]),
                  "none of your gorman-3.6 runs of step 1 reinstated its session")
    ep = episode(run) or {}
    agrees(answers.number("reissued"), ep.get("reissued", 0), "the commands re-issued "
           "(reissued)", f"the recovery episode of {run.name}", unit=" commands")


@pytest.mark.points(1)
def test_storage_frames_dropped_on_transmit(pressure: dict[str, list[RunFolder]],
                                            answers: Answers) -> None:
    """The storage frames dropped on transmit agree with your phillips-2005 runs' median (within 2 %)."""
    done = [r for r in pressure["phillips-2005"] if r.finished]
    expect(bool(done), "tx_storage_drops: none of your phillips-2005 runs of step 1 finished; "
           "ask your TA")
    measured = evidence.median([r.outcome.tx_drops("memalloc") or 0 for r in done])
    agrees(answers.number("tx_storage_drops"), measured, "the median of the storage frames "
           "dropped on transmit (tx_storage_drops)", "drops.tx.memalloc.total of your "
           "phillips-2005 runs of step 1", rel=0.02, abs_=2, unit=" frames")


@pytest.mark.points(1)
def test_read_back(pressure: dict[str, list[RunFolder]], calm: dict[str, list[RunFolder]],
                   answers: Answers) -> None:
    """The pages checked and the mismatches are those your runs' read-backs recorded."""
    # step 2's run: under pressure no gorman-3.6 run need complete (its reinstatement's SYN
    # goes out on a socket not yet marked), so there may be no read-back in step 1
    run = calm["gorman-3.6"][0]
    expect(run.verdict == "completed", "pages_checked: your gorman-3.6 run of step 2 did not "
           "complete, so there is no read-back to read; ask your TA")
    integrity = run.summary.get("integrity") or {}
    agrees(answers.number("pages_checked"), integrity.get("pages_checked") or 0,
           "the pages the read-back checked (pages_checked)",
           f"integrity.pages_checked of {run.name}", unit=" pages")
    every = [r for rs in (*pressure.values(), *calm.values()) for r in rs]
    agrees(answers.number("mismatches"),
           sum((r.summary.get("integrity") or {}).get("mismatches") or 0 for r in every),
           "the mismatches (mismatches)", "integrity.mismatches of every run of both steps")


@pytest.mark.points(3)
def test_why_no_reinstatement(answers: Answers, key: Key) -> None:
    """Why phillips-2005 runs that lock up never reinstate is the statement your runs support."""
    keyed_choice(answers, key, "why_no_reinstatement", ("a", "b", "c", "d"),
                 "look at which storage frames were dropped, on receive and on transmit")


@pytest.mark.points(3)
def test_why_gorman_not_reinstated(answers: Answers, key: Key) -> None:
    """Why gorman-3.6 does not reinstate is the mechanism of the Background that your runs show."""
    keyed_choice(answers, key, "why_gorman_not_reinstated", ("a", "b", "c", "d"),
                 "read the Background again: when is the new socket marked, and in which "
                 "class were frames dropped on transmit?")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers,
                                          pressure: dict[str, list[RunFolder]],
                                          calm: dict[str, list[RunFolder]]) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    runs = [r for group in (pressure, calm) for rs in group.values() for r in rs]
    predictions.check_on_time(work, answers, PREDICTIONS, runs, 7)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
