"""The ``testbed`` command line.

Each subcommand lives in its own module, which exposes ``register(subparsers)``:
it adds its parser and sets ``func`` to a function ``run(args) -> int``. This
file only collects them, so that the parts of the project can grow their own
commands without touching each other.

Errors the user can cause arrive as :class:`testbed.errors.TestbedError` and are
printed as one line; Ctrl-C exits with 130 after the command's own cleanup ran.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from . import __version__
from .errors import TestbedError

# Modules that provide subcommands, in the order `testbed --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "testbed.commands.run",
    "testbed.commands.claims",
    "testbed.commands.results",
    "testbed.commands.up",
    "testbed.commands.clean",
    "testbed.commands.doctor",
    "testbed.commands.iscsi",
    "testbed.commands.lab",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Network block I/O under memory pressure: launch, reproduce, compare.")
    parser.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
