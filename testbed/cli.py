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
    "testbed.commands.stress",
    "testbed.commands.results",
    "testbed.commands.up",
    "testbed.commands.clean",
    "testbed.commands.doctor",
    "testbed.commands.iscsi",
    "testbed.commands.lab",
)


# Subcommands that must work where the rest cannot be imported: `testbed lab` grades on a
# machine without Mininet or root (a Gradescope autograder), so it loads nothing else.
STANDALONE: dict[str, tuple[str, ...]] = {"lab": ("testbed.commands.lab",)}


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Network block I/O under memory pressure: launch, reproduce, compare.")
    parser.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(STANDALONE.get(argv[0], COMMAND_MODULES) if argv else COMMAND_MODULES)
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
