"""Course labs: find them, hand them out, read what students measured, grade it.

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

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import yaml

from .errors import TestbedError, TimeoutExpired
from .report.summary import read_json, read_ndjson, until_end

LABS_DIR = Path(__file__).resolve().parent.parent / "labs"
GRADER = "test_grader.py"
ANSWERS = "answers.yaml"
NOT_COPIED = {"solution", GRADER, "__pycache__", ".pytest_cache"}
GRADE_TIMEOUT_S = 120.0

_LAB_FOLDER = re.compile(r"^(\d{2})-([a-z0-9][a-z0-9.-]*)$")
_TITLE = re.compile(r"^#\s+Lab\s+(\d+)\s*:\s*(.+?)\s*$")
_FENCE = re.compile(r"^```\s*([\w-]*)\s*$")


class LabError(TestbedError):
    """A lab cannot be found, started or graded (the message names the lab or folder)."""


class CheckFailed(TestbedError):
    """One grader check failed; the message is the sentence shown to the student."""


# -- the handout -------------------------------------------------------------------------

@dataclass
class Step:
    """One ``### `` heading of the Steps section and the commands under it."""

    title: str
    commands: list[str] = field(default_factory=list)


@dataclass
class Block:
    """One fenced ```sh block: where it is and its commands."""

    section: str        # the "## " heading it is under
    step: str           # the "### " heading it is under ("" if none)
    line: int
    commands: list[str]


@dataclass
class Handout:
    """A lab's README.md: its title, goal, sections and fenced ```sh commands."""

    path: Path
    number: int
    title: str
    sections: dict[str, str]      # "## " heading -> body text
    blocks: list[Block]           # every ```sh block, in order

    @classmethod
    def parse(cls, path: Path) -> "Handout":
        try:
            text = path.read_text()
        except OSError as exc:
            raise LabError(f"{path}: cannot read the handout: {exc.strerror}")
        lines = text.splitlines()
        first = next((ln for ln in lines if ln.strip()), "")
        m = _TITLE.match(first)
        if not m:
            raise LabError(f"{path}:1: a handout starts with '# Lab N: Title' (got {first!r})")
        sections: dict[str, list[str]] = {}
        blocks: list[Block] = []
        section = step = ""
        fence: Optional[str] = None
        fence_line, body = 0, []
        for no, line in enumerate(lines, 1):
            fm = _FENCE.match(line.strip())
            if fence is not None:                       # inside a fenced block
                if fm and not fm.group(1):
                    if fence == "sh":
                        blocks.append(Block(section, step, fence_line,
                                            _commands(body, path, fence_line)))
                    fence = None
                else:
                    body.append(line)
            elif fm:                                    # a fence opens (``` alone: text)
                fence, fence_line, body = fm.group(1) or "text", no, []
            elif line.startswith("## "):
                section, step = line[3:].strip(), ""
                sections.setdefault(section, [])
                continue
            elif line.startswith("### "):
                step = line[4:].strip()
            sections.setdefault(section, []).append(line)
        if fence is not None:
            raise LabError(f"{path}:{fence_line}: a ``` block is never closed")
        return cls(path, int(m.group(1)), m.group(2),
                   {k: "\n".join(v).strip() for k, v in sections.items()}, blocks)

    @property
    def goal(self) -> str:
        """The first paragraph of the Goal section, on one line."""
        return " ".join(self.sections.get("Goal", "").split("\n\n")[0].split())

    def commands(self) -> list[str]:
        """Every command of the handout, in the order a student runs them."""
        return [c for b in self.blocks for c in b.commands]

    def steps(self) -> list[Step]:
        """The ``### `` steps of the Steps section, each with its commands."""
        steps: list[Step] = []
        for b in self.blocks:
            if b.section != "Steps":
                continue
            if not steps or steps[-1].title != b.step:
                steps.append(Step(b.step))
            steps[-1].commands += b.commands
        return steps


def _commands(body: list[str], path: Path, line: int) -> list[str]:
    """The commands of a ```sh block: one a line, ``\\`` continues, ``#`` comments."""
    out: list[str] = []
    pending = ""
    for raw in body:
        s = raw.strip()
        if not pending and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            pending += s[:-1].rstrip() + " "
            continue
        out.append(pending + s)
        pending = ""
    if pending:
        raise LabError(f"{path}:{line}: the last command of this block ends with '\\'")
    return out


