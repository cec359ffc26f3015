"""Lab 6 (design your own policy): its files, its grader on synthetic hand-ins, and one real run.

Without root: the lab's flood is lab 2's machine with three bulk hosts, and its spoofed
load the testbed's ``spoof``, each with the student's file as the policy; the student copy holds the starter ``mypolicy.py`` and
nothing of the reference policy; the grader passes the reference hand-in and fails wrong
ones (runs of another version of the file, the starter unchanged, a storage frame dropped,
reserve given away) with sentences that name no figure. On the machine
(``test_the_reference_policy_passes_on_real_runs``): the handout followed as written, with
the reference policy as ``mypolicy.py``, on real Mininet runs, then ``testbed lab check 6``,
``testbed lab submit 6`` and ``testbed lab grade`` of the archive.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from testbed import grading, scenario
from testbed.mm.policy.loader import load_policy_file
from tests.labs.conftest import run_command, student_env, succeeded
from tests.labs import synthetic

LAB = grading.get_lab(6)
REFERENCE = LAB.instructor / "reference_policy.py"
STARTER = LAB.path / "mypolicy.py"
LAB2 = grading.get_lab(2).path / "reserve.yaml"


def load_solve():
    spec = importlib.util.spec_from_file_location("lab6_solve", LAB.instructor / "solve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparable(path, drop: tuple[str, ...]) -> dict:
    """A scenario's settings without its name, description and the given client keys."""
    got = scenario.load(path).to_dict()
    for key in ("name", "description"):
        got.pop(key)
    for key in drop:
        got["client"].pop(key)
    return got


def test_the_flood_is_lab_2s_machine_with_three_bulk_hosts():
    """Lab 2's load (the long link, min_free_kbytes at its floor, the UDP flood) with three
    bulk hosts; only the policy and its reserve are the student's."""
    mine = scenario.load(LAB.path / "flood.yaml").to_dict()
    assert mine["client"]["policy"] == str(STARTER.resolve())
    assert mine["client"]["reserve_pages"] is None          # the policy sizes its reserve
    assert mine["client"]["rx_reserve"] == 200 and mine["topology"]["bulk_hosts"] == 3
    theirs = comparable(LAB2, ("policy", "reserve_pages"))
    theirs["topology"]["bulk_hosts"] = 3
    assert comparable(LAB.path / "flood.yaml", ("policy", "reserve_pages")) == theirs


def test_the_spoofed_load_is_the_testbeds_spoof():
    """The same load as the built-in scenario; only the name and the policy differ."""
    mine = scenario.load(LAB.path / "spoof.yaml").to_dict()
    assert mine["client"]["policy"] == str(STARTER.resolve())
    assert comparable(LAB.path / "spoof.yaml", ("policy",)) == comparable("spoof", ("policy",))


def test_the_starter_and_the_reference_load_and_differ():
    starter, reference = load_policy_file(STARTER), load_policy_file(REFERENCE)
    assert starter.era.kernel == reference.era.kernel == "2.6.13"
    assert starter.sha256 != reference.sha256
    assert reference.cls.__name__ == "ReserveForStorage"


def test_the_student_copy_has_the_starter_and_nothing_of_the_reference(tmp_path):
    out = grading.student_copy(tmp_path / "course")
    lab = out / LAB.name
    assert (lab / "mypolicy.py").read_bytes() == STARTER.read_bytes()
    assert not (lab / "reference_policy.py").exists()
    names = {p.name for p in out.rglob("*")}
    assert not names & {"reference_policy.py", "solve.py", "key.yaml"}
    ref = REFERENCE.read_bytes()
    for p in out.rglob("*"):
        if p.is_file():
            assert p.read_bytes() != ref, p
            assert "ReserveForStorage" not in p.read_text(errors="replace"), p
    work = grading.start(grading.get_lab(6, root=out), tmp_path / "lab6")
    assert sorted(p.name for p in work.iterdir()) == ["README.md", "answers.yaml",
                                                     "flood.yaml", "mypolicy.py", "spoof.yaml"]


# -- the grader on synthetic hand-ins ------------------------------------------------------

def hand_in(tmp_path: Path, **figures: int) -> Path:
    work = grading.start(LAB, tmp_path / "lab6")
    synthetic.lab6(work, **figures)
    grading.fill_answers(work / "answers.yaml", load_solve().solve(work))
    return work


def failed(grade: grading.Grade) -> dict[str, str]:
    return {c.name: c.sentence for c in grade.checks if not c.passed}


@pytest.mark.cli
def test_the_reference_hand_in_passes(tmp_path):
    grade = grading.check(LAB, hand_in(tmp_path))
    assert grade.passed, "\n".join(grade.lines())
    assert len(grade.checks) == 12 and grade.max_score == 17


