"""``testbed lab list | start | check | submit | grade | export``: the course labs.

- ``list``: each lab's number, title and goal.
- ``start N``: copies the lab's handout, scenario files and ``answers.yaml`` into a
  work folder (``./labN`` unless ``--dir``) and prints the first step; every command
  of the handout is then run from that folder.
- ``predict N [DIR]``: records the predictions of the work folder's ``answers.yaml``
  (its ``predict_...`` keys), each with the time it was made, in ``predictions.json``
  (:mod:`testbed.grading.predictions`); a prediction earns its points for being recorded
  before the lab's first run, not for being right. Exit status 1 when the lab's run
  folders exist already (the record is written all the same: such a prediction is late).
- ``check N [DIR]``: runs the lab's grader on the work folder (default: the current
  folder) and prints each check as PASS or FAIL with one sentence, and the points; the
  exit status is 0 only with full marks. ``--format gradescope`` writes Gradescope's
  ``results.json`` instead (``--results FILE``, default ``results.json``; on Gradescope
  ``/autograder/results/results.json``), ``--junit FILE`` also writes JUnit XML (GitHub
  Classroom, CI). A failure names the answer and the tolerance, never the figures;
  ``--show-values`` (or ``TESTBED_LAB_SHOW_VALUES=1``), for instructors after the
  deadline, adds the figures compared.
- ``submit N [DIR] [--out FILE]``: packs the work folder's answers and the run folders
  the grader reads into one archive (default ``DIR/labN-handin.tar.gz``) with a manifest
  (:mod:`testbed.grading.handin`); a run folder whose summary its own records do not give
  is refused already here.
- ``grade ARCHIVE`` / ``grade --batch DIR`` (instructors): unpacks into a temporary
  folder, verifies the manifest, recomputes every run's summary from its records, grades,
  and prints the points per student; ``--csv FILE`` writes the batch's table (default
  ``DIR/grades.csv``, with the flags for runs handed in twice), ``--format gradescope``
  one ``results.json`` (``--results``; for a batch ``--results DIR``, one per student).
  A batch also writes the short answers of every student, with the rubric of the
  instructor's tree beside them, for a TA (``--ta FILE``, default
  ``DIR/short-answers.csv``; :mod:`testbed.grading.shortanswers`).
- ``export --student DEST`` (or ``student-copy DEST``): writes the course's student tree
  (``DEST/labs``: handouts, scenarios, blank answers, graders and the glossary; nothing
  of ``instructor/``). Students point ``TESTBED_LABS`` at it, or get the project without
  ``instructor/``.

The labs themselves are in ``labs/`` (or ``$TESTBED_LABS``), the instructor's tree in
``instructor/labs/``; :mod:`testbed.grading` finds, copies and grades them. Grading reads
files only: it needs neither root nor Mininet.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from pathlib import Path

from .. import grading
from ..grading import handin


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="course labs: list, start one, check your answers")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION")

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2
    p.set_defaults(func=usage)

    q = lab_sub.add_parser("list", help="the labs, with their goals")
    q.set_defaults(func=cmd_list)

    q = lab_sub.add_parser("start", help="copy a lab into a work folder, print the first step")
    q.add_argument("lab", help="lab number (or folder name)")
    q.add_argument("--dir", type=Path, help="work folder (default: ./labN)")
    q.set_defaults(func=cmd_start)

    q = lab_sub.add_parser("predict", help="record your predictions, before your first run")
    q.add_argument("lab", help="lab number (or folder name)")
    q.add_argument("dir", nargs="?", type=Path, default=Path("."),
                   help="the work folder (default: the current folder)")
    q.set_defaults(func=cmd_predict)

    q = lab_sub.add_parser("check", help="grade the runs and answers of a work folder")
    q.add_argument("lab", help="lab number (or folder name)")
    q.add_argument("dir", nargs="?", type=Path, default=Path("."),
                   help="the work folder (default: the current folder)")
    q.add_argument("--format", choices=("text", "gradescope"), default="text",
                   help="text (default) or gradescope (writes results.json)")
    q.add_argument("--results", type=Path, default=Path("results.json"),
                   help="where --format gradescope writes (default: results.json)")
    q.add_argument("--junit", type=Path, help="also write JUnit XML here")
    q.add_argument("--show-values", action="store_true",
                   help=f"instructors: show the figures each failure compared "
                        f"(also {grading.SHOW_VALUES_ENV}=1)")
    q.set_defaults(func=cmd_check)

    q = lab_sub.add_parser("submit", help="pack your answers and runs into one archive")
    q.add_argument("lab", help="lab number (or folder name)")
    q.add_argument("dir", nargs="?", type=Path, default=Path("."),
                   help="the work folder (default: the current folder)")
    q.add_argument("--out", type=Path, help="the archive (default: DIR/labN-handin.tar.gz)")
    q.set_defaults(func=cmd_submit)

    q = lab_sub.add_parser("grade", help="instructors: verify and grade hand-in archives")
    q.add_argument("archive", nargs="?", type=Path, help="one student's archive")
    q.add_argument("--batch", type=Path, help="a folder of archives (NAME.tar.gz each)")
    q.add_argument("--lab", help="grade as this lab (default: the one each archive names)")
    q.add_argument("--csv", type=Path, help="--batch: the table (default: DIR/grades.csv)")
    q.add_argument("--ta", type=Path, help="--batch: the short answers with the rubric, "
                                           "for a TA (default: DIR/short-answers.csv)")
    q.add_argument("--format", choices=("text", "gradescope"), default="text",
                   help="text (default) or gradescope (results.json)")
    q.add_argument("--results", type=Path,
                   help="gradescope: the file (default results.json); with --batch a "
                        "folder, one STUDENT.json each (default DIR/results)")
    q.add_argument("--show-values", action="store_true",
                   help="show the figures each failure compared")
    q.set_defaults(func=cmd_grade)

    q = lab_sub.add_parser("export", help="write the labs for a course: --student DIR")
    q.add_argument("--student", dest="dest", type=Path, required=True, metavar="DIR",
                   help="the students' copy (no solutions), into a new or empty folder")
    q.set_defaults(func=cmd_student_copy)
    q = lab_sub.add_parser("student-copy", help="the same as export --student DEST")
    q.add_argument("dest", type=Path, help="a new (or empty) folder")
    q.set_defaults(func=cmd_student_copy)


def cmd_list(args: argparse.Namespace) -> int:
    found = grading.find_labs()
    if not found:
        print(f"no labs in {grading.LABS_DIR}")
        return 1
    for lab in found:
        h = lab.handout
        print(f"{lab.number}  {h.title}")
        for line in textwrap.wrap(h.goal, 76):
            print(f"     {line}")
    print("\nstart one with: testbed lab start N")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    lab = grading.get_lab(args.lab)
    handout = lab.handout
    dest = grading.start(lab, args.dir)
    print(f"lab {lab.number}: {handout.title}")
    print(f"copied to {dest}/: " + ", ".join(p.name for p in sorted(dest.iterdir())))
    print(f"read {dest}/README.md, then, from that folder:")
    if grading.predictions.prediction_keys(grading.Answers.load(dest / grading.ANSWERS)):
        print(f"\nbefore your first run: answer the predictions (P1, ...) of "
              f"{grading.ANSWERS} and record them: testbed lab predict {lab.number}")
    steps = handout.steps()
    if steps:
        print(f"\nfirst step: {steps[0].title}")
        print(f"  cd {dest}")
        for c in steps[0].commands:
            print(f"  {c}")
    print(f"\nwhen you have answered {grading.ANSWERS}: testbed lab check {lab.number}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    lab = grading.get_lab(args.lab)
    grade = grading.check(lab, args.dir)
    show = args.show_values or os.environ.get(grading.SHOW_VALUES_ENV, "") not in ("", "0")
    if args.format == "gradescope":
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(grade.gradescope(show), indent=1))
        print(f"lab {lab.number}: {grade.score:g} of {grade.max_score:g} points; "
              f"wrote {args.results}")
    else:
        for line in grade.lines(show):
            print(line)
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_text(grade.junit(show))
    return 0 if grade.passed else 1


def cmd_predict(args: argparse.Namespace) -> int:
    lab = grading.get_lab(args.lab)
    rec = grading.predictions.record(lab, args.dir)
    for key, e in rec.entries.items():
        print(f"{key}: {e.answer} (recorded {e.recorded_at})")
    late = sorted({f for e in rec.entries.values() for f in e.runs_before})
    if late:
        print(f"note: {', '.join(late)} existed already: a prediction recorded after your "
              f"runs earns no points (compare it with your results all the same)")
        return 1
    print(f"recorded in {args.dir / grading.predictions.RECORD}; now run the steps. A "
          f"prediction earns its points for being made before the runs, not for being right")
    return 0


def cmd_student_copy(args: argparse.Namespace) -> int:
    out = grading.student_copy(args.dest)
    labs = grading.find_labs(out)
    print(f"wrote {len(labs)} labs to {out}/ (no solutions, keys or reference figures)")
    print(f"students run the labs from it with: export TESTBED_LABS={out.resolve()}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    lab = grading.get_lab(args.lab)
    out, manifest = handin.submit(lab, args.dir, args.out)
    print(f"lab {lab.number}: packed {len(manifest.files)} files of {len(manifest.runs)} "
          f"run{'s' if len(manifest.runs) != 1 else ''} and your answers into {out}")
    asked = grading.predictions.prediction_keys(grading.Answers.load(lab.path / grading.ANSWERS))
    if asked and grading.predictions.RECORD not in manifest.files:
        print(f"note: no predictions recorded (testbed lab predict {lab.number}): the "
              f"predictions earn no points")
    print("hand in that file; `testbed lab check` still grades your work folder as it is")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    if (args.archive is None) == (args.batch is None):
        raise grading.LabError("give one archive, or --batch DIR (not both)")
    lab = grading.get_lab(args.lab) if args.lab else None
    show = args.show_values or os.environ.get(grading.SHOW_VALUES_ENV, "") not in ("", "0")
    if args.archive is not None:
        g = handin.grade_submission(args.archive, lab)
        if g.grade is None:
            raise handin.HandinError(g.refused)
        if args.format == "gradescope":
            dest = args.results or Path("results.json")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(g.gradescope(show), indent=1))
            print(f"{g.line()}; wrote {dest}")
        else:
            print(g.line())
            for line in g.grade.lines(show):
                print(f"  {line}")
        return 0 if g.grade.passed else 1
    graded = handin.grade_batch(args.batch, lab)
    for g in graded:
        print(g.line())
        for flag in g.flags:
            print(f"  flag: {flag}")
    table = args.csv or args.batch / "grades.csv"
    handin.write_csv(graded, table)
    ta_rows = handin.ta_rows(graded)
    if ta_rows:
        ta = args.ta or args.batch / "short-answers.csv"
        grading.shortanswers.write_ta_file(ta_rows, ta)
        print(f"wrote the short answers for your TA ({len(ta_rows)} rows, with the rubric) "
              f"to {ta}")
    print(f"{len(graded)} hand-ins, {sum(g.grade is None for g in graded)} refused, "
          f"{sum(bool(g.flags) for g in graded)} flagged; wrote {table}")
    if args.format == "gradescope":
        folder = args.results or args.batch / "results"
        folder.mkdir(parents=True, exist_ok=True)
        for g in graded:
            (folder / f"{g.student}.json").write_text(json.dumps(g.gradescope(show), indent=1))
        print(f"wrote {len(graded)} results.json files to {folder}/")
    return 0 if all(g.grade is not None and not g.flags for g in graded) else 1
