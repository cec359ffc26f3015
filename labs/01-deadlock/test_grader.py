"""Grader of lab 1 (the deadlock): one test per check, run by `testbed lab check 1`.

Every figure is compared with the student's own run folder ``runs/none``; only the
verdict and the policy are fixed (a lab-1 run is a ``none`` run that locks up).
"""

from __future__ import annotations

import pytest

from testbed.grading import (Answers, CheckFailed, RunFolder, agrees, expect,
                          expect_finished)

RUN = "runs/none"
ALLOC_CLASSES = ("kernel", "nofs", "noio", "nowait", "atomic", "memalloc")


@pytest.fixture(scope="module")
def run(run_folder) -> RunFolder:
    r = run_folder(RUN)
    expect(r.policy == "none",
           f"{r.name} is a run of policy {r.policy}, but lab 1 is about the 2005 vanilla "
           f"kernel: run step 1 as written (deadlock.yaml, policy none)")
    expect_finished(r, "run step 1 again")
    expect(r.verdict == "lockup",
           f"{r.name} ended '{r.verdict}', not 'lockup': this lab needs a run that locked "
           f"up; check that deadlock.yaml is unchanged and run step 1 again")
    return r


@pytest.fixture(scope="module")
def lockup(run: RunFolder) -> dict:
    lk = run.summary.get("lockup")
    if not lk:
        raise CheckFailed(f"{run.name}/summary.json has no lockup evidence; run step 1 again")
    return lk


@pytest.fixture(scope="module")
def lockup_sample(run: RunFolder, lockup: dict) -> dict:
    before = [s for s in run.all_samples if s["t"] <= lockup["t"]]
    if not before:
        raise CheckFailed(f"{run.name}/client.ndjson has no sample before the lockup; "
                          f"run step 1 again")
    return before[-1]


def test_the_run_is_a_none_run_that_locked_up(run: RunFolder) -> None:
    """runs/none is a run of policy none whose verdict is lockup."""


def test_writeback_stopped(run: RunFolder, answers: Answers) -> None:
    """The time writeback stopped agrees with your plot (within 0.5 s)."""
    agrees(answers.number("writeback_stopped_s"), run.last_progress_t(),
           "the time writeback stopped (writeback_stopped_s)",
           f"the written-back curve of {run.name}", abs_=0.5, unit=" s")


def test_lockup_time(run: RunFolder, lockup: dict, answers: Answers) -> None:
    """The time of the lockup agrees with the detector's (within 0.3 s)."""
    agrees(answers.number("lockup_s"), lockup["t"], "the time of the lockup (lockup_s)",
           f"the red line of {run.name} (lockup.t in summary.json)", abs_=0.3, unit=" s")


def test_free_memory_against_the_min_watermark(run: RunFolder, lockup: dict,
                                               answers: Answers) -> None:
    """Free pages and the min watermark at the lockup, and which is larger, are your run's."""
    agrees(answers.number("free_pages_at_lockup"), lockup["free"],
           "free pages at the lockup (free_pages_at_lockup)", f"lockup.free of {run.name}",
           rel=0.10, abs_=5)
    agrees(answers.number("min_watermark_pages"), lockup["wmark_min"],
           "the min watermark (min_watermark_pages)", f"lockup.wmark_min of {run.name}",
           abs_=1)
    side = "below" if lockup["free"] < lockup["wmark_min"] else "above"
    said = answers.choice("free_vs_min", ("above", "below"))
    expect(said == side, f"free_vs_min: you wrote {said}, but at the lockup {lockup['free']} "
           f"pages were free against a min watermark of {lockup['wmark_min']}: free memory "
           f"was {side} it")


def test_failed_allocation_class(run: RunFolder, lockup: dict, answers: Answers) -> None:
    """The allocation class you named is the one that failed most in your run."""
    fails = lockup.get("alloc_fail") or {}
    worst = max(ALLOC_CLASSES, key=lambda c: fails.get(c, 0))
    said = answers.choice("failed_allocation", ALLOC_CLASSES)
    expect(said == worst, f"failed_allocation: you wrote {said} ({fails.get(said, 0)} "
           f"failures), but in {run.name} it is {worst} that failed ({fails.get(worst, 0)} "
           f"times; see lockup.alloc_fail): which context allocates a received frame?")


def test_storage_frames_dropped(run: RunFolder, answers: Answers) -> None:
    """The dropped storage frames and their reason agree with summary.json (within 2 %)."""
    total = run.drops("memalloc")
    agrees(answers.number("storage_frames_dropped"), total,
           "dropped frames of the storage flow (storage_frames_dropped)",
           f"drops.memalloc.total of {run.name}", rel=0.02, abs_=2)
    reasons = {k: v for k, v in run.summary["drops"]["memalloc"].items() if k != "total"}
    expect(bool(reasons), f"{run.name} dropped no storage frame, so there is no reason to "
           f"name; run step 1 again")
    top = max(reasons, key=reasons.get)
    said = answers.text("storage_drop_reason").upper()
    expect(said == top, f"storage_drop_reason: you wrote {said}, but most storage frames "
           f"of {run.name} were dropped for {top} ({reasons[top]} of {total}; drops.memalloc)")


def test_memory_held_at_the_lockup(run: RunFolder, lockup_sample: dict,
                                   answers: Answers) -> None:
    """Socket-buffer and dirty memory agree with the last sample before the lockup (10 %)."""
    where = (f"the last sample before the lockup in {run.name}/client.ndjson "
             f"(t={lockup_sample['t']})")
    agrees(answers.number("skb_mib_at_lockup"), lockup_sample["skb"] / 256,
           "socket-buffer memory at the lockup (skb_mib_at_lockup)", where,
           rel=0.10, abs_=0.25, unit=" MiB")
    agrees(answers.number("dirty_mib_at_lockup"), lockup_sample["dirty"] / 256,
           "dirty memory at the lockup (dirty_mib_at_lockup)", where,
           rel=0.10, abs_=0.25, unit=" MiB")


def test_why_writeback_could_not_complete(run: RunFolder, lockup: dict,
                                          answers: Answers) -> None:
    """Your explanation matches the evidence: the answers could not get a receive buffer."""
    said = answers.choice("why_no_progress", ("a", "b", "c", "d"))
    dropped = run.drops("memalloc")
    hints = {
        "a": f"the target did answer: {dropped} of its frames reached the client and were "
             f"dropped there (drops.memalloc)",
        "c": f"the writer was not what stopped: {lockup['dirty']} dirty pages were waiting "
             f"for writeback, which made no progress",
        "d": "a lockup is no progress at all for several seconds, not slow progress: more "
             "time would not have helped",
    }
    expect(said == "b", f"why_no_progress: {said} does not match your run: {hints.get(said)}")
