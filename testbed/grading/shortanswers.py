"""Short answers: written by the student in a few sentences, graded by a TA with a rubric.

A lab's ``answers.yaml`` may ask questions in words (``# Qn.`` comments, then the key).
No program grades them: the lab's grader only checks that each is written
(:func:`check_answered`, a check worth 0 points, so that the automatic score is only what
a program can judge), and ``testbed lab grade --batch DIR`` collects every student's
short answers into one file for the TA (:func:`write_ta_file`).

The rubric is ``rubric.yaml`` in the instructor's tree (never in a student copy), one
entry per short answer, with the points the TA gives at most::

    why_downloads_hold_memory:
      points: 2
      rubric: |
        2: names the dirty limits (balance_dirty_pages) blocking the readers, ...
        1: ...

The TA file (CSV, one row per student per question: :data:`TA_COLUMNS`) has the
question as the answers template asks it, the points, the student's answer and the
rubric side by side, and an empty ``score`` column for the TA.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .course import ANSWERS, RUBRIC, Lab
from .errors import CheckFailed, LabError
from .readers import Answers

MIN_WORDS = 5                # fewer is not an answer in words
TA_COLUMNS = ("student", "lab", "key", "question", "max_points", "answer", "rubric",
              "score", "status")


@dataclass(frozen=True)
class Item:
    """One short answer's entry of the rubric."""

    key: str
    points: float
    rubric: str


def load_rubric(path: Path) -> dict[str, Item]:
    """A lab's ``rubric.yaml``; errors name the file, the line and the key. An absent
    file is an empty rubric (a lab without short answers, or a student copy)."""
    path = Path(path)
    if not path.exists():
        return {}
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise LabError(f"{path}:{line}: not valid YAML ({exc.problem})")
    if not isinstance(data, dict):
        raise LabError(f"{path}:1: must map each short answer's key to its points and rubric")
    lines = {m.group(1): text[:m.start()].count("\n") + 1
             for m in re.finditer(r"^([A-Za-z_]\w*):", text, re.M)}
    items = {}
    for key, v in data.items():
        where = f"{path}:{lines.get(str(key), 1)}: {key}"
        if not isinstance(v, dict):
            raise LabError(f"{where}: needs points: and rubric:")
        points = v.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
            raise LabError(f"{where}: points must be a positive number (got {points!r})")
        if not isinstance(v.get("rubric"), str) or not v["rubric"].strip():
            raise LabError(f"{where}: rubric must be the text the TA grades with")
        unknown = set(v) - {"points", "rubric"}
        if unknown:
            raise LabError(f"{where}: unknown key {sorted(unknown)[0]} (points, rubric)")
        items[str(key)] = Item(str(key), float(points), v["rubric"].strip())
    return items


def rubric_of(lab: Lab) -> dict[str, Item]:
    return load_rubric(lab.instructor / RUBRIC)


def questions(template: Path) -> dict[str, str]:
    """Per key of an answers template, the comment lines right above it, as one line
    (``Q11. Compare your ...``): the question as the student read it."""
    out: dict[str, str] = {}
    comment: list[str] = []
    for line in Path(template).read_text().splitlines():
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
            continue
        m = re.match(r"^([A-Za-z_]\w*):", line)
        if m:
            out[m.group(1)] = " ".join(" ".join(comment).split())
        comment = []
    return out


# -- in a grader ----------------------------------------------------------------------------

def check_answered(answers: Answers, keys: Sequence[str]) -> None:
    """Each short answer of ``keys`` written, in words (:data:`MIN_WORDS` at least)."""
    for k in keys:
        words = answers.text(k).split()           # an empty one: "still empty: answer it"
        if len(words) < MIN_WORDS:
            raise CheckFailed(f"{k}: not an answer in words: write a few sentences (your TA "
                              f"grades it)", f"{len(words)} words")


# -- for the TA ------------------------------------------------------------------------------

def rows(student: str, lab: Optional[Lab], answers: dict[str, Any],
         status: str) -> list[dict[str, str]]:
    """One student's rows of the TA file: one per short answer of the lab's rubric."""
    if lab is None:
        return [{"student": student, "status": status}]
    rubric = rubric_of(lab)
    asked = questions(lab.path / ANSWERS) if (lab.path / ANSWERS).exists() else {}
    return [{"student": student, "lab": str(lab.number), "key": k, "question": asked.get(k, ""),
             "max_points": f"{item.points:g}", "answer": _text(answers.get(k)),
             "rubric": item.rubric, "score": "", "status": status}
            for k, item in rubric.items()]


def _text(value: Any) -> str:
    return "" if value is None else " ".join(str(value).split())


def write_ta_file(all_rows: Iterable[dict[str, str]], path: Path) -> int:
    """Write the TA file (:data:`TA_COLUMNS`); return the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, TA_COLUMNS, restval="")
        w.writeheader()
        for row in all_rows:
            w.writerow(row)
            n += 1
    return n
