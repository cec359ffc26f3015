"""Running a lab's handout as a student would, once per test session.

:func:`follow_handout` takes a lab's README.md, and runs every command of its ```sh
blocks, in order and as written, in a fresh folder (each command in its own ``bash``
started in the folder the previous one left, so ``cd lab1`` carries over). Just before
``testbed lab predict``, it writes the instructor's example predictions (the
``predict_...`` keys of ``instructor/labs/NN-slug/answers.yaml``) into ``answers.yaml``,
as a student answers them before the runs. Just before the first ``testbed lab check``, it fills ``answers.yaml`` with the lab's reference
solution (``instructor/labs/NN-slug/solve.py``) applied to the runs just made. The runs
are never made again: the handouts ask for their repeats up front, and the graders
accept what those runs support. The ``testbed`` on PATH
is the one of the interpreter running the tests (the project's venv), as for a student
who activated it.

The runs dominate the time of this folder's tests, so each lab's handout is followed
once (``handout(N)``, session-scoped) and every test of that lab reads the same folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed import grading

COMMAND_TIMEOUT_S = 900.0      # a batch of 12 runs on a loaded 2-core machine


@dataclass
class Command:
    text: str
    cwd: Path
    returncode: int
    output: str
    seconds: float


@dataclass
class HandoutRun:
    """What following one handout left: the commands run and the work folder."""

    lab: grading.Lab
    base: Path
    commands: list[Command] = field(default_factory=list)
    work: Path | None = None           # the folder the check command ran in

    def failed(self) -> list[Command]:
        return [c for c in self.commands if not succeeded(c)]

    def describe(self, c: Command) -> str:
        tail = "\n".join(c.output.strip().splitlines()[-25:])
        return f"`{c.text}` (in {c.cwd}) exited {c.returncode} after {c.seconds:.0f}s:\n{tail}"


VERDICT = re.compile(r"^verdict: (\S+) \(expected (\S+)\)$", re.M)


def succeeded(c: Command) -> bool:
    """Did the command work? Exit status 0; or, for a run, compare or sweep, status 1
    because a run's verdict differs from the one its scenario expects (the handouts say
    when that is a result: a sweep over reserves where small ones lock up)."""
    if c.returncode == 0:
        return True
    if c.returncode != 1 or not re.match(r"testbed (run|compare|sweep) ", c.text):
        return False
    if "testbed: error" in c.output or "Traceback" in c.output:
        return False
    return any(got != want for got, want in VERDICT.findall(c.output))


def student_env() -> dict[str, str]:
    """The environment of a student with the project's venv active, in a root shell."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env.pop("TESTBED_RUN", None)
    return env


def run_command(text: str, cwd: Path, env: dict[str, str]) -> tuple[Command, Path]:
    """Run one handout command with bash in ``cwd``; return it and the folder it left."""
    fd, name = tempfile.mkstemp(prefix="handout-cwd-")
    os.close(fd)
    marker = Path(name)
    script = f'{text}\nrc=$?\npwd > "{marker}"\nexit $rc\n'
    t0 = time.monotonic()
    try:
        p = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = -9, f"timed out after {COMMAND_TIMEOUT_S:g}s\n{exc.stdout or ''}"
    left = marker.read_text().strip()
    marker.unlink(missing_ok=True)
    after = Path(left) if left else cwd
    return Command(text, cwd, rc, out, time.monotonic() - t0), after


def follow_handout(lab: grading.Lab, base: Path, stop_on_failure: bool = True) -> HandoutRun:
    """Run the handout's commands in ``base``; answer with the solution before the check."""
    env = student_env()
    result = HandoutRun(lab, base)
    cwd = base
    answered = False
    commands = lab.handout.commands()
    for i, text in enumerate(commands):
        if text.startswith("testbed lab predict"):
            predict(lab, cwd)
        if text.startswith("testbed lab check") and not answered:
            answer(lab, cwd, env)
            answered = True
            result.work = cwd
        cmd, cwd = run_command(text, cwd, env)
        result.commands.append(cmd)
        if not succeeded(cmd) and stop_on_failure:
            break
    return result


def predict(lab: grading.Lab, work: Path) -> None:
    """Fill the prediction keys of answers.yaml with the instructor's example predictions."""
    ref = grading.Answers.load(lab.instructor / grading.ANSWERS)
    keys = grading.predictions.prediction_keys(ref)
    assert keys, f"{lab.name}: the handout records predictions, the reference answers have none"
    grading.fill_answers(work / grading.ANSWERS, {k: ref.data[k] for k in keys})


def answer(lab: grading.Lab, work: Path, env: dict[str, str]) -> None:
    """Fill answers.yaml with the reference solution's method, from the runs in ``work``."""
    solve = lab.instructor / "solve.py"
    c = subprocess.run([sys.executable, str(solve), str(work)], env=env, text=True,
                       capture_output=True, timeout=60)
    assert c.returncode == 0, f"{solve} failed on {work}:\n{c.stdout}{c.stderr}"


_followed: dict[int, HandoutRun] = {}


@pytest.fixture(scope="session")
def handout(tmp_path_factory):
    """``handout(N)``: lab N's handout, followed once per session (see the module doc)."""
    def get(number: int) -> HandoutRun:
        if number not in _followed:
            lab = grading.get_lab(number)
            base = tmp_path_factory.mktemp(f"lab{number}-student")
            _followed[number] = follow_handout(lab, base)
        return _followed[number]
    return get
