"""The graders' pytest plugin: the student's work folder, and a record of each check.

``testbed lab check N [DIR]`` runs ``labs/NN-slug/test_grader.py`` with
``--work DIR`` (the student's work folder) and ``--grade-json FILE``; this file
gives every grader its fixtures and writes, per test, its status, its points and the
sentence to show (see :func:`testbed.grading.check_sentence`):

* ``work``: the work folder (a :class:`pathlib.Path`);
* ``answers``: the student's ``answers.yaml`` (:class:`testbed.grading.Answers`);
* ``key``: the lab's multiple-choice key from the instructor's tree
  (:class:`testbed.grading.Key`; empty in a student copy);
* ``run_folder(rel)`` / ``batch_folder(rel)``: a run, or a compare/sweep folder,
  of the work folder, whose absence is a sentence, not a traceback.

A grader is a plain pytest file: one test function per check, its docstring the
sentence shown when it passes, a :class:`testbed.grading.CheckFailed` (or an
``assert`` with a message) the sentence shown when it fails, ``@pytest.mark.points(n)``
what it is worth (1 when unmarked). A ``CheckFailed`` may carry partial credit and the
figures compared, which only an instructor sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from testbed.grading import (KEY, Answers, BatchFolder, CheckFailed, Key, NotApplicable,
                             NotGradedHere, RunFolder, check_name, check_sentence,
                             instructor_dir)

_results: list[dict] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--work", default=".", help="the student's work folder")
    parser.addoption("--grade-json", default=None, help="write each check's result here")


@pytest.fixture(scope="session")
def work(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--work")).resolve()


@pytest.fixture(scope="session")
def answers(work: Path) -> Answers:
    return Answers.load(work / "answers.yaml", work)


@pytest.fixture(scope="module")
def key(request: pytest.FixtureRequest) -> Key:
    return Key.load(instructor_dir(Path(request.module.__file__).parent) / KEY)


@pytest.fixture(scope="session")
def run_folder(work: Path) -> Callable[[str], RunFolder]:
    return lambda rel: RunFolder.open(work / rel, work)


@pytest.fixture(scope="session")
def batch_folder(work: Path) -> Callable[[str], BatchFolder]:
    return lambda rel: BatchFolder.open(work / rel, work)


def _points(item: pytest.Item) -> float:
    mark = item.get_closest_marker("points")
    return float(mark.args[0]) if mark and mark.args else 1.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        exc = call.excinfo.value if call.excinfo is not None else None
        doc = getattr(getattr(item, "function", None), "__doc__", None)
        name = check_name(item.nodeid)
        if isinstance(exc, NotApplicable):      # nothing to read, as the student said
            rep.outcome, doc, exc = "passed", str(exc), None
        status = ("passed" if rep.passed else
                  "ungraded" if isinstance(exc, NotGradedHere) else "failed")
        credit = 1.0 if rep.passed else getattr(exc, "credit", 0.0)
        _results.append({"name": name, "status": status, "passed": rep.passed,
                         "points": _points(item), "credit": credit,
                         "sentence": check_sentence(rep.passed, doc, exc, name),
                         "values": getattr(exc, "values", "") if isinstance(exc, CheckFailed)
                         else ""})


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--grade-json")
    if path:
        Path(path).write_text(json.dumps({"checks": _results}, indent=1))
