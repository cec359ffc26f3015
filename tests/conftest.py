"""Shared pytest configuration: which tests are unit tests, and the guard that keeps them so.

Tests that need root, a real Mininet, a real tgtd or Docker are marked (the markers are
listed in pyproject.toml). On CI they all run (CI runs as root with everything installed);
on a laptop without root the root-only ones are skipped with a reason, never silently
passed.

Three markers are derived here, never written on a test, so that membership has one rule:

- ``machine``: the test has one of ``MACHINE_MARKERS``. It changes the machine (namespaces,
  links, qdiscs, tgtd, dockerd, a guest) and checks it for leftovers afterwards, by its
  runs' tags, so machine tests run after the others, a few at a time (``make test``'s
  second part), as ``--workers`` runs do: each run is isolated and judges its own
  fidelity. A file's tests stay on one worker (``--dist loadfile``): a module- or
  session-scoped run (a lab's handout, a hand-in, the cluster) is made once.
- ``alone``: a machine test in ``ALONE``: it looks at the whole machine (snapshots of
  every namespace, ``testbed clean``, dockerd's iptables), times itself near a bound,
  takes a core to itself (a TCG guest), or asserts on a batch's verdicts or one run's.
  These run one at a time, last (the third part), in two streams and a tail: the tests
  of ``ALONE_GUEST`` (marked ``alone_guest``: a QEMU guest, one core) one at a time
  beside the rest of ``alone`` (the runs, one at a time), then those of ``ALONE_WHOLE``
  (``alone_whole``: they look at the whole machine) with nothing beside them.
- ``unit``: the test has none of ``NOT_UNIT_MARKERS``: it runs inside the pytest process,
  with at most tiny local stand-ins (a ``python -c`` snippet, ``sleep``, a socket on
  loopback). ``make check`` runs these alone, in parallel (pytest-xdist).

A test that is neither (``slow`` or ``cli`` without a machine marker) shares nothing
either, and runs in parallel with the unit tests in ``make test``.

The markers are a claim; the guard checks it. While a ``unit`` test runs, starting a
program other than a stand-in fails the test with a message that names the program and
the marker to add (``cli`` for the testbed's own programs, a machine marker for the
rest). The guard sees the test's own process: what a stand-in's child does is not seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

# Markers that say the test changes the machine: run after the rest (make test's parts 2, 3).
MACHINE_MARKERS = ("root", "mininet", "tgtd", "docker")
# Machine tests that run one at a time, and why (a path prefix under the repository).
ALONE = {
    "tests/platform/": "compare snapshots of the whole machine, run testbed clean, plain Mininet",
    "tests/docker/": "dockerd rewrites the root namespace's iptables and bridges",
    "tests/guest/": "a TCG guest takes a core to itself, and its timings are the guest's",
    "tests/e2e/test_killpoints.py": "runs testbed clean after killing its runs",
    "tests/e2e/test_workers.py": "watches every run's namespaces to see its two side by side",
    "tests/e2e/test_patience.py": "stalls and stops timed against the initiator's horizons",
    "tests/e2e/test_fidelity.py": "its run's figures include the host's CPU pressure",
    "tests/netdev/test_link_effects.py": "delays measured within 10 % by pings",
    # verdicts counted over batches, whose rates the tests assert: beside a loaded
    # machine's other runs (load 8-16, 2026-11-30) each of these failed once
    "tests/e2e/test_scenarios.py": "the article's claims, judged on a batch of runs two at a time",
    "tests/labs/test_lab6.py": "the flood's frame rate against the packet handler's CPU",
    "tests/e2e/test_stress.py": "a campaign within a time budget",
    # lab 1's handout reads its first none run's lockup: three at a time, 2 of 11 such runs
    # completed (the OOM killer took the mmap writer at 1.9 s, before memory filled; CI of
    # b897567). One at a time it happens too (CI of 8f7d759: at 1.0 s), but more rarely.
    # (The hand-ins forge against whichever verdict their one run has, so they run beside.)
    # Lab 7's test asserts that no phillips-2005 run that locked up had reinstated: beside
    # a saturated machine one did (a SYN trickled out at the GFP_ATOMIC floor; CI rehearsal
    # of db0d218, instructor/labs/07-faults-under-pressure/README.md).
    "tests/labs/test_lab_runs.py": "a handout step reads one run's lockup",
    # lab 8 boots Linux 6.1 in a guest five times (TCG): the guest takes a core to itself,
    # and the handout's claims are judged on the verdicts of its batches
    "tests/labs/test_lab8.py": "a TCG guest takes a core to itself; verdicts of two batches",
}
# Of ALONE, the tests whose QEMU guest (TCG) takes one core: they run one at a time beside
# the other stream of alone tests (the runs, which keep the machine 35 % busy one at a
# time: docs/measurements.md), so that a guest and a run share the 2 cores.
ALONE_GUEST = ("tests/guest/", "tests/labs/test_lab8.py")
# Of ALONE, the tests that look at the whole machine (every namespace, link and process;
# dockerd's iptables and bridges): last, with nothing beside them.
ALONE_WHOLE = ("tests/platform/", "tests/docker/")
assert set(ALONE_GUEST + ALONE_WHOLE) <= set(ALONE), "ALONE_GUEST and ALONE_WHOLE are of ALONE"
# Fixtures that keep one dockerd up until their session ends (tests/docker/conftest.py's
# engine, tests/platform/conftest.py's dockerd): tests that use them run after the rest of
# their session, so that a test that starts and stops its own dockerd (docker-up.sh and
# docker-down.sh, tests/platform/test_docker_scripts.py) finds none running.
DOCKERD_FIXTURES = frozenset({"engine", "dockerd"})
# Markers that keep a test out of the unit tests (make check).
NOT_UNIT_MARKERS = MACHINE_MARKERS + ("slow", "cli")
# Programs a unit test may start: stand-ins that change nothing outside the test's files,
# and the read-only queries the library itself makes (the code version the results store
# records is `git describe`; the guest image's inputs name the kernel package apt-cache has).
STAND_INS = frozenset({"sleep", "true", "false", "git", "apt-cache"})
# Programs a unit test may start to read a file only (reading a capture back with tcpdump -r).
READERS = frozenset({"tcpdump"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: derived (tests/conftest.py): none of "
                            + ", ".join(NOT_UNIT_MARKERS) + "; run by make check")
    config.addinivalue_line("markers", "machine: derived (tests/conftest.py): one of "
                            + ", ".join(MACHINE_MARKERS) + "; a few at a time")
    config.addinivalue_line("markers", "alone: derived (tests/conftest.py): a machine test "
                            "in ALONE; run one at a time")
    config.addinivalue_line("markers", "alone_guest: derived (tests/conftest.py): an alone "
                            "test in ALONE_GUEST; beside the other alone tests")
    config.addinivalue_line("markers", "alone_whole: derived (tests/conftest.py): an alone "
                            "test in ALONE_WHOLE; with nothing beside it")


@pytest.fixture(autouse=True, scope="session")
def results_db(tmp_path_factory):
    """Runs the tests make (and the ``testbed`` commands they start, which inherit the
    environment) are recorded in a results database of the session's own, never in
    the working tree's ``runs/results.db``."""
    path = tmp_path_factory.getbasetemp() / "results.db"
    old = os.environ.get("TESTBED_RESULTS_DB")
    os.environ["TESTBED_RESULTS_DB"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TESTBED_RESULTS_DB", None)
    else:
        os.environ["TESTBED_RESULTS_DB"] = old


# tryfirst: the derived markers must be on the items before `-m` deselects by them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        # marker names only: item.keywords also holds the names of the folders and files
        # (every test under tests/docker/ has the keyword "docker")
        marks = {m.name for m in item.iter_markers()}
        if marks & set(MACHINE_MARKERS):
            item.add_marker("machine")
            path = item.nodeid.split("::")[0]
            if path.startswith(tuple(ALONE)):
                item.add_marker("alone")
                if path.startswith(ALONE_GUEST):
                    item.add_marker("alone_guest")
                if path.startswith(ALONE_WHOLE):
                    item.add_marker("alone_whole")
        if not marks & set(NOT_UNIT_MARKERS):
            item.add_marker("unit")
    items.sort(key=lambda item: bool(DOCKERD_FIXTURES & set(getattr(item, "fixturenames", ()))))
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (run `make test` as root)")
    for item in items:
        if "root" in item.keywords or "mininet" in item.keywords:
            item.add_marker(skip)


def refusal(argv: str | bytes | os.PathLike | Sequence, shell: bool) -> str | None:
    """Why a unit test may not start ``argv``, or None when it is a stand-in."""
    args = [os.fsdecode(a) for a in ([argv] if isinstance(argv, (str, bytes, os.PathLike))
                                      else argv)]
    if shell or not args:
        return f"a shell command {args!r}"
    program = Path(args[0]).name
    if args[0] == sys.executable:
        if len(args) > 1 and args[1] == "-c":
            return None                                   # an inline stand-in
        return (f"{' '.join(args[:3])} (the testbed's own programs, a grader, a script: "
                "mark the test `cli`)")
    if program in STAND_INS or (program in READERS and "-r" in args and "-w" not in args):
        return None
    return f"{program} (a program of the machine: mark the test with one of " \
           f"{', '.join(MACHINE_MARKERS)}, or `cli`)"


@pytest.fixture(autouse=True)
def unit_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails a ``unit`` test that starts more than a stand-in (see the module docstring)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        why = refusal(args, bool(kw.get("shell")))
        if why:
            pytest.fail(f"a unit test started {why}", pytrace=False)
        real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield
