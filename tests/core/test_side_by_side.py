"""make test's third part runs two pytest sessions side by side
(tests/support/side_by_side.py): on a tiny suite of its own, both sessions run, the
second's output comes after the first's, and the exit status is both sessions'."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import side_by_side

pytestmark = pytest.mark.cli        # starts pytest sessions as child processes

SUITE = {
    "pytest.ini": "[pytest]\nmarkers =\n    one: first\n    two: second\n",
    "test_one.py": "import pytest\n\n@pytest.mark.one\ndef test_first():\n    print('ONE')\n",
    "test_two.py": ("import os, pytest\n\n@pytest.mark.two\ndef test_second():\n"
                    "    assert not os.environ.get('FAIL_TWO')\n"),
}


def suite(tmp_path: Path) -> list[str]:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    return ["-q", "-s", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
            "--rootdir", str(tmp_path), str(tmp_path)]


def test_both_sessions_run_and_the_second_is_printed_after(tmp_path, capfd):
    assert side_by_side.main(["one", "two", "--", *suite(tmp_path)]) == 0
    out = capfd.readouterr().out
    assert out.index("ONE") < out.index("== beside it, pytest -m 'two' ==")
    assert out.count("1 passed") == 2


def test_a_failure_in_either_session_fails_the_part(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("FAIL_TWO", "1")
    assert side_by_side.main(["one", "two", "--", *suite(tmp_path)]) == 1
    assert "pytest -m 'two' exited 1" in capfd.readouterr().err


def test_a_session_that_selects_nothing_is_pytests_5_for_make_to_judge(tmp_path, monkeypatch):
    """make test passes a part whose status is 5 only when PYTEST_ARGS narrowed it
    (the Makefile's NONE_OK), as it does its other parts."""
    assert side_by_side.main(["one", "nothing_has_this", "--", *suite(tmp_path)]) == 5
    monkeypatch.setenv("FAIL_TWO", "1")
    assert side_by_side.main(["nothing_has_this", "two", "--", *suite(tmp_path)]) == 1


def test_ctrl_c_stops_both_sessions(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C: both sessions are
    interrupted (not left running, as a shell's background job would be) and the part
    exits 130."""
    for name in ("one", "two"):
        (tmp_path / f"test_{name}.py").write_text(
            f"import pathlib, time, pytest\n\n@pytest.mark.{name}\ndef test_{name}():\n"
            f"    pathlib.Path({str(tmp_path / name)!r}).touch()\n    time.sleep(60)\n")
    (tmp_path / "pytest.ini").write_text(SUITE["pytest.ini"])
    argv = [sys.executable, "-m", "tests.support.side_by_side", "one", "two", "--", "-q",
            "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"), "--rootdir",
            str(tmp_path), str(tmp_path)]
    # as from a terminal: SIGINT at its default (a shell's background job, which may have
    # started this test, ignores it, and a Python started so keeps ignoring it)
    p = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[2],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True,
                         preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / n).exists() for n in ("one", "two")):
            assert time.monotonic() < deadline and p.poll() is None, "the sessions did not start"
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, out
    assert out.count("KeyboardInterrupt") >= 2, out      # each session was interrupted
