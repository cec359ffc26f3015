"""The grading library: find the course's labs, hand them out, read what students measured, grade it.

A lab is a folder ``labs/NN-slug/`` of the project (``NN`` is its number)::

    README.md        the handout: "# Lab N: Title", then "## Goal", "## Background",
                     "## Start", "## Steps", "## Questions", "## What a correct result
                     looks like", "## Check". Commands are the fenced blocks marked
                     ```sh, one command a line, run as written from the work folder.
    *.yaml           the scenario files the steps run (copied to the student)
    answers.yaml     the questions with measurable answers, blank (copied)
    test_grader.py   the grader: pytest, one test function per check (not copied)
    solution/        for instructors: answers.yaml, solve.py (the method), README.md

The layers, as in the rest of the testbed:

* model: :class:`Lab`, :func:`find_labs`, :func:`get_lab`, :class:`Handout` (the
  README parsed: title, goal, steps and their commands), :func:`start` (copy the
  student's files into a work folder);
* what graders and solutions read: :class:`RunFolder` (one run: ``summary.json``,
  the client's metric stream, the scenario as run), :class:`BatchFolder` (a compare
  or sweep folder: ``runs.json`` and its runs) and :class:`Answers` (the student's
  ``answers.yaml``). Everything that can be missing or wrong raises
  :class:`CheckFailed` with one sentence a student understands;
* checks: :func:`expect` and :func:`agrees` (a stated figure against the student's
  *own* run, with a tolerance), which raise :class:`CheckFailed`;
* running a grader: :func:`check` runs the lab's pytest grader in a child process
  (``labs/conftest.py`` records each test's outcome and sentence as JSON) and
  returns a :class:`Grade`: one :class:`CheckResult` (pass/fail and a sentence)
  per check.

Graders never compare with fixed figures another machine would not reproduce: they
compare what a student wrote with the student's own run folders, and check verdicts,
orderings and signs between runs.
"""

from __future__ import annotations

from .checks import agrees, expect, expect_finished, within
from .course import (ANSWERS, GRADER, LABS_DIR, NOT_COPIED, Block, Handout, Lab, Step,
                     find_labs, get_lab, start)
from .errors import CheckFailed, LabError
from .readers import Answers, BatchFolder, BatchRun, RunFolder, fill_answers
from .runner import GRADE_TIMEOUT_S, CheckResult, Grade, check, check_name, check_sentence

__all__ = ["ANSWERS", "GRADER", "GRADE_TIMEOUT_S", "LABS_DIR", "NOT_COPIED", "Answers",
           "BatchFolder", "BatchRun", "Block", "CheckFailed", "CheckResult", "Grade",
           "Handout", "Lab", "LabError", "RunFolder", "Step", "agrees", "check",
           "check_name", "check_sentence", "expect", "expect_finished", "fill_answers",
           "find_labs", "get_lab", "start", "within"]
