"""Grader of lab 1 (the deadlock): one test per check, run by `testbed lab check 1`.

The student ran the load five times up front (``testbed compare --policies none
--repeat 5``). The conclusion "none locks this load up" is judged with the exact
one-sided binomial test on the student's own runs: the right answer is what those runs
support at 95 %, whichever it is. The lockup's figures are read from the first run that
locked up (in runs.json order) and compared with what the student wrote; fixed are only
the policy and the number of runs asked for. The predictions earn their point for having
been recorded before the first run (not for being right); the short answers are only
checked to be written: a TA grades them with the instructor's rubric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, Key, NotApplicable, RunFolder,
                             agrees, evidence, expect, keyed_choice, predictions, same,
                             shortanswers)

BATCH = "runs/none"
RUNS = 5
ALLOC_CLASSES = ("kernel", "nofs", "noio", "nowait", "atomic", "memalloc")
PREDICTIONS = ("predict_lockups", "predict_failed_allocation")
SHORT_ANSWERS = ("prediction_vs_result", "why_downloads_hold_memory")


@pytest.fixture(scope="module")
def runs(batch_folder) -> list[RunFolder]:
    b: BatchFolder = batch_folder(BATCH)
    got = b.policy_runs("none")
    expect(len(got) == len(b.runs),
           f"{b.name} holds runs of other policies than none, but lab 1 is about the 2005 "
           f"vanilla kernel: run step 1 as written (deadlock.yaml, --policies none)")
    expect(len(got) >= RUNS, f"{b.name} has fewer than {RUNS} runs: step 1 asks for "
           f"{RUNS} (--repeat {RUNS}) before you look at any of them")
    return got


@pytest.fixture(scope="module")
def first_lockup(runs: list[RunFolder]) -> Optional[RunFolder]:
    return next((r for r in runs if r.finished and r.verdict == "lockup"), None)


def lockup_of(run: Optional[RunFolder]) -> tuple[RunFolder, dict]:
    """The run to read and its lockup evidence; NotApplicable when no run locked up."""
    if run is None:
        raise NotApplicable("no run of yours locked up, so there was no lockup to read: "
                            "not graded")
    lk = run.summary.get("lockup")
    if not lk:
        raise CheckFailed(f"{run.name}/summary.json says lockup but has no lockup evidence: "
                          f"hand in the run folder as the run left it")
    return run, lk


def dir_name(run: RunFolder) -> str:
    return run.path.name


@pytest.mark.points(1)
def test_five_runs_of_none(runs: list[RunFolder]) -> None:
    """runs/none holds the five runs of policy none that step 1 asks for."""


@pytest.mark.points(1)
def test_lockup_count(runs: list[RunFolder], answers: Answers) -> None:
    """The number of runs that locked up is your runs' count."""
    n = sum(r.verdict == "lockup" for r in runs)
    said = answers.integer("lockups")
    same(said, n, f"lockups: not the number of runs of {BATCH} whose summary.json says "
         f"verdict lockup (exactly)")


@pytest.mark.points(2)
def test_conclusion_from_your_runs(runs: list[RunFolder], answers: Answers) -> None:
    """Your conclusion is what your runs support at 95 % (exact one-sided binomial test)."""
    evidence.check_verdict_conclusion(answers, "none_locks_up", runs, "lockup")


@pytest.mark.points(1)
def test_the_run_read(first_lockup: Optional[RunFolder], answers: Answers) -> None:
    """The run you read is the first of yours that locked up."""
    right = dir_name(first_lockup) if first_lockup else "none"
    same(answers.text("lockup_run").strip("/").split("/")[-1], right,
         "lockup_run: not the first of your runs (none_1, none_2, ...) whose verdict is "
         "lockup")


@pytest.mark.points(1)
def test_writeback_stopped(first_lockup: Optional[RunFolder], answers: Answers) -> None:
    """The time writeback stopped agrees with your plot (within 0.5 s)."""
    run, _ = lockup_of(first_lockup)
    agrees(answers.number("writeback_stopped_s"), run.last_progress_t(),
           "the time writeback stopped (writeback_stopped_s)",
           f"the written-back curve of {run.name}", abs_=0.5, unit=" s")


