"""Grader of lab 3 (SOCK_MEMALLOC): one test per check, run by `testbed lab check 3`.

Part 1 is five runs of each policy, made up front (``testbed compare --repeat 5``): the
verdict claims are judged with the exact one-sided binomial test on the student's own
runs (the right answer is what they support at 95 %, whichever it is), and the figures
are medians over the runs that finished, as stats.json computes them. Part 2 reads the
two spoof runs' packet counters; required of them is only that the forged frames
arrived, which shows that step 2 was run as written. The predictions earn their point for
having been recorded before the first run of either part (not for being right); the short
answers are only checked to be written: a TA grades them with the instructor's rubric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, Key, NotApplicable, RunFolder,
                             Tally, agrees, evidence, expect, expect_finished, keyed_choice,
                             predictions, same, shortanswers)

COMPARE, SPOOF = "runs/compare", "runs/spoof"
POLICIES = ("reserve-only", "phillips-2005")
RUNS = 5
HOSTS = "topology.bulk_hosts"
PREDICTIONS = ("predict_reserve_only_outcome", "predict_filter_on_forgeries")
SHORT_ANSWERS = ("prediction_vs_result", "what_forged_frames_cost")


@pytest.fixture(scope="module")
def compare(batch_folder) -> dict[str, list[RunFolder]]:
    b: BatchFolder = batch_folder(COMPARE)
    runs = {p: b.policy_runs(p) for p in POLICIES}
    for p, rs in runs.items():
        expect(len(rs) >= RUNS, f"{b.name} has fewer than {RUNS} runs of {p}: step 1 asks "
               f"for {RUNS} of each (--repeat {RUNS}) before you look at any of them")
    return runs


def finished(runs: list[RunFolder]) -> list[RunFolder]:
    return [r for r in runs if r.finished]


def net_counters(run: RunFolder) -> dict[str, Any]:
    try:
        return json.loads((run.path / "client-outcome.json").read_text())["net"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckFailed(f"{run.name}/client-outcome.json has no packet counters: hand in "
                          f"the run folder as the sweep left it")


def storage_frames(run: RunFolder, direction: str) -> int:
    return net_counters(run)[direction]["classes"]["memalloc"]["received"]["frames"]


@pytest.fixture(scope="module")
def spoof(batch_folder) -> dict[int, RunFolder]:
    b: BatchFolder = batch_folder(SPOOF)
    runs = {}
    for r in b.runs:
        expect_finished(r.run, "step 2")
        expect(r.run.setting("bulk.mode") == "spoof",
               f"{r.run.name} was not a spoof run: run step 2 as written (spoof.yaml)")
        runs[int(float(r.params.get(HOSTS, -1)))] = r.run
    expect(0 in runs and any(h > 0 for h in runs),
           f"{b.name} needs a run without spoofing hosts and one with: run step 2 as written "
           f"(--param {HOSTS}=0,2)")
    return runs


def forged(spoof: dict[int, RunFolder]) -> tuple[RunFolder, RunFolder, int, int]:
    clean, attacked = spoof[0], spoof[max(spoof)]
    rx = storage_frames(attacked, "rx") - storage_frames(clean, "rx")
    tx = storage_frames(attacked, "tx") - storage_frames(clean, "tx")
    return clean, attacked, rx, tx


def per_policy(said: dict[Any, Any], key: str, p: str) -> float:
    expect(p in said, f"{key} has no entry for {p}: write one per policy, "
           f"e.g. {{reserve-only: ..., phillips-2005: ...}}")
    try:
        return float(said[p])
    except (TypeError, ValueError):
        raise CheckFailed(f"{key} for {p} must be a number")


@pytest.mark.points(1)
def test_five_runs_of_each_policy(compare: dict[str, list[RunFolder]]) -> None:
    """runs/compare holds the five runs of each policy that step 1 asks for."""


@pytest.mark.points(1)
def test_lockup_counts(compare: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The number of lockups per policy is your runs' count."""
    said = answers.mapping("lockups")
    tally = Tally("lockups")
    for p, rs in compare.items():
        tally.entry(lambda p=p, rs=rs: same(
            per_policy(said, "lockups", p), sum(r.verdict == "lockup" for r in rs),
            f"lockups: not the number of your {p} runs whose verdict is lockup (exactly)"))
    tally.close()


@pytest.mark.points(2)
def test_a_reserve_alone_locks_up(compare: dict[str, list[RunFolder]], answers: Answers) -> None:
    """Your conclusion on reserve-only is what your runs support at 95 % (binomial test)."""
    evidence.check_verdict_conclusion(answers, "reserve_only_locks_up", compare["reserve-only"],
                                      "lockup", "reserve-only")


