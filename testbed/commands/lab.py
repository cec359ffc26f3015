"""``testbed lab list | start N [--dir DIR] | check N [DIR]``: the course labs.

- ``list``: each lab's number, title and goal.
- ``start N``: copies the lab's handout, scenario files and ``answers.yaml`` into a
  work folder (``./labN`` unless ``--dir``) and prints the first step; every command
  of the handout is then run from that folder.
- ``check N [DIR]``: runs the lab's grader on the work folder (default: the current
  folder) and prints each check as PASS or FAIL with one sentence, and the points; the
  exit status is 0 only with full marks. ``--format gradescope`` writes Gradescope's
  ``results.json`` instead (``--results FILE``, default ``results.json``; on Gradescope
  ``/autograder/results/results.json``), ``--junit FILE`` also writes JUnit XML (GitHub
  Classroom, CI). A failure names the answer and the tolerance, never the figures;
  ``--show-values`` (or ``TESTBED_LAB_SHOW_VALUES=1``), for instructors after the
  deadline, adds the figures compared.
- ``student-copy DEST``: writes the course's student tree (``DEST/labs``: handouts,
  scenarios, blank answers, graders; nothing of ``instructor/``). Students point
  ``TESTBED_LABS`` at it, or get the project without ``instructor/``.

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

    q = lab_sub.add_parser("student-copy", help="write the labs for students (no solutions)")
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


def cmd_student_copy(args: argparse.Namespace) -> int:
    out = grading.student_copy(args.dest)
    labs = grading.find_labs(out)
    print(f"wrote {len(labs)} labs to {out}/ (no solutions, keys or reference figures)")
    print(f"students run the labs from it with: export TESTBED_LABS={out.resolve()}")
    return 0
