"""Pytest sessions side by side: ``make test``'s third part, the runs, the labs' handouts
and the guests at once.

The tests of ``ALONE`` run one at a time because each asserts on what its own runs did.
One such test keeps the two cores about 35 % busy (docs/measurements.md): most of its
time is its runs' own waits (lockup horizons, stalls). So ``make test`` runs three kinds
at once, each kind one test at a time in a pytest session of its own: the labs'
handouts (``alone_labs``), the QEMU guests (``alone_guest``: one core) and the other
alone tests. The first session prints as it goes; the others' output is kept and printed
when all are done, in the order given, so that the log reads in order.

Ctrl-C reaches every session (they are in the terminal's process group, and start with
Python's own SIGINT handling, unlike a shell's ``&`` job, which ignores SIGINT), each
stops its runs and cleans up, and this waits for all.

    python -m tests.support.side_by_side [--none-ok] EXPR EXPR [EXPR ...] [-- PYTEST_ARGS...]

(``make test`` gives every session its parts' ``-q -rs --durations=30`` and
``PYTEST_ARGS`` after the ``--``.)

Exit status 0 when every session passed; with ``--none-ok`` (``make test`` gives it when
``PYTEST_ARGS`` narrows the selection) a session that selected no test (pytest's 5)
passes too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from typing import IO, Sequence

NO_TESTS = 5            # pytest.ExitCode.NO_TESTS_COLLECTED
STOP_WAIT_S = 300       # how long a session may take to clean up after Ctrl-C


def pytest_argv(expr: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", expr, *extra]


def passed(rc: int, none_ok: bool) -> bool:
    return rc == 0 or (none_ok and rc == NO_TESTS)


def stop(procs: Sequence[subprocess.Popen]) -> None:
    """After Ctrl-C: every session got the same SIGINT; let each stop its runs."""
    for p in procs:
        try:
            p.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def print_kept(exprs: Sequence[str], kept: Sequence[IO[str]]) -> None:
    for expr, f in zip(exprs, kept):
        f.seek(0)
        print(f"\n== beside it, pytest -m {expr!r} ==", flush=True)
        sys.stdout.write(f.read())
        sys.stdout.flush()


def run(exprs: Sequence[str], extra: Sequence[str], none_ok: bool) -> int:
    first, rest = exprs[0], exprs[1:]
    with ExitStack() as files:
        kept = [files.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in rest]
        procs = [subprocess.Popen(pytest_argv(expr, extra), stdout=f, stderr=subprocess.STDOUT)
                 for expr, f in zip(rest, kept)]
        try:
            procs.insert(0, subprocess.Popen(pytest_argv(first, extra)))
            rcs = [p.wait() for p in procs]
        except KeyboardInterrupt:
            stop(procs)
            return 130
        finally:
            print_kept(rest, kept)
    for expr, rc in zip(exprs, rcs):
        if not passed(rc, none_ok):
            print(f"side_by_side: pytest -m {expr!r} exited {rc}", file=sys.stderr)
    return 0 if all(passed(rc, none_ok) for rc in rcs) else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="side_by_side", description=__doc__.split("\n")[0])
    p.add_argument("--none-ok", action="store_true",
                   help="a session that selected no test passes (PYTEST_ARGS narrowed it)")
    p.add_argument("exprs", nargs="+", metavar="EXPR",
                   help="a marker expression per session; the first's output is printed "
                        "as it goes, the others' after it")
    args, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    ns = p.parse_args(args)
    if len(ns.exprs) < 2:
        p.error("give two marker expressions or more (one session needs no side by side)")
    return run(ns.exprs, extra, ns.none_ok)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """This program's arguments, and pytest's after the first ``--``."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


if __name__ == "__main__":
    sys.exit(main())
