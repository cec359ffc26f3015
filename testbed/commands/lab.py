"""``testbed lab list | start N [--dir DIR] | check N [DIR]``: the course labs.

- ``list``: each lab's number, title and goal.
- ``start N``: copies the lab's handout, scenario files and ``answers.yaml`` into a
  work folder (``./labN`` unless ``--dir``) and prints the first step; every command
  of the handout is then run from that folder.
- ``check N [DIR]``: runs the lab's grader on the work folder (default: the current
  folder) and prints each check as PASS or FAIL with one sentence; the exit status is
  0 only when every check passed.

The labs themselves are in ``labs/``; :mod:`testbed.grading` finds, copies and grades them.
"""

from __future__ import annotations

import argparse
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
    q.set_defaults(func=cmd_check)


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
    for line in grade.lines():
        print(line)
    return 0 if grade.passed else 1