# -- labs --------------------------------------------------------------------------------

@dataclass
class Lab:
    """One lab folder and its handout."""

    number: int
    slug: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def handout(self) -> Handout:
        return Handout.parse(self.path / "README.md")

    @property
    def title(self) -> str:
        return self.handout.title

    @property
    def grader(self) -> Path:
        return self.path / GRADER

    @property
    def default_dir(self) -> str:
        """The work folder ``testbed lab start N`` makes when no --dir is given."""
        return f"lab{self.number}"

    def student_files(self) -> list[Path]:
        """What a student gets: everything but the grader and the solution."""
        return sorted(p for p in self.path.iterdir() if p.name not in NOT_COPIED
                      and not p.name.startswith("."))


def find_labs(root: Path = LABS_DIR) -> list[Lab]:
    """Every ``NN-slug`` folder of ``root`` that has a handout, by number."""
    labs = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            m = _LAB_FOLDER.match(p.name)
            if m and p.is_dir() and (p / "README.md").exists():
                labs.append(Lab(int(m.group(1)), m.group(2), p))
    return labs


def get_lab(key: str | int, root: Path = LABS_DIR) -> Lab:
    """A lab by number (``1``, ``01``), folder name (``01-deadlock``) or slug (``deadlock``)."""
    labs = find_labs(root)
    text = str(key).strip()
    for lab in labs:
        if text in (lab.name, lab.slug) or (text.isdigit() and int(text) == lab.number):
            return lab
    known = ", ".join(f"{lab.number} ({lab.slug})" for lab in labs) or "none"
    raise LabError(f"lab {text!r}: no such lab in {root} (labs: {known})")


def start(lab: Lab, dest: Optional[Path] = None) -> Path:
    """Copy the lab's student files into ``dest`` (default ``./labN``); return it.

    A folder that already holds files is left alone (a student's runs and answers
    would be overwritten): the error says so.
    """
    dest = Path(dest if dest is not None else lab.default_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LabError(f"{dest}: already exists and is not empty; choose another folder "
                       f"with --dir, or remove it to start lab {lab.number} again")
    dest.mkdir(parents=True, exist_ok=True)
    for src in lab.student_files():
        if src.is_dir():
            shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns(*NOT_COPIED))
        else:
            shutil.copy2(src, dest / src.name)
    return dest


# -- what graders read -------------------------------------------------------------------

def _where(path: Path, work: Optional[Path]) -> str:
    """A path as the student typed it: relative to the work folder when inside it."""
    if work is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(work).resolve()))
        except ValueError:
            pass
    return str(path)


