"""``testbed clean [--dry-run]``: remove what dead runs left behind, by tag only.

A run is dead when the process that owns its state file is gone (killed, crashed).
Its tagged processes, ``tb-<id>-*`` namespaces, aliased links, commented rules and
state file are removed (see :mod:`testbed.cleanup`); live runs and untagged things
are never touched. With no dead runs it says so and changes nothing.
"""

from __future__ import annotations

import argparse
import os

from .. import cleanup
from ..errors import EnvironmentProblem


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("clean", help="remove what dead (killed) runs left behind",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise EnvironmentProblem("testbed clean needs root (namespaces, processes of root)")
    dead = cleanup.clean_dead_runs(dry_run=args.dry_run)
    if not dead:
        print("testbed clean: no dead runs, nothing to remove")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for left in dead:
        print(f"testbed clean: {verb} {left.describe()}")
        if args.dry_run:
            for pid in left.processes:
                print(f"    process {pid}")
            for name in left.netns + left.links:
                print(f"    {name}")
            for _tool, table, rule in left.iptables:
                print(f"    iptables -t {table} {rule}")
    return 0
