"""Grading understanding (no root, no Mininet): predictions made before the runs, and
short answers collected for a TA.

- A prediction recorded before the first run earns its point; one recorded after the
  runs (by the clock, or with the lab's run folders already there) earns none, with a
  sentence that gives no time; one changed since it was recorded earns none either.
- The record keeps each prediction's own time: recording again changes only the time of
  a changed prediction, so partial credit is per prediction.
- ``testbed lab grade --batch`` writes every student's short answers beside the
  instructor's rubric into one CSV, one row per student per question, with no score.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testbed import grading, store
from testbed.grading import handin, predictions, shortanswers
from tests.labs.conftest import predict
from tests.labs.synthetic import HANDINS

TESTBED = [sys.executable, "-m", "testbed.cli"]
CHECK = "predictions made before the runs"
HOUR = 3600.0


def solve(lab: grading.Lab, work: Path) -> None:
    c = subprocess.run([sys.executable, str(lab.instructor / "solve.py"), str(work)],
                       capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, c.stderr


def work_folder(tmp_path: Path, number: int, name: str = "work") -> tuple[grading.Lab, Path]:
    lab = grading.get_lab(number)
    work = grading.start(lab, tmp_path / name)
    predict(lab, work)                  # the example predictions, written into answers.yaml
    return lab, work


def runs_started(work: Path, number: int, at: float) -> None:
    """Lab ``number``'s synthetic runs, the first of them started at ``at``: each run's
    provenance.json says it ended its duration after that."""
    HANDINS[number](work)
    for prov in sorted((work / "runs").rglob(grading.readers.results.PROVENANCE)):
        summary = json.loads((prov.parent / "summary.json").read_text())
        doc = json.loads(prov.read_text())
        doc["ended"] = store.utc(at + summary["duration_s"])
        prov.write_text(json.dumps(doc))


def check_of(grade: grading.Grade, name: str) -> grading.CheckResult:
    [c] = [c for c in grade.checks if c.name == name]
    return c


# -- predictions -------------------------------------------------------------------------

@pytest.mark.cli
@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 7])
def test_a_prediction_recorded_before_the_runs_earns_its_point(tmp_path, number):
    lab, work = work_folder(tmp_path, number)
    predictions.record(lab, work, now=time.time() - HOUR)
    runs_started(work, number, time.time() - HOUR / 2)
    solve(lab, work)
    c = check_of(grading.check(lab, work), CHECK)
    assert c.passed and c.score == c.points == 1, c.sentence
    assert "not for being right" in c.sentence


@pytest.mark.cli
def test_a_prediction_recorded_after_the_runs_earns_nothing_and_the_sentence_has_no_time(
        tmp_path):
    sentences = []
    for name, ran_at in (("a", time.time() - 2 * HOUR), ("b", time.time() - 5 * HOUR)):
        lab, work = work_folder(tmp_path, 1, name)
        # the clock says late: the runs started before the prediction was recorded; the
        # record did not see the run folders (as if they were moved away and back)
        runs_started(work, 1, ran_at)
        moved = work / "runs"
        moved.rename(work / "elsewhere")
        predictions.record(lab, work)
        (work / "elsewhere").rename(moved)
        solve(lab, work)
        c = check_of(grading.check(lab, work), CHECK)
        assert c.status == "failed" and c.score == 0, c.sentence
        assert "recorded after your runs had started, so it earns no points" in c.sentence
        assert not re.search(r"\d\d:\d\d|20\d\d-", c.sentence), c.sentence   # no time
        assert "first run started" in c.values and "recorded" in c.values    # instructors
        sentences.append(c.sentence)
    assert sentences[0] == sentences[1]


@pytest.mark.cli
def test_a_prediction_recorded_when_the_runs_were_there_is_late_whatever_the_clock(tmp_path):
    lab, work = work_folder(tmp_path, 1)
    runs_started(work, 1, time.time() + HOUR)       # a clock that would say "in time"
    rec = predictions.record(lab, work)
    assert all(e.runs_before == ["runs/none"] for e in rec.entries.values())
    p = subprocess.run(TESTBED + ["lab", "predict", "1", str(work)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "runs/none existed already" in p.stdout, p.stdout + p.stderr
    solve(lab, work)
    c = check_of(grading.check(lab, work), CHECK)
    assert c.status == "failed" and "earns no points" in c.sentence
    assert "runs/none existed then" in c.values


@pytest.mark.cli
def test_a_prediction_changed_after_the_runs_costs_that_prediction_only(tmp_path):
    lab, work = work_folder(tmp_path, 1)
    first = predictions.record(lab, work, now=time.time() - HOUR)
    runs_started(work, 1, time.time() - HOUR / 2)
    solve(lab, work)
    # changed in answers.yaml but not recorded: not the prediction recorded
    grading.fill_answers(work / grading.ANSWERS, {"predict_lockups": 0})
    c = check_of(grading.check(lab, work), CHECK)
    assert c.status == "failed" and c.credit == 0.5
    assert "predict_lockups in answers.yaml is not the prediction you recorded" in c.sentence
    # recorded again: the changed one gets the new time (after the runs), the other keeps its
    again = predictions.record(lab, work)
    kept = "predict_failed_allocation"
    assert again.entries[kept] == first.entries[kept]
    assert again.entries["predict_lockups"].recorded_at > first.entries["predict_lockups"].recorded_at
    assert again.entries["predict_lockups"].runs_before == ["runs/none"]
    c = check_of(grading.check(lab, work), CHECK)
    assert c.credit == 0.5 and c.score == 0.5 and "recorded after your runs" in c.sentence


@pytest.mark.cli
def test_no_record_and_a_broken_record_are_sentences(tmp_path):
    lab, work = work_folder(tmp_path, 1)
    runs_started(work, 1, time.time())
    solve(lab, work)
    c = check_of(grading.check(lab, work), CHECK)
    assert c.status == "failed" and "not recorded: answer them before your first run and " \
        "record them with `testbed lab predict 1`" in c.sentence
    (work / predictions.RECORD).write_text("{")
    c = check_of(grading.check(lab, work), CHECK)
    assert "predictions.json is not a prediction record" in c.sentence


def test_recording_needs_every_prediction_and_a_lab_that_asks_for_them(tmp_path):
    lab = grading.get_lab(1)
    work = grading.start(lab, tmp_path / "lab1")
    with pytest.raises(grading.CheckFailed, match="predict_lockups in answers.yaml is still "
                                                  "empty: answer it"):
        predictions.record(lab, work)
    assert not (work / predictions.RECORD).exists()
    six = grading.start(grading.get_lab(6), tmp_path / "lab6")
    with pytest.raises(grading.LabError, match="lab 6 asks for no predictions"):
        predictions.record(grading.get_lab(6), six)
    predict(lab, work)
    with pytest.raises(grading.LabError, match=r"its predictions \(predict_lockups, "
                                               r"predict_failed_allocation\) are not those "
                                               r"of lab 3 .*work folder of lab 3\?"):
        predictions.record(grading.get_lab(3), work)


def test_a_run_without_its_start_time_is_named(tmp_path):
    lab, work = work_folder(tmp_path, 1)
    predictions.record(lab, work, now=time.time() - HOUR)
    HANDINS[1](work)
    (work / "runs/none/none_1/provenance.json").unlink()
    answers = grading.Answers.load(work / grading.ANSWERS)
    runs = grading.BatchFolder.open(work / "runs/none", work).policy_runs("none")
    with pytest.raises(grading.CheckFailed, match=r"runs/none/none_1 records no start time"):
        predictions.check_on_time(work, answers, ("predict_lockups",), runs, 1)


# -- the hand-in and the TA's file --------------------------------------------------------

def words_lab(root: Path, prediction: bool = False) -> grading.Lab:
    """A course of one lab with two short answers and no runs (``root/labs``,
    ``root/instructor``): what a hand-in packs and the batch grader reads of it, with no
    run to verify."""
    labs = root / "labs"
    lab_dir = labs / "09-words"
    lab_dir.mkdir(parents=True)
    for name in ("conftest.py", "pytest.ini"):
        shutil.copy(grading.PROJECT_LABS / name, labs / name)
    (lab_dir / "README.md").write_text(
        "# Lab 9: Words\n\n## Goal\n\nExplain the deadlock of lab 1 in words, twice.\n\n"
        "## Start\n\n```sh\ntestbed lab start 9\ncd lab9\n```\n\n## Check\n\n"
        "```sh\ntestbed lab check 9\n```\n")
    (lab_dir / "answers.yaml").write_text(
        "# Q1. Why could writeback not complete?\nwhy_stuck:\n"
        "# Q2. Why do the downloads keep memory\n#     they cannot use?\nwhy_downloads:\n"
        + ("# P1. A guess\npredict_x:\n" if prediction else ""))
    (lab_dir / "test_grader.py").write_text(
        "import pytest\nfrom testbed.grading import shortanswers\n\n"
        "@pytest.mark.points(0)\ndef test_short_answers_for_your_ta(answers):\n"
        "    \"\"\"Your short answers are written.\"\"\"\n"
        "    shortanswers.check_answered(answers, (\"why_stuck\", \"why_downloads\"))\n")
    inst = root / "instructor/labs/09-words"
    inst.mkdir(parents=True)
    (inst / grading.course.RUBRIC).write_text(
        "why_stuck:\n  points: 3\n  rubric: |\n    3: the answers find no receive buffer.\n"
        "why_downloads:\n  points: 2\n  rubric: the readers are blocked by the dirty limits\n")
    return grading.get_lab(9, labs)


ANSWERS = {
    "alice": {"why_stuck": "The target's answers were dropped: no memory for their skbs.",
              "why_downloads": "Their readers wait in balance_dirty_pages and do not read."},
    "bob": {"why_stuck": "The link was too slow for the writes, I think, sadly.",
            "why_downloads": "TCP keeps the data until the sender retransmits it."},
}


@pytest.mark.cli
def test_the_batch_grader_collects_short_answers_with_the_rubric_for_a_ta(tmp_path):
    lab = words_lab(tmp_path / "course")
    batch = tmp_path / "submissions"
    for student, said in ANSWERS.items():
        work = grading.start(lab, tmp_path / student)
        grading.fill_answers(work / grading.ANSWERS, said)
        handin.submit(lab, work, batch / f"{student}.tar.gz")
    (batch / "carol.tar.gz").write_bytes(b"not an archive")
    env = dict(os.environ, TESTBED_LABS=str(tmp_path / "course/labs"))
    p = subprocess.run(TESTBED + ["lab", "grade", "--batch", str(batch)], capture_output=True,
                       text=True, timeout=300, env=env, cwd=tmp_path)
    assert "Traceback" not in p.stderr and p.returncode == 1, p.stdout + p.stderr
    assert f"to {batch / 'short-answers.csv'}" in p.stdout
    rows = list(csv.DictReader(open(batch / "short-answers.csv")))
    assert tuple(rows[0]) == shortanswers.TA_COLUMNS
    got = {(r["student"], r["key"]): r for r in rows if r["student"] != "carol"}
    assert set(got) == {(s, k) for s in ANSWERS for k in ANSWERS[s]}     # per student per question
    for (student, key), r in got.items():
        assert r["answer"] == ANSWERS[student][key] and r["status"] == "graded"
        assert r["lab"] == "9" and r["score"] == ""           # no automatic score
    assert got["alice", "why_stuck"]["max_points"] == "3"
    assert got["bob", "why_downloads"]["max_points"] == "2"
    assert got["alice", "why_stuck"]["rubric"] == "3: the answers find no receive buffer."
    assert got["bob", "why_downloads"]["question"] == \
        "Q2. Why do the downloads keep memory they cannot use?"
    [carol] = [r for r in rows if r["student"] == "carol"]
    assert carol["status"].startswith("refused: ") and carol["answer"] == ""
    # the short answers score nothing automatically: the grade is the 0-point check
    grades = {r["student"]: r for r in csv.DictReader(open(batch / "grades.csv"))}
    assert grades["alice"]["points"] == grades["alice"]["max_points"] == "0"


def test_the_rubric_names_file_line_and_key(tmp_path):
    path = tmp_path / "rubric.yaml"
    for text, says in (
            ("a:\n  points: 2\n  rubric: x\nb:\n  points: -1\n  rubric: y\n",
             ":4: b: points must be a positive number (got -1)"),
            ("a:\n  points: 2\n", ":1: a: rubric must be the text the TA grades with"),
            ("a:\n  points: 2\n  rubric: x\n  max: 3\n", ":1: a: unknown key max"),
            ("a: [1\n", ":2: not valid YAML"),
            ("- a\n", ":1: must map each short answer's key")):
        path.write_text(text)
        with pytest.raises(grading.LabError, match=re.escape(f"{path}{says}")):
            shortanswers.load_rubric(path)


def test_a_short_answer_must_be_words():
    answers = grading.Answers({"a": "atomic", "b": None, "c": "Because the readers do not read."},
                              "answers.yaml")
    with pytest.raises(grading.CheckFailed, match="a: not an answer in words"):
        shortanswers.check_answered(answers, ("a",))
    with pytest.raises(grading.CheckFailed, match="b in answers.yaml is still empty"):
        shortanswers.check_answered(answers, ("b",))
    shortanswers.check_answered(answers, ("c",))


@pytest.mark.cli
def test_the_archive_holds_the_time_each_prediction_was_recorded(tmp_path):
    lab = words_lab(tmp_path / "course", prediction=True)
    work = grading.start(lab, tmp_path / "w")
    grading.fill_answers(work / grading.ANSWERS, {"predict_x": "yes", **ANSWERS["alice"]})
    env = dict(os.environ, TESTBED_LABS=str(tmp_path / "course/labs"))
    p = subprocess.run(TESTBED + ["lab", "submit", "9", str(work)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0 and "note: no predictions recorded (testbed lab predict 9)" \
        in p.stdout, p.stdout + p.stderr
    rec = predictions.record(lab, work)
    out, manifest = handin.submit(lab, work)
    assert predictions.RECORD in manifest.files
    with handin.unpack(out) as sub:
        packed = json.loads((sub.root / predictions.RECORD).read_text())
    assert packed["predictions"]["predict_x"]["recorded_at"] == rec.entries["predict_x"].recorded_at
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                        packed["predictions"]["predict_x"]["recorded_at"])


# -- the student copy ---------------------------------------------------------------------

def test_the_student_copy_holds_no_rubric_and_no_reference_short_answer(tmp_path):
    out = grading.student_copy(tmp_path / "course")
    texts = {p: p.read_text() for p in out.rglob("*") if p.is_file()}
    assert not [p for p in texts if p.name == grading.course.RUBRIC]
    for lab in grading.find_labs():
        ref = yaml.safe_load((lab.instructor / grading.ANSWERS).read_text())
        secret = [v for k, v in ref.items() if isinstance(v, str) and len(v.split()) >= 5]
        secret += [i.rubric.splitlines()[0] for i in shortanswers.rubric_of(lab).values()]
        for p, text in texts.items():
            flat = " ".join(text.split())
            for s in secret:
                assert " ".join(s.split())[:60] not in flat, (p, s)
