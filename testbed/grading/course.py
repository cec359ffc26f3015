"""The course's labs as the project holds them: folders, handouts, and the copies made of them.

:class:`Lab` is one folder ``labs/NN-slug/``; :class:`Handout` its README.md parsed
(title, goal, steps and their fenced ```sh commands); :func:`find_labs` and
:func:`get_lab` look them up; :func:`start` copies the student's files into a work
folder (never the grader).

The instructor's tree, ``instructor/labs/NN-slug/`` next to ``labs/``, holds what a
student must not see: the reference solution (``solve.py``, the reference
``answers.yaml`` and ``README.md`` with the reasoning and the reference machine's
figures), ``key.yaml``, the multiple-choice key with the explanation of each wrong
option, and ``rubric.yaml``, the TA's rubric of the short answers. :func:`student_copy` writes a course's student tree: the labs folder without it
(handouts, scenarios, blank answers and the graders, which compute every figure from
the student's runs and hold no answers). ``TESTBED_LABS`` names another labs folder
(a student copy) for ``testbed lab``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import LabError

PROJECT_LABS = Path(__file__).resolve().parents[2] / "labs"
LABS_DIR = Path(os.environ.get("TESTBED_LABS") or PROJECT_LABS).resolve()
GRADER = "test_grader.py"
ANSWERS = "answers.yaml"
KEY = "key.yaml"
RUBRIC = "rubric.yaml"       # the TA's rubric of the short answers (instructor's tree)
PLUGIN_FILES = ("conftest.py", "pytest.ini")     # the labs folder's own: the graders' plugin
# The memory-management terms the handouts use: the project's, copied beside a student
# copy's labs (a course's repository has no docs/ folder)
GLOSSARY = PROJECT_LABS.parent / "docs" / "glossary.md"
NOT_COPIED = {"solution", GRADER, "__pycache__", ".pytest_cache"}
INSTRUCTOR_ONLY = {"solution", KEY, RUBRIC, "solve.py"}   # never in a student copy, whatever the tree

_LAB_FOLDER = re.compile(r"^(\d{2})-([a-z0-9][a-z0-9.-]*)$")
_TITLE = re.compile(r"^#\s+Lab\s+(\d+)\s*:\s*(.+?)\s*$")
_FENCE = re.compile(r"^```\s*([\w-]*)\s*$")


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
    def instructor(self) -> Path:
        """The lab's folder in the instructor's tree (it may not exist: a student copy)."""
        return instructor_dir(self.path)

    @property
    def default_dir(self) -> str:
        """The work folder ``testbed lab start N`` makes when no --dir is given."""
        return f"lab{self.number}"

    def student_files(self) -> list[Path]:
        """What a student gets: everything but the grader and the solution."""
        return sorted(p for p in self.path.iterdir() if p.name not in NOT_COPIED
                      and not p.name.startswith("."))


def graded_folders(lab: Lab) -> list[str]:
    """The ``--out`` folders of the handout's commands, in order: what the grader reads
    (and what a hand-in packs)."""
    out: list[str] = []
    for command in lab.handout.commands():
        try:
            words = shlex.split(command)
        except ValueError:
            continue
        for i, w in enumerate(words):
            target = words[i + 1] if w == "--out" and i + 1 < len(words) else (
                w.split("=", 1)[1] if w.startswith("--out=") else None)
            if target and target not in out:
                out.append(target)
    return out


def instructor_dir(lab_path: Path) -> Path:
    """``<labs>/NN-slug`` -> ``<labs>/../instructor/labs/NN-slug``."""
    lab_path = Path(lab_path).resolve()
    return lab_path.parent.parent / "instructor" / "labs" / lab_path.name


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


def student_copy(dest: Path, root: Path = LABS_DIR) -> Path:
    """Write a course's student tree into ``dest``: ``dest/labs/`` with the graders'
    plugin, the glossary and, per lab, the student's files and the grader; nothing of
    the instructor's tree. Returns ``dest/labs``; a non-empty ``dest`` is refused."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LabError(f"{dest}: already exists and is not empty; choose a new folder")
    labs = find_labs(root)
    if not labs:
        raise LabError(f"{root}: no labs to copy")
    out = dest / "labs"
    out.mkdir(parents=True)
    for name in PLUGIN_FILES:
        shutil.copy2(root / name, out / name)
    skip = shutil.ignore_patterns(*(NOT_COPIED | INSTRUCTOR_ONLY) - {GRADER})
    for lab in labs:
        shutil.copytree(lab.path, out / lab.name, ignore=skip)
    if GLOSSARY.is_file():
        shutil.copy2(GLOSSARY, out / GLOSSARY.name)
    return out
