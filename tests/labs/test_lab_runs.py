"""Every lab followed as a student would, on real Mininet runs, and graded.

For each lab the handout's commands run as written in a fresh folder (``handout(N)`` in
conftest.py: ``testbed lab start N``, ``cd labN``, the steps' runs, then the reference
solution fills ``answers.yaml`` from those fresh runs, then ``testbed lab check N``).
The tests then read that folder: every command worked, the reference solution passed
every check of the grader, nothing of the runs was left behind, and wrong hand-ins
(a run of the wrong policy, wrong answers) fail with sentences that say why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from testbed import grading
from tests.labs.conftest import HandoutRun
from tests.platform.conftest import assert_nothing_left

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.tgtd, pytest.mark.slow]


def assert_followed(h: HandoutRun) -> None:
    bad = h.failed()
    assert not bad, h.describe(bad[0])
    assert len(h.commands) == len(h.lab.handout.commands()), "the handout was not run through"
    assert h.work is not None


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_handout_runs_as_written_and_the_reference_solution_passes(handout, number):
    h = handout(number)
    assert_followed(h)
    check = h.commands[-1]
    assert check.text == f"testbed lab check {number}"
    assert f"checks passed." in check.output and "FAIL" not in check.output, check.output
    grade = grading.check(h.lab, h.work)
    assert grade.passed, "\n".join(grade.lines())
    assert len(grade.checks) >= 6
    # every run of the lab cleaned up after itself (a first try's too, if the check
    # asked for the runs again)
    for try_ in (h, h.first_try):
        if try_ is not None and try_.work is not None:
            for config in try_.work.glob("runs/**/client-config.json"):
                assert_nothing_left(json.loads(config.read_text())["run_id"])


def hand_in(tmp_path: Path, number: int, runs: dict[str, Path], answers: Path) -> Path:
    """A work folder of lab ``number`` with the given run folders and answers."""
    work = grading.start(grading.get_lab(number), tmp_path / f"lab{number}")
    for rel, src in runs.items():
        shutil.copytree(src, work / rel)
    shutil.copy(answers, work / "answers.yaml")
    return work


def test_a_phillips_run_handed_in_for_lab_1_fails_with_a_helpful_message(handout, tmp_path):
    lab1, lab5 = handout(1), handout(5)
    assert_followed(lab1)
    assert_followed(lab5)
    work = hand_in(tmp_path, 1, {"runs/none": lab5.work / "runs/compare/phillips-2005"},
                   lab1.work / "answers.yaml")
    grade = grading.check(grading.get_lab(1), work)
    assert not grade.passed and not any(c.passed for c in grade.checks)
    first = grade.failed[0].sentence
    assert first == ("runs/none is a run of policy phillips-2005, but lab 1 is about the 2005 "
                     "vanilla kernel: run step 1 as written (deadlock.yaml, policy none)")
    lines = list(grade.lines())
    assert sum(ln.startswith("  FAIL") for ln in lines) == 1   # said once, for all it stops
    assert "more checks for the same reason" in lines[2]


def test_a_compare_without_gorman_handed_in_for_lab_5_names_what_is_missing(handout, tmp_path):
    lab3, lab5 = handout(3), handout(5)
    assert_followed(lab3)
    work = hand_in(tmp_path, 5, {"runs/compare": lab3.work / "runs/compare"},
                   lab5.work / "answers.yaml")
    grade = grading.check(grading.get_lab(5), work)
    assert not grade.passed
    assert grade.failed[0].sentence == (
        "runs/compare has no gorman-3.6 run (it has: phillips-2005, reserve-only): run the "
        "compare step with --policies as the handout gives it")


def test_wrong_answers_fail_with_sentences_that_compare_with_the_run(handout, tmp_path):
    h = handout(1)
    assert_followed(h)
    answers = yaml.safe_load((h.work / "answers.yaml").read_text())
    summary = json.loads((h.work / "runs/none/summary.json").read_text())
    answers.update(lockup_s=answers["lockup_s"] + 5, failed_allocation="kernel",
                   free_vs_min="above", why_no_progress="d")
    bad = tmp_path / "answers.yaml"
    bad.write_text(yaml.safe_dump(answers))
    work = hand_in(tmp_path, 1, {"runs/none": h.work / "runs/none"}, bad)
    grade = grading.check(grading.get_lab(1), work)
    by_name = {c.name: c for c in grade.checks}
    lk = summary["lockup"]
    assert not by_name["lockup time"].passed
    assert by_name["lockup time"].sentence.startswith(
        f"the time of the lockup (lockup_s): you wrote {answers['lockup_s']:g} s, but the red "
        f"line of runs/none (lockup.t in summary.json) shows")
    assert "failed_allocation: you wrote kernel (0 failures), but in runs/none it is atomic" \
        in by_name["failed allocation class"].sentence
    assert by_name["free memory against the min watermark"].sentence == (
        f"free_vs_min: you wrote above, but at the lockup {lk['free']} pages were free against "
        f"a min watermark of {lk['wmark_min']}: free memory was below it")
    assert "a lockup is no progress at all" in by_name["why writeback could not complete"].sentence
    for name in ("the run is a none run that locked up", "writeback stopped",
                 "storage frames dropped", "memory held at the lockup"):
        assert by_name[name].passed, by_name[name].sentence
