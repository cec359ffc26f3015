"""Predict before you run: a lab's predictions, recorded with the time each was made.

A lab's ``answers.yaml`` may hold predictions: keys named ``predict_...`` under ``# Pn.``
comments, which the handout asks the student to answer before the lab's first run and to
record with ``testbed lab predict N``. Recording (:func:`record`) writes
``predictions.json`` into the work folder: per prediction, the answer, the UTC time it was
first recorded with that answer, and which of the lab's run folders (the handout's
``--out`` folders) existed then. Recording again keeps the time of an unchanged answer
and gives a changed one the new time, so a prediction changed after the runs is late and
the others stay on time. ``testbed lab submit`` packs the file beside ``answers.yaml``.

Grading (:func:`check_on_time`) gives a prediction its points for having been recorded
before the lab's first run started, never for being right (the handout says so, and then
asks the student to compare it with the result). The first start is the earliest of the
runs the grader reads: ``ended`` of each run's provenance.json less its ``duration_s``
(:func:`testbed.store.run_times`; a file's modification time is not used, since an
archive does not keep it). Both times are whole seconds, hence :data:`CLOCK_SLACK_S`. A
prediction earns nothing when answers.yaml no longer holds what was recorded, when the
lab's run folders already existed at recording, or when it was recorded after the first
start; the sentence names the key, never a time (the times are the check's ``values``,
for instructors).

How far this can be trusted: the record, like the hand-in's manifest, is written on the
student's machine, and so are the runs' times. The archive's SHA-256 sums show that
neither changed after packing; the run folders the record saw and the comparison with
the runs' own times catch a prediction recorded late with the tools; a student who edits
both the record and every run's provenance.json by hand, consistently, is not caught.
"""

from __future__ import annotations

import calendar
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import store
from .checks import Tally
from .course import ANSWERS, Lab, graded_folders
from .errors import CheckFailed, LabError
from .readers import Answers, RunFolder

RECORD = "predictions.json"
PREFIX = "predict_"          # a key of answers.yaml that is a prediction
FORMAT = 1
CLOCK_SLACK_S = 1.0          # both times are whole seconds (testbed.store.TIME_FORMAT)


@dataclass(frozen=True)
class Entry:
    """One recorded prediction."""

    answer: Any
    recorded_at: str                               # UTC, testbed.store.TIME_FORMAT
    runs_before: list[str] = field(default_factory=list)   # the lab's run folders then


