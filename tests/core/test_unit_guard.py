"""The rule that says which tests are unit tests (tests/conftest.py), and its guard.

The guard is tried with programs that are harmless if it let them through (``uname``, the
testbed's ``--help``), never with one that would change the machine.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import MACHINE_MARKERS, NOT_UNIT_MARKERS, refusal


def test_this_test_is_a_unit_test_and_not_a_machine_one(request):
    assert "unit" in request.node.keywords
    assert "machine" not in request.node.keywords


@pytest.mark.slow
def test_a_marked_test_is_not_a_unit_test(request):
    assert "unit" not in request.node.keywords and "machine" not in request.node.keywords


@pytest.mark.tgtd
def test_a_machine_marker_makes_a_machine_test(request):
    assert "machine" in request.node.keywords and "unit" not in request.node.keywords


def test_every_machine_marker_keeps_a_test_out_of_the_unit_tests():
    assert set(MACHINE_MARKERS) < set(NOT_UNIT_MARKERS)


def test_stand_ins_and_read_only_queries_are_allowed():
    assert refusal([sys.executable, "-c", "pass"], shell=False) is None
    assert refusal(["sleep", "1"], shell=False) is None
    assert refusal(["git", "describe"], shell=False) is None
    assert refusal(["tcpdump", "-r", "wire.pcapng", "-n"], shell=False) is None


@pytest.mark.parametrize("argv, shell, says", [
    ([sys.executable, "-m", "testbed.cli", "run"], False, "mark the test `cli`"),
    ([sys.executable, "solve.py"], False, "mark the test `cli`"),
    (["ip", "netns", "add", "x"], False, "ip (a program of the machine"),
    (["/usr/sbin/tgtd", "-f"], False, "tgtd (a program of the machine"),
    (["tcpdump", "-i", "eth0", "-w", "x.pcap"], False, "tcpdump (a program of the machine"),
    ("sleep 1", True, "a shell command"),
    ([], False, "a shell command"),
])
def test_anything_else_is_refused_naming_the_marker(argv, shell, says):
    assert says in refusal(argv, shell)


def test_a_unit_test_that_starts_a_program_fails_before_it_runs():
    with pytest.raises(pytest.fail.Exception, match="a unit test started uname"):
        subprocess.run(["uname"], capture_output=True, timeout=10)
    with pytest.raises(pytest.fail.Exception, match="mark the test `cli`"):
        subprocess.run([sys.executable, "-m", "testbed.cli", "--help"], capture_output=True,
                       timeout=30)
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True,
                          text=True, timeout=30).stdout == "1\n"
