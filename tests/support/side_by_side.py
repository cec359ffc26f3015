"""Two pytest sessions side by side: ``make test``'s third part, the runs beside the guests.

The tests of ``ALONE`` run one at a time because each asserts on what its own runs did;
the QEMU guests' tests (``alone_guest``) take one core, while the others keep the two
cores about 35 % busy (docs/measurements.md), so the two kinds run at once: each kind
one test at a time, in its own pytest session. The first session prints as it goes; the
second's output is kept and printed when both are done, so that the log reads in order.

Ctrl-C reaches both sessions (they are in the terminal's process group, and start with
Python's own SIGINT handling, unlike a shell's ``&`` job, which ignores SIGINT), each
stops its runs and cleans up, and this waits for both.

    python -m tests.support.side_by_side EXPR1 EXPR2 [-- PYTEST_ARGS...]

(``make test`` gives both sessions its parts' ``-q -rs --durations=30`` and
``PYTEST_ARGS`` after the ``--``.)

Exit status 0 when both sessions passed; pytest's 5 (no test selected) when one selected
nothing and the other passed or selected nothing too, so that ``make test`` judges it as
it judges its other parts (passed only when ``PYTEST_ARGS`` narrowed the selection);
else 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from typing import Sequence

NO_TESTS = 5            # pytest.ExitCode.NO_TESTS_COLLECTED
STOP_WAIT_S = 300       # how long a session may take to clean up after Ctrl-C


def pytest_argv(expr: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", expr, *extra]


def status(rcs: Sequence[int]) -> int:
    """The part's exit status from its sessions' (see the module doc)."""
    if all(rc == 0 for rc in rcs):
        return 0
    return NO_TESTS if all(rc in (0, NO_TESTS) for rc in rcs) else 1


def run(first: str, second: str, extra: Sequence[str]) -> int:
    with tempfile.TemporaryFile(mode="w+") as kept:
        procs = [subprocess.Popen(pytest_argv(second, extra), stdout=kept,
                                  stderr=subprocess.STDOUT)]
        try:
            procs.insert(0, subprocess.Popen(pytest_argv(first, extra)))
            rcs = [p.wait() for p in procs]
        except KeyboardInterrupt:
            # both sessions got the same SIGINT: let them stop their runs
            for p in procs:
                try:
                    p.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            return 130
        finally:
            kept.seek(0)
            print(f"\n== beside it, pytest -m {second!r} ==", flush=True)
            sys.stdout.write(kept.read())
            sys.stdout.flush()
    for expr, rc in zip((first, second), rcs):
        if rc:
            print(f"side_by_side: pytest -m {expr!r} exited {rc}", file=sys.stderr)
    return status(rcs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="side_by_side", description=__doc__.split("\n")[0])
    p.add_argument("first", help="marker expression of the session printed as it goes")
    p.add_argument("second", help="marker expression of the session printed after")
    p.add_argument("extra", nargs="*", help="after --: more pytest arguments, for both")
    args = p.parse_args(argv)
    return run(args.first, args.second, args.extra)


if __name__ == "__main__":
    sys.exit(main())