@dataclass
class Record:
    """``predictions.json``: the lab and each prediction's entry."""

    lab: int
    entries: dict[str, Entry]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "lab": self.lab,
                "predictions": {k: e.__dict__ for k, e in self.entries.items()}}

    @classmethod
    def load(cls, work: Path) -> Optional["Record"]:
        """The work folder's record; None when there is none."""
        path = Path(work) / RECORD
        if not path.exists():
            return None
        bad = CheckFailed(f"{RECORD} is not a prediction record written by `testbed lab "
                          f"predict`: remove it and record again (your predictions then "
                          f"count as made when you record them)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise bad
        if not isinstance(data, dict) or data.get("format") != FORMAT \
                or not isinstance(data.get("predictions"), dict):
            raise bad
        entries = {}
        for k, e in data["predictions"].items():
            if not isinstance(e, dict) or not isinstance(e.get("recorded_at"), str) \
                    or not isinstance(e.get("runs_before", []), list) \
                    or epoch(e["recorded_at"]) is None:
                raise bad
            entries[str(k)] = Entry(e.get("answer"), e["recorded_at"],
                                    [str(r) for r in e.get("runs_before", [])])
        return cls(int(data.get("lab") or 0), entries)


def normal(answer: Any) -> str:
    """An answer as compared: its words, in lower case."""
    return " ".join(str(answer).split()).lower()


def epoch(text: str) -> Optional[float]:
    """A UTC time of :data:`testbed.store.TIME_FORMAT` in seconds since the epoch."""
    try:
        return float(calendar.timegm(time.strptime(text, store.TIME_FORMAT)))
    except (ValueError, TypeError):
        return None


def prediction_keys(answers: Answers) -> list[str]:
    """The prediction keys of an answers file, in its order."""
    return [str(k) for k in answers.data if str(k).startswith(PREFIX)]


# -- recording -----------------------------------------------------------------------------

def record(lab: Lab, work: Path, now: Optional[float] = None) -> Record:
    """Record the predictions of ``work``'s answers.yaml (see the module docstring)."""
    work = Path(work)
    if not work.is_dir():
        raise LabError(f"{work}: no such work folder (make one with `testbed lab start "
                       f"{lab.number}`)")
    answers = Answers.load(work / ANSWERS, work)
    keys = prediction_keys(answers)
    asked = prediction_keys(Answers.load(lab.path / ANSWERS))
    if not asked:
        raise LabError(f"{work / ANSWERS}: lab {lab.number} asks for no predictions "
                       f"(no {PREFIX}... key)")
    if sorted(keys) != sorted(asked):
        raise LabError(f"{work / ANSWERS}: its predictions ({', '.join(keys) or 'none'}) are "
                       f"not those of lab {lab.number} ({', '.join(asked)}): is this the "
                       f"work folder of lab {lab.number}?")
    said = {k: answers.text(k) for k in keys}      # an empty one: "still empty: answer it"
    old = Record.load(work)
    if old is not None and old.lab not in (0, lab.number):
        raise LabError(f"{work / RECORD}: records predictions of lab {old.lab}, not lab "
                       f"{lab.number}")
    at = store.utc(time.time() if now is None else now)
    present = [f for f in graded_folders(lab) if (work / f).exists()]
    entries = {}
    for k in keys:
        kept = old.entries.get(k) if old else None
        entries[k] = (kept if kept is not None and normal(kept.answer) == normal(said[k])
                      else Entry(answers.data[k], at, present))
    got = Record(lab.number, entries)
    _write(work / RECORD, got.to_json())
    return got


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write beside ``path`` and rename: never half a record, also on Ctrl-C."""
    fd, tmp = tempfile.mkstemp(prefix=".predictions-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# -- grading -------------------------------------------------------------------------------

def first_start(runs: Sequence[RunFolder]) -> tuple[float, str]:
    """When the earliest of ``runs`` started (seconds since the epoch, and as recorded)."""
    starts = []
    for r in runs:
        started, _ = store.run_times(r.outcome, recorded_only=True)
        t = epoch(started) if started else None
        if t is None:
            raise CheckFailed(f"{r.name} records no start time (provenance.json's ended and "
                              f"summary.json's duration_s): hand in the run folders as the "
                              f"runs left them")
        starts.append((t, str(started)))
    if not starts:
        raise CheckFailed("there are no runs to compare your predictions with: run the steps "
                          "of the handout")
    return min(starts)


def check_on_time(work: Path, answers: Answers, keys: Sequence[str],
                  runs: Sequence[RunFolder], lab: int) -> None:
    """Each prediction of ``keys`` recorded, unchanged since, and before the first of
    ``runs`` started; partial credit per prediction. Sentences give no times."""
    rec = Record.load(work)
    command = f"`testbed lab predict {lab}`"
    if rec is None:
        raise CheckFailed(f"{', '.join(keys)}: not recorded: answer them before your first "
                          f"run and record them with {command} (a prediction earns its "
                          f"points for being made before the runs, not for being right)")
    start, started = first_start(runs)
    tally = Tally("the predictions")
    for k in keys:
        tally.entry(lambda k=k: _one(k, rec, answers, start, started, command))
    tally.close()


def _one(key: str, rec: Record, answers: Answers, start: float, started: str,
         command: str) -> None:
    entry = rec.entries.get(key)
    if entry is None:
        raise CheckFailed(f"{key}: not among the predictions you recorded: record it with "
                          f"{command} (only before your runs does it earn points)",
                          "not recorded")
    said = answers.text(key)
    if normal(said) != normal(entry.answer):
        raise CheckFailed(f"{key} in answers.yaml is not the prediction you recorded: put "
                          f"back what you recorded (recording a changed prediction counts "
                          f"from then)", f"you wrote {said}, you recorded {entry.answer}")
    at = epoch(entry.recorded_at) or 0.0
    if entry.runs_before or at > start + CLOCK_SLACK_S:
        raise CheckFailed(f"{key}: recorded after your runs had started, so it earns no "
                          f"points (a prediction counts only when made before the runs); "
                          f"compare it with your results all the same",
                          f"recorded {entry.recorded_at}, first run started {started}"
                          + (f"; {', '.join(entry.runs_before)} existed then"
                             if entry.runs_before else ""))
