"""Grader of lab 4 (sharing the reserve): one test per check, run by `testbed lab check 4`.

Every figure is read from the student's own sweep runs/threshold; the only relation
required of the runs themselves is the trade the lab is about (threshold 1 against 0:
fewer other drops, lower lowest-free memory).
"""

from __future__ import annotations

from typing import Callable

import pytest

from testbed.grading import (Answers, BatchFolder, BatchRun, CheckFailed, RunFolder, agrees, expect,
                          expect_finished)

SWEEP = "runs/threshold"
KEY = "client.threshold"


def lowest_free(run: RunFolder) -> int:
    return min(s["free"] for s in run.all_samples)


@pytest.fixture(scope="module")
def sweep(batch_folder) -> BatchFolder:
    b = batch_folder(SWEEP)
    for r in b.runs:
        expect(r.run.policy == "phillips-2005-threshold",
               f"{r.run.name} is a run of policy {r.run.policy}: lab 4 sweeps "
               f"phillips-2005-threshold (threshold.yaml as given)")
        expect_finished(r.run, "run the sweep again")
    values = [float(v) for v in b.values(KEY)]
    expect(0.0 in values and 1.0 in values,
           f"{b.name} must include threshold 0 and threshold 1 (it has "
           f"{', '.join(f'{v:g}' for v in values) or 'none'}): run step 1 as written")
    return b


def at(b: BatchFolder, value: float) -> BatchRun:
    return b.select(KEY, value)[0]


def per_threshold(b: BatchFolder, answers: Answers, key: str, measure: Callable[[RunFolder], float],
                  what: str, rel: float, abs_: float, unit: str = "") -> None:
    said: dict[float, float] = {}
    for k, v in answers.mapping(key).items():
        try:
            said[float(k)] = float(v)
        except (TypeError, ValueError):
            raise CheckFailed(f"{key}: '{k}: {v}' is not 'threshold: number'")
    for r in b.runs:
        t = float(r.params[KEY])
        expect(t in said, f"{key} has no entry for threshold {t:g}; your sweep has "
               f"{', '.join(b.values(KEY))}")
        agrees(said[t], measure(r.run), f"{what} at threshold {t:g} ({key})", r.run.name,
               rel=rel, abs_=abs_, unit=unit)


def trend(low: float, high: float) -> str:
    return "down" if high < low else "up" if high > low else "flat"


def test_the_sweep_shows_the_trade(sweep: BatchFolder) -> None:
    """Your sweep shows the trade: threshold 1 drops less other traffic, leaves less free memory."""
    r0, r1 = at(sweep, 0).run, at(sweep, 1).run
    expect(r1.drops("other") < r0.drops("other"),
           f"in your sweep threshold 1 dropped {r1.drops('other')} frames of other traffic "
           f"and threshold 0 {r0.drops('other')}: the runs did not show what the knob buys; "
           f"runs vary, so run the sweep again into a fresh folder")
    expect(lowest_free(r1) < lowest_free(r0),
           f"in your sweep free memory went down to {lowest_free(r1)} pages at threshold 1 "
           f"and to {lowest_free(r0)} at threshold 0: the runs did not show what the knob "
           f"costs; run the sweep again into a fresh folder")


def test_other_drops(sweep: BatchFolder, answers: Answers) -> None:
    """Other drops per threshold agree with your runs (within 2 %)."""
    per_threshold(sweep, answers, "other_drops", lambda r: r.drops("other"),
                  "other drops", rel=0.02, abs_=2)


def test_completion_time(sweep: BatchFolder, answers: Answers) -> None:
    """Completion times per threshold agree with your runs (within 0.2 s)."""
    per_threshold(sweep, answers, "completion_s", lambda r: r.time_s,
                  "the time to completion", rel=0, abs_=0.2, unit=" s")


def test_lowest_free_memory(sweep: BatchFolder, answers: Answers) -> None:
    """The lowest free memory per threshold agrees with your runs (within 5 pages or 10 %)."""
    per_threshold(sweep, answers, "lowest_free_pages", lowest_free,
                  "the lowest free memory", rel=0.10, abs_=5, unit=" pages")


def test_trends(sweep: BatchFolder, answers: Answers) -> None:
    """The directions you gave agree with your runs at threshold 0 and 1."""
    r0, r1 = at(sweep, 0).run, at(sweep, 1).run
    for key, what, low, high in (
            ("other_drops_trend", "other drops", r0.drops("other"), r1.drops("other")),
            ("lowest_free_trend", "the lowest free memory", lowest_free(r0), lowest_free(r1))):
        said = answers.choice(key, ("down", "up", "flat"))
        right = trend(low, high)
        expect(said == right, f"{key}: you wrote {said}, but {what} went from {low} at "
               f"threshold 0 to {high} at threshold 1 in your sweep: {right}")


def test_storage_drops(sweep: BatchFolder, answers: Answers) -> None:
    """The storage drops over the sweep agree with your runs (within 2 %)."""
    total = sum(r.run.drops("memalloc") for r in sweep.runs)
    agrees(answers.number("storage_drops_total"), total,
           "storage drops over the sweep (storage_drops_total)",
           f"the sum of drops.memalloc.total over {sweep.name}", rel=0.02, abs_=2)


def test_chosen_threshold(sweep: BatchFolder, answers: Answers) -> None:
    """Your choice is the threshold with the fewest other drops among the clean runs."""
    clean = [r for r in sweep.runs
             if r.run.verdict == "completed" and r.run.drops("memalloc") == 0]
    expect(bool(clean), f"no run of {sweep.name} completed without a storage drop, so there "
           f"is nothing to choose from; run the sweep again")
    best = min(clean, key=lambda r: (r.run.drops("other"), -float(r.params[KEY])))
    said = answers.number("chosen_threshold")
    right = float(best.params[KEY])
    expect(said == right,
           f"chosen_threshold: you wrote {said:g}, but among your runs that lost no storage "
           f"frame ({', '.join(r.params[KEY] for r in clean)}) threshold {right:g} dropped "
           f"the fewest other frames ({best.run.drops('other')})")
