"""Running a lab's grader: pytest in a child process, one result per check.

``labs/conftest.py`` records each test's outcome and sentence as JSON;
:func:`check` reads it back into a :class:`Grade`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..errors import TimeoutExpired
from ..report.summary import read_json
from .course import GRADER, Lab
from .errors import CheckFailed, LabError

GRADE_TIMEOUT_S = 120.0

# -- running a grader --------------------------------------------------------------------

@dataclass
class CheckResult:
    """One check of a grader: its name, pass or fail, and the sentence to show."""

    name: str
    passed: bool
    sentence: str


@dataclass
class Grade:
    lab: Lab
    work: Path
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def lines(self) -> Iterator[str]:
        """The result as a student reads it: one line per check, then the count."""
        yield f"lab {self.lab.number}: {self.lab.title} - checking {self.work.resolve()}"
        same: dict[str, list[str]] = {}       # a failure shared by several checks: once
        for c in self.failed:
            same.setdefault(c.sentence, []).append(c.name)
        for c in self.checks:
            if c.passed:
                yield f"  PASS  {c.sentence}"
            elif same.get(c.sentence, [None])[0] == c.name:
                yield f"  FAIL  {c.sentence}"
                others = same[c.sentence][1:]
                if others:
                    yield (f"        (and {len(others)} more check{'s' if len(others) > 1 else ''}"
                           f" for the same reason: {', '.join(others)})")
        ok = sum(c.passed for c in self.checks)
        yield f"{ok} of {len(self.checks)} checks passed" + (
            "." if self.passed else "; fix what FAIL says and check again.")


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
    checks = [CheckResult(c["name"], bool(c["passed"]), c["sentence"]) for c in got["checks"]]
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
    if isinstance(exc, CheckFailed):
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
