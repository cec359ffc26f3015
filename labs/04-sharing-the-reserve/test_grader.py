"""Grader of lab 4 (sharing the reserve): one test per check, run by `testbed lab check 4`.

The student swept the threshold with four runs per setting up front (``testbed sweep
--repeat 4``). Figures are the medians of each setting's runs that finished, computed by
the function that writes the sweep's stats.json; the trade the lab is about (threshold 1
against 0: fewer other drops, less free memory) is a pair of hypotheses judged with the
one-sided Mann-Whitney U test on the student's own runs: the right answer is what they
support at 95 %, whichever it is. Fixed are only the policy, the settings 0 and 1, and
the number of runs. The predictions earn their point for having been recorded before the
sweep's first run, not for being right; the short answers are only checked to be
written: a TA grades them with the instructor's rubric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, Tally, agrees, evidence,
                             expect, predictions, same, shortanswers)
from testbed.results import GroupStats

SWEEP = "runs/threshold"
KEY = "client.threshold"
RUNS = 4
PREDICTIONS = ("predict_most_other_drops", "predict_threshold_1_outcome")
SHORT_ANSWERS = ("prediction_vs_result", "why_free_memory_falls")


@pytest.fixture(scope="module")
def sweep(batch_folder) -> BatchFolder:
    b = batch_folder(SWEEP)
    for r in b.runs:
        expect(r.run.policy == "phillips-2005-threshold",
               f"{r.run.name} is not a run of phillips-2005-threshold: lab 4 sweeps "
               f"threshold.yaml as given")
    values = [float(v) for v in b.values(KEY)]
    expect(0.0 in values and 1.0 in values,
           f"{b.name} must include threshold 0 and threshold 1: run step 1 as written")
    for v in b.values(KEY):
        expect(len(b.select(KEY, v)) >= RUNS, f"{b.name} has fewer than {RUNS} runs at "
               f"threshold {v}: step 1 asks for {RUNS} of each (--repeat {RUNS}) before "
               f"you look at any of them")
    return b


@pytest.fixture(scope="module")
def groups(sweep: BatchFolder) -> dict[float, GroupStats]:
    """Per threshold, the statistics stats.json holds."""
    return {float(g.params[KEY]): g for g in evidence.group_figures(sweep).values()}


def per_threshold(groups: dict[float, GroupStats], answers: Answers, key: str, figure: str,
                  what: str, rel: float, abs_: float, unit: str = "") -> None:
    said: dict[float, Any] = {}
    for k, v in answers.mapping(key).items():
        try:
            said[float(k)] = float(v)
        except (TypeError, ValueError):
            raise CheckFailed(f"{key}: an entry is not 'threshold: number'")
    tally = Tally(key)
    for t, g in sorted(groups.items()):
        median = g.estimates[figure].median
        if median is None:                 # no run of this setting finished
            continue

        def one(t: float = t, median: float = median) -> None:
            expect(t in said, f"{key} has no entry for threshold {t:g}: write one per "
                   f"threshold of your sweep")
            agrees(said[t], median, f"{what} at threshold {t:g} ({key})",
                   f"the median of {figure} at threshold {t:g} in {SWEEP}/stats.json",
                   rel=rel, abs_=abs_, unit=unit)
        tally.entry(one)
    tally.close()


def conclusion(groups: dict[float, GroupStats], figure: str) -> str:
    """Does ``figure`` tend to be smaller at threshold 1 than at 0 (one-sided U, 95 %)?"""
    test = evidence.less_test(groups[1.0].values[figure], groups[0.0].values[figure])
    return evidence.word(test.supported)


@pytest.mark.points(1)
def test_four_runs_at_each_threshold(sweep: BatchFolder) -> None:
    """runs/threshold holds the four runs per threshold that step 1 asks for."""


@pytest.mark.points(2)
def test_other_drops(groups: dict[float, GroupStats], answers: Answers) -> None:
    """Other drops per threshold agree with your runs' medians (within 2 %)."""
    per_threshold(groups, answers, "other_drops", "rx_other_drops", "the median of other "
                  "drops", rel=0.02, abs_=2)


@pytest.mark.points(1)
def test_completion_time(groups: dict[float, GroupStats], answers: Answers) -> None:
    """Times to the outcome per threshold agree with your runs' medians (within 0.2 s)."""
    per_threshold(groups, answers, "completion_s", "time_s", "the median time to the "
                  "outcome", rel=0, abs_=0.2, unit=" s")


@pytest.mark.points(2)
def test_lowest_free_memory(groups: dict[float, GroupStats], answers: Answers) -> None:
    """The lowest free memory per threshold agrees with your runs' medians (5 pages or 10 %)."""
    per_threshold(groups, answers, "lowest_free_pages", "lowest_free_pages",
                  "the median of the lowest free memory", rel=0.10, abs_=5, unit=" pages")


@pytest.mark.points(2)
def test_fewer_other_drops(groups: dict[float, GroupStats], answers: Answers) -> None:
    """Your conclusion on other drops is what your runs support at 95 % (Mann-Whitney U)."""
    same(answers.conclusion("fewer_other_drops"), conclusion(groups, "rx_other_drops"),
         "fewer_other_drops: not what the one-sided Mann-Whitney U test gives for your "
         "rx_other_drops values at thresholds 1 and 0 at 95 % (supported when p < 0.05)")


@pytest.mark.points(2)
def test_less_headroom(groups: dict[float, GroupStats], answers: Answers) -> None:
    """Your conclusion on free memory is what your runs support at 95 % (Mann-Whitney U)."""
    same(answers.conclusion("less_headroom"), conclusion(groups, "lowest_free_pages"),
         "less_headroom: not what the one-sided Mann-Whitney U test gives for your "
         "lowest_free_pages values at thresholds 1 and 0 at 95 % (supported when p < 0.05)")


@pytest.mark.points(1)
def test_storage_drops(groups: dict[float, GroupStats], answers: Answers) -> None:
    """The storage drops over the sweep agree with your runs (within 2 %)."""
    total = sum(sum(g.values["rx_storage_drops"]) for g in groups.values())
    agrees(answers.number("storage_drops_total"), total,
           "storage drops over the sweep (storage_drops_total)",
           f"the sum of rx_storage_drops over the finished runs of {SWEEP}", rel=0.02, abs_=2)


@pytest.mark.points(2)
def test_chosen_threshold(groups: dict[float, GroupStats], answers: Answers) -> None:
    """Your choice is the clean threshold with the smallest median of other drops."""
    clean = [t for t, g in groups.items()
             if g.verdicts.get("completed", 0) == g.runs
             and not any(g.values["rx_storage_drops"])]
    said = answers.text("chosen_threshold").lower()
    if not clean:
        same(said, "none", "chosen_threshold: no threshold of your sweep had every run "
             "complete without a storage drop, so the answer is none")
        return
    best = min(clean, key=lambda t: (groups[t].estimates["rx_other_drops"].median, -t))
    try:
        value = float(said)
    except ValueError:
        raise CheckFailed("chosen_threshold must be a threshold of your sweep (or none)")
    same(value, best, "chosen_threshold: not the threshold with the smallest median of "
         "other drops among those all of whose runs completed without a storage drop")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers,
                                          sweep: BatchFolder) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    predictions.check_on_time(work, answers, PREDICTIONS, [r.run for r in sweep.runs], 4)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