class RunFolder:
    """One run folder, as ``testbed run`` (or one run of compare/sweep) left it."""

    def __init__(self, path: Path, name: Optional[str] = None):
        self.path = Path(path)
        self.name = name or str(path)
        summary = read_json(self.path / "summary.json")
        if summary is None:
            raise CheckFailed(f"{self.name} is not a finished run folder (no readable "
                              f"summary.json): run the step that makes it, and let it finish")
        self.summary: dict[str, Any] = summary
        self._samples: Optional[list[dict[str, Any]]] = None
        self._scenario: Optional[dict[str, Any]] = None

    @classmethod
    def open(cls, path: Path, work: Optional[Path] = None) -> "RunFolder":
        path = Path(path)
        name = _where(path, work)
        if not path.is_dir():
            raise CheckFailed(f"there is no run folder {name}: run the step that makes it "
                              f"(with --out {name}) from your work folder")
        return cls(path, name)

    # the summary
    @property
    def verdict(self) -> Optional[str]:
        return self.summary.get("verdict")

    @property
    def policy(self) -> str:
        return str(self.summary.get("policy"))

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == "finished" and self.verdict is not None

    def drops(self, cls: str, reason: Optional[str] = None) -> int:
        """Received frames dropped of class ``memalloc`` (storage) or ``other``."""
        d = self.summary.get("drops", {}).get(cls, {})
        return int(d.get(reason or "total", 0))

    @property
    def time_s(self) -> float:
        """Seconds to the outcome: the lockup, or the completion of writeback."""
        lk = self.summary.get("lockup")
        if self.verdict == "lockup" and lk:
            return float(lk["t"])
        return float(self.summary.get("writeback", {}).get("time_s") or 0.0)

    # the client's metric stream, up to the outcome
    @property
    def samples(self) -> list[dict[str, Any]]:
        if self._samples is None:
            got = list(read_ndjson(self.path / "client.ndjson"))
            if not got:
                raise CheckFailed(f"{self.name}/client.ndjson is missing or empty: the run "
                                  f"did not record the client's memory; run it again")
            self._samples = until_end(got, self.summary)
        return self._samples

    @property
    def all_samples(self) -> list[dict[str, Any]]:
        """Every sample, also those after the outcome (the client shutting down)."""
        self.samples                      # noqa: B018  (raises if there are none)
        return list(read_ndjson(self.path / "client.ndjson"))

    def series(self, key: str) -> list[tuple[float, Any]]:
        return [(s["t"], s.get(key, 0)) for s in self.samples]

    def peak(self, key: str) -> float:
        return max((s.get(key) or 0) for s in self.samples)

    def first(self, pred: Callable[[dict[str, Any]], bool]) -> Optional[dict[str, Any]]:
        """The first sample for which ``pred`` holds (None if none)."""
        return next((s for s in self.samples if pred(s)), None)

    def last_progress_t(self) -> float:
        """The time of the last sample in which writeback_bytes grew."""
        last_t, last_v = 0.0, None
        for s in self.samples:
            v = s.get("writeback_bytes", 0)
            if last_v is None or v > last_v:
                last_t, last_v = s["t"], v
        return last_t

    # the scenario as run
    @property
    def scenario(self) -> dict[str, Any]:
        if self._scenario is None:
            try:
                self._scenario = yaml.safe_load((self.path / "scenario.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                raise CheckFailed(f"{self.name}/scenario.yaml is missing or unreadable: "
                                  f"run the step again")
        return self._scenario

    def setting(self, dotted: str) -> Any:
        """A scenario value by its dotted key (``client.reserve_pages``)."""
        node: Any = self.scenario
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def __repr__(self) -> str:
        return f"<RunFolder {self.name} {self.policy} {self.verdict}>"


@dataclass
class BatchRun:
    label: str
    params: dict[str, str]
    run: RunFolder


class BatchFolder:
    """A ``testbed compare`` or ``testbed sweep`` folder: ``runs.json`` and its runs."""

    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.name = name
        index = read_json(self.path / "runs.json")
        if index is None or not isinstance(index.get("runs"), list):
            raise CheckFailed(f"{name} has no readable runs.json: it is not a compare or "
                              f"sweep folder, or the command did not finish")
        self.runs: list[BatchRun] = []
        for r in index["runs"]:
            where = f"{name}/{r['dir']}"
            if not (self.path / r["dir"]).is_dir():
                raise CheckFailed(f"{where} is listed in runs.json but missing: run the "
                                  f"command again")
            self.runs.append(BatchRun(r["label"], dict(r.get("params") or {}),
                                      RunFolder(self.path / r["dir"], where)))

    @classmethod
    def open(cls, path: Path, work: Optional[Path] = None) -> "BatchFolder":
        name = _where(Path(path), work)
        if not Path(path).is_dir():
            raise CheckFailed(f"there is no folder {name}: run the step that makes it "
                              f"(with --out {name}) from your work folder")
        return cls(Path(path), name)

    def by_policy(self, policy: str) -> RunFolder:
        got = [r.run for r in self.runs if r.run.policy == policy]
        if not got:
            have = ", ".join(sorted({r.run.policy for r in self.runs})) or "none"
            raise CheckFailed(f"{self.name} has no {policy} run (it has: {have}): run the "
                              f"compare step with --policies as the handout gives it")
        return got[0]

    def values(self, key: str) -> list[str]:
        """The values a sweep took for ``key``, in order of first appearance."""
        seen: list[str] = []
        for r in self.runs:
            v = r.params.get(key)
            if v is not None and v not in seen:
                seen.append(v)
        return seen

    def select(self, key: str, value: Any) -> list[BatchRun]:
        """The runs of a sweep whose parameter ``key`` is ``value`` (numbers compared as such)."""
        return [r for r in self.runs if _same(r.params.get(key), str(value))]


def _same(a: Optional[str], b: str) -> bool:
    if a is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


class Answers:
    """The student's ``answers.yaml``: typed getters whose errors are sentences."""

    def __init__(self, data: dict[str, Any], name: str):
        self.data = data
        self.name = name

    @classmethod
    def load(cls, path: Path, work: Optional[Path] = None) -> "Answers":
        name = _where(path, work)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise CheckFailed(f"{name} is missing: it came with the lab (testbed lab start); "
                              f"fill in your answers there")
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else 0
            raise CheckFailed(f"{name}:{line} is not valid YAML ({exc.problem}): check the "
                              f"indentation and the colon after each key")
        except yaml.YAMLError as exc:
            raise CheckFailed(f"{name} is not valid YAML: {exc}")
        if not isinstance(data, dict):
            raise CheckFailed(f"{name} must be a list of 'key: answer' lines")
        return cls(data, name)

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise CheckFailed(f"{self.name} has no key {key}: keep every key of the file "
                              f"you were given and write your answer after it")
        value = self.data[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise CheckFailed(f"{key} in {self.name} is still empty: answer it")
        return value

    def text(self, key: str) -> str:
        return str(self._get(key)).strip()

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(str(value).split()[0])
            except (ValueError, IndexError):
                raise CheckFailed(f"{key} in {self.name} must be a number (got {value!r})")
        if not math.isfinite(value):
            raise CheckFailed(f"{key} in {self.name} must be a finite number (got {value!r})")
        return float(value)

    def integer(self, key: str) -> int:
        value = self.number(key)
        if value != int(value):
            raise CheckFailed(f"{key} in {self.name} must be a whole number (got {value:g})")
        return int(value)

    def choice(self, key: str, options: Iterable[str]) -> str:
        opts = [str(o) for o in options]
        value = str(self._get(key)).strip()
        for o in opts:
            if value.lower() == o.lower():
                return o
        raise CheckFailed(f"{key} in {self.name} must be one of {', '.join(opts)} "
                          f"(got {value!r})")

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise CheckFailed(f"{key} in {self.name} must be a mapping of 'value: answer' "
                              f"lines indented under it")
        return value


def fill_answers(path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` into an answers file after their keys, keeping its comments.

    Used by the reference solutions: ``key:`` lines of the template get the value
    (mappings in flow style, ``{1: 200, 3: 400}``); a key the template lacks is an error.
    """
    lines = Path(path).read_text().splitlines()
    todo = dict(values)
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z_][\w]*):", line)
        if m and m.group(1) in todo:
            value = todo.pop(m.group(1))
            text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            text = text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()
            lines[i] = f"{m.group(1)}: {text}"
    if todo:
        raise LabError(f"{path}: no key(s) {', '.join(todo)} in the answers template")
    Path(path).write_text("\n".join(lines) + "\n")


# -- checks ------------------------------------------------------------------------------

def expect(condition: bool, sentence: str) -> None:
    """Fail the check with ``sentence`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(sentence)


def expect_finished(run: RunFolder, again: str) -> None:
    """Fail unless ``run`` ran to its end; ``again`` tells the student what to rerun."""
    why = str(run.summary.get("status"))
    if run.summary.get("detail"):
        why += f": {run.summary['detail']}"
    expect(run.finished, f"{run.name} did not finish ({why}); {again}")


def within(stated: float, measured: float, rel: float = 0.0, abs_: float = 0.0) -> bool:
    """Is ``stated`` within ``rel`` (fraction) or ``abs_`` of ``measured``?"""
    return abs(stated - measured) <= max(abs_, rel * abs(measured))


def agrees(stated: float, measured: float, what: str, where: str,
           rel: float = 0.0, abs_: float = 0.0, unit: str = "") -> None:
    """A figure the student stated against the one in their own run folder."""
    if within(stated, measured, rel, abs_):
        return
    tol = []
    if rel:
        tol.append(f"{rel:.0%}")
    if abs_:
        tol.append(f"{abs_:g}{unit}")
    raise CheckFailed(f"{what}: you wrote {stated:g}{unit}, but {where} shows "
                      f"{_fmt(measured)}{unit} (tolerance {' or '.join(tol) or 'none'}); "
                      f"read it again from that run folder")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) and x != int(x) else f"{x:g}"


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
