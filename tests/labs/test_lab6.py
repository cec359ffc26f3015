"""Lab 6 (design your own policy): its files, its grader on synthetic hand-ins, and one real run.

Without root: the lab's flood is lab 2's machine with three bulk hosts, and its spoofed
load the testbed's ``spoof``, each with the student's file as the policy; the student copy holds the starter ``mypolicy.py`` and
nothing of the reference policy; the grader passes the reference hand-in and fails wrong
ones (runs of another version of the file, the starter unchanged, a storage frame dropped,
reserve given away, a batch short of its five runs or of another policy) with sentences
that name no figure, and judges the policy's claims on the student's own runs (the exact
binomial test: "not supported" is the right answer when the runs do not support them). On
the machine (``test_the_reference_policy_passes_on_real_runs``): the handout followed as
written (two batches of five runs), with the reference policy as ``mypolicy.py``, on real
Mininet runs, then ``testbed lab check 6``, ``testbed lab submit 6`` and ``testbed lab
grade`` of the archive; and the starter's batch of step 2 failing the flood's check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

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
    assert (starter.era.kernel, reference.era.kernel) == ("2.6.13", "3.6")
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

def hand_in(tmp_path: Path, **figures) -> Path:
    work = grading.start(LAB, tmp_path / "lab6")
    synthetic.lab6(work, **figures)
    grading.fill_answers(work / "answers.yaml", load_solve().solve(work))
    return work


def failed(grade: grading.Grade) -> dict[str, str]:
    return {c.name: c.sentence for c in grade.checks if not c.passed}


HOLDING = {"the flood completes", "no storage frame dropped in the flood",
           "the spoofed runs complete", "forged frames get no reserve"}


@pytest.mark.cli
def test_the_reference_hand_in_passes(tmp_path):
    work = hand_in(tmp_path)
    grade = grading.check(LAB, work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))
    assert len(grade.checks) == 18 and grade.max_score == 26
    answers = yaml.safe_load((work / "answers.yaml").read_text())
    assert answers["flood_completes"] == answers["flood_keeps_storage"] == "supported"
    assert answers["spoof_no_reserve"] == "supported"
    assert (answers["flood_clean_runs"], answers["spoof_clean_runs"]) == (5, 5)


@pytest.mark.cli
def test_a_policy_that_does_not_hold_its_claims_is_graded_on_what_its_runs_show(tmp_path):
    """The starter's failure on the flood (ACKs lost on transmit in every run) and reserve
    given out in two spoofed runs: the right conclusions are "not supported", and only the
    checks of the policy holding its claims fail, with sentences that name no figure."""
    work = hand_in(tmp_path / "a", tx_storage_drops=(12, 30, 0, 7, 41),
                   spoof_reserve=(0, 9, 0, 3, 0))
    answers = yaml.safe_load((work / "answers.yaml").read_text())
    assert answers["flood_keeps_storage"] == answers["spoof_no_reserve"] == "not supported"
    assert (answers["flood_clean_runs"], answers["spoof_clean_runs"]) == (1, 3)
    assert (answers["flood_storage_drops"], answers["spoof_reserve_peak"]) == (12, 9)
    bad = failed(grading.check(LAB, work))
    assert set(bad) == {"no storage frame dropped in the flood", "forged frames get no reserve"}
    assert "do not support that no storage frame is dropped" in bad[
        "no storage frame dropped in the flood"]
    assert "do not support that forged frames get no reserve" in bad[
        "forged frames get no reserve"]
    for sentence in bad.values():
        assert not re.search(r"\b(12|9|1|3)\b", sentence), sentence
        assert "again" not in sentence
    # the same runs, the claims stated as if they held: the conclusions fail too
    grading.fill_answers(work / "answers.yaml", {"flood_keeps_storage": "supported",
                                                 "spoof_no_reserve": "supported"})
    bad = failed(grading.check(LAB, work))
    assert set(bad) == {"no storage frame dropped in the flood", "forged frames get no reserve",
                        "conclusion no storage frame dropped",
                        "conclusion forged frames get no reserve"}
    assert bad["conclusion no storage frame dropped"].startswith(
        "flood_keeps_storage: not what the exact one-sided binomial test gives")


@pytest.mark.cli
def test_four_runs_that_hold_of_five_do_not_support_the_claim(tmp_path):
    """4 of 5 (p = 0.19): "not supported" is the right answer, and the policy loses the
    holding check's points, not the conclusion's; a flood run that locked up likewise."""
    work = hand_in(tmp_path, storage_drops=(0, 0, 3, 0, 0),
                   flood_verdicts=("completed", "lockup", "completed", "completed", "completed"))
    answers = yaml.safe_load((work / "answers.yaml").read_text())
    assert answers["flood_keeps_storage"] == answers["flood_completes"] == "not supported"
    assert answers["flood_completions"] == 4 and answers["flood_clean_runs"] == 4
    bad = failed(grading.check(LAB, work))
    assert set(bad) == {"no storage frame dropped in the flood", "the flood completes"}


@pytest.mark.cli
def test_failures_never_give_the_figures_away(tmp_path):
    """Two hand-ins with different figures and the same wrong answers: the same sentences."""
    sentences = []
    for name, scale in (("a", 1.0), ("b", 1.7)):
        work = hand_in(tmp_path / name, scale=scale, tx_storage_drops=(40, 50, 60, 70, 80))
        grading.fill_answers(work / "answers.yaml", {
            "flood_completions": 3, "flood_clean_runs": 2, "flood_storage_drops": 0,
            "flood_other_drops": 0, "spoof_clean_runs": 1, "spoof_reserve_peak": 4})
        sentences.append(failed(grading.check(LAB, work)))
    assert sentences[0] == sentences[1]
    assert {"flood completions", "flood clean runs", "flood storage drops",
            "flood other drops", "spoof clean runs", "spoof reserve peak"} <= set(sentences[0])


@pytest.mark.cli
def test_wrong_hand_ins_fail_with_sentences_that_name_no_figure(tmp_path):
    # fewer runs than the step asks for: named with the step and --repeat
    work = hand_in(tmp_path / "few", spoof_reserve=(0, 0, 0))
    bad = failed(grading.check(LAB, work))
    assert "runs/spoof has fewer than 5 runs of mypolicy.py: step 3 asks for 5 (--repeat 5)" \
        in bad["forged frames get no reserve"]
    assert "the flood completes" not in bad
    # a batch of another policy
    work = hand_in(tmp_path / "b")
    shutil.rmtree(work / "runs/flood")
    synthetic.compare(work / "runs/flood", {"none": [synthetic.Run("none")] * 5})
    bad = failed(grading.check(LAB, work))
    assert bad["the flood completes"].startswith("runs/flood has no mypolicy.py run (it has: "
                                                 "none)")
    # the file changed after the runs: no run counts
    work = hand_in(tmp_path / "c")
    (work / "mypolicy.py").write_text((work / "mypolicy.py").read_text() + "# later\n")
    bad = failed(grading.check(LAB, work))
    assert "ran another version of mypolicy.py" in bad["the flood completes"]
    assert "ran another version of mypolicy.py" in bad["forged frames get no reserve"]
    assert "before you look at them" in bad["the flood completes"]
    # one run of the batch made with another version of the file: that run is named
    work = hand_in(tmp_path / "d")
    [run] = [d for d in (work / "runs/spoof").iterdir() if d.name.endswith("_4")]
    summary = json.loads((run / "summary.json").read_text())
    summary["policy_file"]["sha256"] = hashlib.sha256(b"another").hexdigest()
    (run / "summary.json").write_text(json.dumps(summary))
    bad = failed(grading.check(LAB, work))
    assert bad["forged frames get no reserve"].startswith(
        f"runs/spoof/{run.name} ran another version of mypolicy.py")
    assert "the flood completes" not in bad
    # the starter unchanged, and a file that does not load: every check of the file fails
    shutil.copyfile(STARTER, work / "mypolicy.py")
    assert "still the file the lab gave you" in failed(grading.check(LAB, work))["your policy era"]
    (work / "mypolicy.py").write_text("from testbed.mm.policy.base import Policy\n"
                                      "class P(Policy):\n    def sk_filter(self, skb):\n"
                                      "        return None\n")
    sentence = failed(grading.check(LAB, work))["your policy loads"]
    assert sentence.startswith("mypolicy.py does not load, so no run can use it: ")
    assert "mypolicy.py:3: P.sk_filter(self, skb) takes other arguments" in sentence


@pytest.mark.cli
def test_a_hand_in_without_the_file_takes_the_copy_the_runs_kept(tmp_path):
    """In an archive the file handed in is the copy the flood's runs kept."""
    work = hand_in(tmp_path)
    (work / "mypolicy.py").unlink()
    grade = grading.check(LAB, work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))


