"""The grading library: find the course's labs, hand them out, read what students measured, grade it.

A lab is a folder ``labs/NN-slug/`` of the project (``NN`` is its number)::

    README.md        the handout: "# Lab N: Title", then "## Goal", "## Background",
                     "## Start", "## Steps", "## Questions", "## What a correct result
                     looks like", "## Check". Commands are the fenced blocks marked
                     ```sh, one command a line, run as written from the work folder.
    *.yaml           the scenario files the steps run (copied to the student)
    answers.yaml     the questions with measurable answers, blank (copied)
    test_grader.py   the grader: pytest, one test function per check, with its points
                     (in the student copy of the course, not in a work folder)

and, in the instructor's tree ``instructor/labs/NN-slug/`` (never in a student copy):
``solve.py`` (the method), the reference ``answers.yaml``, ``README.md`` (the reasoning,
the reference machine's figures), ``key.yaml`` (the multiple-choice key) and
``rubric.yaml`` (the TA's rubric of the short answers).

The layers, as in the rest of the testbed:

* model: :class:`Lab`, :func:`find_labs`, :func:`get_lab`, :class:`Handout` (the
  README parsed: title, goal, steps and their commands), :func:`start` (copy the
  student's files into a work folder), :func:`student_copy` (a course's student tree);
* what graders and solutions read: :class:`RunFolder` (one run: ``summary.json``,
  the client's metric stream, the scenario as run), :class:`BatchFolder` (a compare
  or sweep folder: ``runs.json`` and its runs), :class:`Answers` (the student's
  ``answers.yaml``) and :class:`Key` (the multiple-choice key). Everything that can be
  missing or wrong raises :class:`CheckFailed` with one sentence a student understands;
* what repeated runs support (:mod:`.evidence`): the verdict's rate and "smaller than"
  tested with :mod:`testbed.stats`, the figures' medians as ``stats.json`` has them;
* checks: :func:`expect`, :func:`agrees` (a stated figure against the student's *own*
  run, with a tolerance), :func:`keyed_choice` and :class:`Tally` (partial credit), which
  raise :class:`CheckFailed`: a sentence naming the key and the tolerance, never the
  figures, which it carries apart for instructors;
* what a program does not judge (:mod:`.predictions`, :mod:`.shortanswers`): a
  prediction earns its points for having been recorded (``testbed lab predict``) before
  the lab's first run, never for being right; a short answer is only checked to be
  written, and the batch grader collects it for a TA with the instructor's rubric;
* running a grader: :func:`check` runs the lab's pytest grader in a child process
  (``labs/conftest.py`` records each test's status, points and sentence as JSON) and
  returns a :class:`Grade`, printed for people, Gradescope or JUnit.

Graders never compare with fixed figures another machine would not reproduce: they
compare what a student wrote with the student's own run folders, and judge the
student's conclusions with the statistics of the student's own repeated runs.
"""

from __future__ import annotations

from .checks import Tally, agrees, expect, expect_finished, keyed_choice, same, tolerance_text, within
from .course import (ANSWERS, GRADER, KEY, LABS_DIR, NOT_COPIED, PROJECT_LABS, Block, Handout,
                     Lab, Step, find_labs, get_lab, instructor_dir, start, student_copy)
from .errors import CheckFailed, LabError, NotApplicable, NotGradedHere
from . import evidence, predictions, shortanswers
from .evidence import CONCLUSIONS, NOT_SUPPORTED, SUPPORTED
from .readers import Answers, BatchFolder, BatchRun, Key, RunFolder, fill_answers
from .runner import (GRADE_TIMEOUT_S, SHOW_VALUES_ENV, CheckResult, Grade, check, check_name,
                     check_sentence)

__all__ = ["ANSWERS", "CONCLUSIONS", "GRADER", "GRADE_TIMEOUT_S", "KEY", "LABS_DIR",
           "NOT_COPIED", "NOT_SUPPORTED", "PROJECT_LABS", "SHOW_VALUES_ENV", "SUPPORTED",
           "Answers", "BatchFolder", "BatchRun", "Block", "CheckFailed", "CheckResult",
           "Grade", "Handout", "Key", "Lab", "LabError", "NotApplicable", "NotGradedHere", "RunFolder", "Step",
           "Tally", "agrees", "check", "check_name", "check_sentence", "expect",
           "evidence", "expect_finished", "predictions", "shortanswers", "fill_answers", "find_labs", "get_lab", "instructor_dir",
           "keyed_choice", "same", "start", "student_copy", "tolerance_text", "within"]