@pytest.mark.points(1)
def test_lockup_time(first_lockup: Optional[RunFolder], answers: Answers) -> None:
    """The time of the lockup agrees with the detector's (within 0.3 s)."""
    run, lk = lockup_of(first_lockup)
    agrees(answers.number("lockup_s"), lk["t"], "the time of the lockup (lockup_s)",
           f"the red line of {run.name} (lockup.t in summary.json)", abs_=0.3, unit=" s")


@pytest.mark.points(2)
def test_free_memory_against_the_min_watermark(first_lockup: Optional[RunFolder],
                                               answers: Answers) -> None:
    """Free pages and the min watermark at the lockup, and which is larger, are your run's."""
    run, lk = lockup_of(first_lockup)
    agrees(answers.number("free_pages_at_lockup"), lk["free"],
           "free pages at the lockup (free_pages_at_lockup)", f"lockup.free of {run.name}",
           rel=0.10, abs_=5)
    agrees(answers.number("min_watermark_pages"), lk["wmark_min"],
           "the min watermark (min_watermark_pages)", f"lockup.wmark_min of {run.name}",
           abs_=1)
    side = "below" if lk["free"] < lk["wmark_min"] else "above"
    said = answers.choice("free_vs_min", ("above", "below"))
    same(said, side, f"free_vs_min: not what lockup.free and lockup.wmark_min of {run.name} "
         f"say")


@pytest.mark.points(1)
def test_failed_allocation_class(first_lockup: Optional[RunFolder], answers: Answers) -> None:
    """The allocation class you named is the one that failed most in your run."""
    run, lk = lockup_of(first_lockup)
    fails = lk.get("alloc_fail") or {}
    worst = max(ALLOC_CLASSES, key=lambda c: fails.get(c, 0))
    said = answers.choice("failed_allocation", ALLOC_CLASSES)
    same(said, worst, f"failed_allocation: not the class with the most failures in "
         f"lockup.alloc_fail of {run.name}: which context allocates a received frame?")


@pytest.mark.points(2)
def test_storage_frames_dropped(first_lockup: Optional[RunFolder], answers: Answers) -> None:
    """The dropped storage frames and their reason agree with summary.json (within 2 %)."""
    run, _ = lockup_of(first_lockup)
    agrees(answers.number("storage_frames_dropped"), run.drops("memalloc"),
           "dropped frames of the storage flow (storage_frames_dropped)",
           f"drops.memalloc.total of {run.name}", rel=0.02, abs_=2)
    reasons = {k: v for k, v in run.summary["drops"]["memalloc"].items() if k != "total"}
    top = max(reasons, key=reasons.get) if any(reasons.values()) else "none"
    said = answers.text("storage_drop_reason").upper()
    same(said, top.upper(), f"storage_drop_reason: not the reason with the most storage "
         f"drops in drops.memalloc of {run.name}")


@pytest.mark.points(2)
def test_memory_held_at_the_lockup(first_lockup: Optional[RunFolder], answers: Answers) -> None:
    """Socket-buffer and dirty pages agree with the last sample before the lockup (10 %)."""
    run, lk = lockup_of(first_lockup)
    before = [s for s in run.all_samples if s["t"] <= lk["t"]]
    if not before:
        raise CheckFailed(f"{run.name}/client.ndjson has no sample before the lockup: hand "
                          f"in the run folder as the run left it")
    where = f"the last sample before the lockup in {run.name}/client.ndjson"
    agrees(answers.number("skb_pages_at_lockup"), before[-1]["skb"],
           "socket-buffer pages at the lockup (skb_pages_at_lockup)", where,
           rel=0.10, abs_=64, unit=" pages")
    agrees(answers.number("dirty_pages_at_lockup"), before[-1]["dirty"],
           "dirty pages at the lockup (dirty_pages_at_lockup)", where,
           rel=0.10, abs_=64, unit=" pages")


@pytest.mark.points(3)
def test_why_writeback_could_not_complete(answers: Answers, key: Key) -> None:
    """Your explanation matches the evidence."""
    keyed_choice(answers, key, "why_no_progress", ("a", "b", "c", "d"),
                 "compare each statement with drops.memalloc, lockup.free against the "
                 "atomic floor, and the written-back curve")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers,
                                          runs: list[RunFolder]) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    predictions.check_on_time(work, answers, PREDICTIONS, runs, 1)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