# -- the machine test ------------------------------------------------------------------------

@pytest.mark.mininet
@pytest.mark.root
@pytest.mark.tgtd
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_reference_policy_passes_on_real_runs(tmp_path):
    """The handout as written (two batches of five runs, two at a time), the reference
    policy as mypolicy.py; then its hand-in archive verified and graded."""
    env = student_env()
    cwd = tmp_path
    for text in LAB.handout.commands():
        if text == "testbed lab check 6":
            load_solve_cli(cwd, env)
        cmd, cwd = run_command(text, cwd, env)
        assert succeeded(cmd), f"`{text}` exited {cmd.returncode}:\n{cmd.output[-3000:]}"
        if text == "cd lab6":
            shutil.copyfile(REFERENCE, cwd / "mypolicy.py")
    assert "18 of 18 checks passed" in cmd.output, cmd.output
    reference = hashlib.sha256(REFERENCE.read_bytes()).hexdigest()
    for load in ("flood", "spoof"):
        runs = grading.BatchFolder.open(cwd / "runs" / load).policy_runs("mypolicy.py")
        assert len(runs) == 5
        for run in runs:
            assert run.summary["policy_file"]["sha256"] == reference
            assert (run.path / "policy/mypolicy.py").read_bytes() == REFERENCE.read_bytes()
    # the hand-in: verified (every summary recomputed, the kept policy file loaded) and graded
    for text in ("testbed lab submit 6", "testbed lab grade lab6-handin.tar.gz"):
        cmd, _ = run_command(text, cwd, env)
        assert cmd.returncode == 0, f"`{text}`:\n{cmd.output}"
    assert "18 of 18 checks passed" in cmd.output, cmd.output


