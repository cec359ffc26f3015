"""Running a lab's grader: pytest in a child process, one result per check, and the
grade written for people (:meth:`Grade.lines`), for Gradescope
(:meth:`Grade.gradescope`, its ``results.json``) and for GitHub Classroom and CI
(:meth:`Grade.junit`, JUnit XML; the exit status of ``testbed lab check``).

``labs/conftest.py`` records each test's status, points, credit and sentence as JSON;
:func:`check` reads it back into a :class:`Grade`. Grading reads files only: it needs
neither root nor Mininet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import TimeoutExpired
from ..report.summary import read_json
from .course import GRADER, Lab
from .errors import CheckFailed, LabError, NotGradedHere

GRADE_TIMEOUT_S = 120.0
SHOW_VALUES_ENV = "TESTBED_LAB_SHOW_VALUES"   # =1: every failure also shows the figures

# -- running a grader --------------------------------------------------------------------

@dataclass
class CheckResult:
    """One check of a grader: its name, status, points and the sentence to show.

    ``status`` is ``passed``, ``failed`` or ``ungraded`` (its key is only in the
    instructor's tree); ``credit`` the share of ``points`` earned; ``values`` the
    figures compared, shown to instructors only.
    """

    name: str
    passed: bool
    sentence: str
    points: float = 1.0
    credit: float = 0.0
    values: str = ""
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "passed" if self.passed else "failed"
        if self.passed:
            self.credit = 1.0

    @property
    def graded(self) -> bool:
        return self.status != "ungraded"

    @property
    def score(self) -> float:
        return round(self.points * self.credit, 2) if self.graded else 0.0


@dataclass
class Grade:
    lab: Lab
    work: Path
    checks: list[CheckResult]

    @property
    def graded(self) -> list[CheckResult]:
        return [c for c in self.checks if c.graded]

    @property
    def passed(self) -> bool:
        """Full marks: every graded check passed."""
        return bool(self.graded) and all(c.passed for c in self.graded)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def score(self) -> float:
        return round(sum(c.score for c in self.graded), 2)

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.graded)

    def lines(self, show_values: bool = False) -> Iterator[str]:
        """The result as a student reads it: one line per check, then the count and score.
        ``show_values`` (instructors) adds the figures each failure compared."""
        yield f"lab {self.lab.number}: {self.lab.title} - checking {self.work.resolve()}"
        same: dict[str, list[str]] = {}       # a failure shared by several checks: once
        for c in self.failed:
            same.setdefault(c.sentence, []).append(c.name)
        for c in self.checks:
            if c.passed:
                yield f"  PASS  {c.sentence}"
            elif not c.graded:
                yield f"  ----  {c.sentence}"
            elif show_values or same.get(c.sentence, [None])[0] == c.name:
                yield f"  FAIL  {c.sentence}" + (f" [{c.score:g} of {c.points:g} points]"
                                                  if c.credit else "")
                if show_values and c.values:
                    yield f"        values: {c.values}"
                others = [] if show_values else same[c.sentence][1:]
                if others:
                    yield (f"        (and {len(others)} more check{'s' if len(others) > 1 else ''}"
                           f" for the same reason: {', '.join(others)})")
        ok = sum(c.passed for c in self.graded)
        yield (f"{ok} of {len(self.graded)} checks passed, {self.score:g} of "
               f"{self.max_score:g} points" +
               ("." if self.passed else "; fix what FAIL says and check again."))

    def gradescope(self, show_values: bool = False) -> dict[str, Any]:
        """Gradescope's ``results.json``: score, and per check name, score, max_score,
        output and visibility (``visible``; the figures only with ``show_values``)."""
        tests = []
        for c in self.graded:
            out = c.sentence + (f"\nvalues: {c.values}" if show_values and c.values else "")
            tests.append({"name": c.name, "score": c.score, "max_score": c.points,
                          "status": "passed" if c.passed else "failed",
                          "output": out, "visibility": "visible"})
        return {"score": self.score, "output": f"lab {self.lab.number}: {self.lab.title}",
                "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}

    def junit(self, show_values: bool = False) -> str:
        """JUnit XML: one testcase per check, a failure with its sentence, a skipped
        case for an ungraded one."""
        suite = ET.Element("testsuite", name=f"lab{self.lab.number}",
                           tests=str(len(self.checks)), failures=str(len(self.failed)),
                           skipped=str(len(self.checks) - len(self.graded)))
        for c in self.checks:
            case = ET.SubElement(suite, "testcase", classname=f"lab{self.lab.number}",
                                 name=c.name)
            case.set("points", f"{c.points:g}")
            if c.status == "failed":
                f = ET.SubElement(case, "failure", message=c.sentence)
                f.text = c.values if show_values else ""
            elif not c.graded:
                ET.SubElement(case, "skipped", message=c.sentence)
        return ET.tostring(suite, encoding="unicode")


def check(lab: Lab, work: Path, timeout: float = GRADE_TIMEOUT_S) -> Grade:
    """Run the lab's grader on the work folder ``work`` and return each check's result."""
    work = Path(work)
    if not work.is_dir():
        raise LabError(f"{work}: no such work folder (make one with `testbed lab start "
                       f"{lab.number}`, then run `testbed lab check {lab.number}` in it)")
    if not lab.grader.exists():
        raise LabError(f"{lab.path}: the lab has no {GRADER}")
    with tempfile.TemporaryDirectory(prefix="testbed-grade-") as tmp:
        out = Path(tmp) / "grade.json"
        argv = [sys.executable, "-m", "pytest", str(lab.grader), "-q", "--no-header",
                "-c", str(lab.path.parent / "pytest.ini"), "--rootdir", str(lab.path.parent),
                "--work", str(work.resolve()), "--grade-json", str(out)]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=env, cwd=str(work), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TimeoutExpired(f"lab {lab.number}: the grader did not finish in {timeout:g}s")
        got = read_json(out)
        if got is None:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise LabError(f"lab {lab.number}: the grader {lab.grader} could not run "
                           f"(pytest exit {proc.returncode}):\n{tail}")
    checks = [CheckResult(c["name"], bool(c["passed"]), c["sentence"],
                          float(c.get("points", 1.0)), float(c.get("credit", 0.0)),
                          str(c.get("values", "")), str(c.get("status", "")))
              for c in got["checks"]]
    if not checks:
        raise LabError(f"lab {lab.number}: the grader {lab.grader} has no checks")
    return Grade(lab, work, checks)


def check_sentence(passed: bool, doc: Optional[str], exc: Optional[BaseException],
                   name: str) -> str:
    """The sentence of one check: its docstring when it passed, the reason when not.

    Used by ``labs/conftest.py``: a :class:`CheckFailed` carries its own sentence;
    an ``assert`` with a message gives that message; anything else is a grader bug,
    said as such (with the error's type and text) so it is not taken for the
    student's mistake.
    """
    if passed:
        return " ".join((doc or name).strip().split("\n\n")[0].split())
    if isinstance(exc, (CheckFailed, NotGradedHere)):
        return str(exc)
    if isinstance(exc, AssertionError) and exc.args:
        return str(exc.args[0]).splitlines()[0]
    if exc is None:
        return f"{name}: failed"
    return (f"{name}: the grader could not check this ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); tell your TA")


def check_name(nodeid: str) -> str:
    """``test_grader.py::test_lockup_time`` -> ``lockup time``."""
    fn = nodeid.split("::")[-1]
    return fn[5:].replace("_", " ") if fn.startswith("test_") else fn