@pytest.mark.points(2)
def test_the_filter_completes(compare: dict[str, list[RunFolder]], answers: Answers) -> None:
    """Your conclusion on phillips-2005 is what your runs support at 95 % (binomial test)."""
    evidence.check_verdict_conclusion(answers, "phillips_completes", compare["phillips-2005"],
                                      "completed", "phillips-2005")


@pytest.mark.points(1)
def test_reserve_in_use_at_the_lockup(compare: dict[str, list[RunFolder]],
                                      answers: Answers) -> None:
    """The reserve buffers out at a reserve-only lockup agree with your runs' median (10 %)."""
    locked = [r for r in compare["reserve-only"] if r.finished and r.verdict == "lockup"]
    if not locked:
        raise NotApplicable("none of your reserve-only runs locked up, so there was no "
                            "reserve at a lockup to read: not graded")
    used = [sum(((r.summary.get("lockup") or {}).get("reserve") or {}).values()) for r in locked]
    agrees(answers.number("reserve_skbs_at_lockup"), evidence.median(used),
           "reserve buffers out at the lockup (reserve_skbs_at_lockup)",
           "the median of lockup.reserve over your reserve-only runs that locked up",
           rel=0.10, abs_=2)


@pytest.mark.points(1)
def test_filter_drops(compare: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The filter's drops agree with the median of your phillips-2005 runs (within 2 %)."""
    drops = [r.drops("other", "NOT_MEMALLOC") for r in finished(compare["phillips-2005"])]
    expect(bool(drops), "no phillips-2005 run of runs/compare finished: ask your TA")
    agrees(answers.number("filter_drops"), evidence.median(drops),
           "the filter's drops (filter_drops)",
           "the median of drops.other.NOT_MEMALLOC over your phillips-2005 runs",
           rel=0.02, abs_=2)


@pytest.mark.points(2)
def test_storage_drops(compare: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The storage drops agree with the medians of your runs, per policy (within 2 %)."""
    said = answers.mapping("storage_drops")
    tally = Tally("storage_drops")
    for p, rs in compare.items():
        drops = [r.drops("memalloc") for r in finished(rs)]
        tally.entry(lambda p=p, drops=drops: agrees(
            per_policy(said, "storage_drops", p), evidence.median(drops) or 0.0,
            f"storage drops of {p} (storage_drops)",
            f"the median of drops.memalloc.total over your {p} runs", rel=0.02, abs_=2))
    tally.close()


@pytest.mark.points(1)
def test_forged_frames_arrived(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """The forged frames counted as storage traffic agree with your two spoof runs (within 5 %)."""
    clean, attacked, rx, _ = forged(spoof)
    expect(rx > 100, f"{attacked.name} received hardly more storage-flow frames than "
           f"{clean.name}: the forged frames did not arrive; was step 2 run as written "
           f"(spoof.yaml unchanged, --param {HOSTS}=0,2)?", f"{rx} more frames")
    agrees(answers.number("forged_frames_received"), rx,
           "forged frames taken for the storage flow (forged_frames_received)",
           f"the storage-flow frames received in {attacked.name} minus those in {clean.name}",
           rel=0.05)


@pytest.mark.points(1)
def test_the_filter_in_the_spoofed_run(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """The filter's drops in the spoofed run agree with that run (within 2 frames)."""
    attacked = spoof[max(spoof)]
    agrees(answers.number("forged_run_filter_drops"), attacked.drops("other", "NOT_MEMALLOC"),
           "the filter's drops in the spoofed run (forged_run_filter_drops)",
           f"drops.other.NOT_MEMALLOC of {attacked.name}", abs_=2)


@pytest.mark.points(1)
def test_replies_per_forged_frame(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """The replies per forged frame agree with the ratio of your two spoof runs (within 10 %)."""
    clean, attacked, rx, tx = forged(spoof)
    expect(rx > 0, f"no forged frame arrived in {attacked.name}: was step 2 run as written?")
    agrees(answers.number("replies_per_forged_frame"), tx / rx,
           "storage-flow frames sent per forged frame (replies_per_forged_frame)",
           f"(frames sent in {attacked.name} - frames sent in {clean.name}) / forged frames",
           rel=0.10)


@pytest.mark.points(3)
def test_what_the_filter_can_do(answers: Answers, key: Key) -> None:
    """Your statement on forged frames is the one your counters support."""
    keyed_choice(answers, key, "filter_against_forgery", ("a", "b", "c", "d"),
                 "compare the storage-flow frames received with and without the spoofers, "
                 "and the filter's drops in the spoofed run")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers,
                                          compare: dict[str, list[RunFolder]],
                                          spoof: dict[int, RunFolder]) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    runs = [r for rs in compare.values() for r in rs] + list(spoof.values())
    predictions.check_on_time(work, answers, PREDICTIONS, runs, 3)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