def load_solve_cli(work: Path, env: dict[str, str]) -> None:
    """Fill answers.yaml with the reference solution, as tests/labs/conftest.py does."""
    from tests.labs.conftest import answer
    answer(LAB, work, env)


@pytest.mark.mininet
@pytest.mark.root
@pytest.mark.tgtd
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_vanilla_kernel_fails_the_flood(tmp_path):
    """The flood's check can fail: the starter's hooks (the 2005 vanilla kernel), in a file
    of its own, lose the initiator's ACKs on transmit at the GFP_ATOMIC floor in every run
    of step 2's batch (the calibration is in the instructor's README), and the grader
    says so; the runs do support that it completes."""
    env = student_env()
    work = grading.start(LAB, tmp_path / "lab6")
    (work / "mypolicy.py").write_text(STARTER.read_text() + "# my policy: the vanilla kernel\n")
    [step2] = [c for c in LAB.handout.commands() if "--out runs/flood" in c]
    cmd, _ = run_command(step2, work, env)
    assert succeeded(cmd), cmd.output[-3000:]
    grade = grading.check(LAB, work)
    by_name = {c.name: c for c in grade.checks}
    assert by_name["the flood completes"].passed
    check = by_name["no storage frame dropped in the flood"]
    assert not check.passed and "do not support that no storage frame is dropped" in check.sentence