@pytest.mark.cli
def test_wrong_hand_ins_fail_with_sentences_that_name_no_figure(tmp_path):
    # the starter's failure on the flood: ACKs lost on transmit, none of the received frames
    work = hand_in(tmp_path / "tx", tx_storage_drops=12)
    bad = failed(grading.check(LAB, work))
    assert set(bad) == {"no storage frame dropped in the flood"}
    assert "dropped storage frames" in bad["no storage frame dropped in the flood"]
    assert not re.search(r"\b12\b", bad["no storage frame dropped in the flood"])
    work = hand_in(tmp_path / "a", storage_drops=12, spoof_reserve=9)
    bad = failed(grading.check(LAB, work))
    assert set(bad) == {"no storage frame dropped in the flood", "forged frames get no reserve"}
    assert "dropped storage frames" in bad["no storage frame dropped in the flood"]
    assert "from the reserve out" in bad["forged frames get no reserve"]
    for sentence in bad.values():
        assert not re.search(r"\b(12|9)\b", sentence), sentence
    # the file changed after the runs: no run counts
    (work / "mypolicy.py").write_text((work / "mypolicy.py").read_text() + "# later\n")
    bad = failed(grading.check(LAB, work))
    assert "ran another version of mypolicy.py" in bad["the flood completes"]
    assert "ran another version of mypolicy.py" in bad["forged frames get no reserve"]
    # the starter unchanged, and a file that does not load: every check of the file fails
    shutil.copyfile(STARTER, work / "mypolicy.py")
    assert "still the file the lab gave you" in failed(grading.check(LAB, work))["your policy era"]
    (work / "mypolicy.py").write_text("from testbed.mm.policy.base import Policy\n"
                                      "class P(Policy):\n    def sk_filter(self, skb):\n"
                                      "        return None\n")
    sentence = failed(grading.check(LAB, work))["your policy loads"]
    assert sentence.startswith("mypolicy.py does not load, so no run can use it: ")
    assert "mypolicy.py:3: P.sk_filter(self, skb) takes other arguments" in sentence


# -- the machine test ------------------------------------------------------------------------

@pytest.mark.mininet
@pytest.mark.root
@pytest.mark.tgtd
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_reference_policy_passes_on_real_runs(tmp_path):
    """The handout as written (two runs of ~20 s), the reference policy as mypolicy.py; then
    its hand-in archive verified and graded."""
    env = student_env()
    cwd = tmp_path
    for text in LAB.handout.commands():
        if text == "testbed lab check 6":
            load_solve_cli(cwd, env)
        cmd, cwd = run_command(text, cwd, env)
        assert succeeded(cmd), f"`{text}` exited {cmd.returncode}:\n{cmd.output[-3000:]}"
        if text == "cd lab6":
            shutil.copyfile(REFERENCE, cwd / "mypolicy.py")
    assert "12 of 12 checks passed" in cmd.output, cmd.output
    summary = json.loads((cwd / "runs/flood/summary.json").read_text())
    assert summary["policy"] == "mypolicy.py"
    assert summary["policy_file"]["sha256"] == hashlib.sha256(REFERENCE.read_bytes()).hexdigest()
    assert (cwd / "runs/spoof/policy/mypolicy.py").read_bytes() == REFERENCE.read_bytes()
    # the hand-in: verified (every summary recomputed, the kept policy file loaded) and graded
    for text in ("testbed lab submit 6", "testbed lab grade lab6-handin.tar.gz"):
        cmd, _ = run_command(text, cwd, env)
        assert cmd.returncode == 0, f"`{text}`:\n{cmd.output}"
    assert "12 of 12 checks passed" in cmd.output, cmd.output


def load_solve_cli(work: Path, env: dict[str, str]) -> None:
    """Fill answers.yaml with the reference solution, as tests/labs/conftest.py does."""
    from tests.labs.conftest import answer
    answer(LAB, work, env)


@pytest.mark.mininet
@pytest.mark.root
@pytest.mark.tgtd
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_vanilla_kernel_fails_the_flood(tmp_path):
    """The flood's check can fail: the starter's hooks (the 2005 vanilla kernel), in a file
    of its own, lose the initiator's ACKs on transmit at the GFP_ATOMIC floor (610 to 1,068
    a run in the calibration, docs/measurements.md), and the grader says so."""
    env = student_env()
    work = grading.start(LAB, tmp_path / "lab6")
    (work / "mypolicy.py").write_text(STARTER.read_text() + "# my policy: the vanilla kernel\n")
    cmd, _ = run_command("testbed run flood.yaml --out runs/flood", work, env)
    assert succeeded(cmd), cmd.output[-3000:]
    grade = grading.check(LAB, work)
    by_name = {c.name: c for c in grade.checks}
    assert by_name["the flood completes"].passed
    check = by_name["no storage frame dropped in the flood"]
    assert not check.passed and "dropped storage frames" in check.sentence
