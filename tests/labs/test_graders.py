"""The graders on synthetic hand-ins (no root, no Mininet): what they accept, what their
failures say, and the copies and formats a course uses.

- The instructor's solution, applied to a hand-in, gets full marks on every lab.
- A conclusion is graded against what the student's own runs support at 95 %: runs that
  do not show the effect make ``not supported`` the right answer (never "run again").
- Failure sentences name the key and the tolerance, never a figure: two hand-ins with
  different figures and the same wrong answers get the same sentences; the instructor's
  ``--show-values`` shows the figures.
- The student copy holds no solution, key or reference figure, and its graders run
  (multiple-choice checks are then left to the instructor's autograder).
- ``--format gradescope`` writes Gradescope's results.json with partial credit,
  ``--junit`` JUnit XML; the exit status is nonzero short of full marks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from testbed import grading
from tests.labs.conftest import predict
from tests.labs.synthetic import HANDINS

LABS = grading.find_labs()
TESTBED = [sys.executable, "-m", "testbed.cli"]
# every test runs an instructor's solve.py or a grader (a child pytest): not unit tests
pytestmark = pytest.mark.cli


def hand_in(tmp_path: Path, number: int, name: str = "work", solve: bool = True,
            **figures) -> Path:
    """Lab ``number``'s work folder as a student leaves it: the predictions recorded
    (labs that ask for them), then the runs, then (``solve``) the answers."""
    lab = grading.get_lab(number)
    work = grading.start(lab, tmp_path / name)
    if grading.predictions.prediction_keys(grading.Answers.load(work / grading.ANSWERS)):
        predict(lab, work)
        grading.predictions.record(lab, work)
    HANDINS[number](work, **figures)
    if solve:
        c = subprocess.run([sys.executable, str(lab.instructor / "solve.py"), str(work)],
                           capture_output=True, text=True, timeout=60)
        assert c.returncode == 0, c.stderr
    return work


def answers_of(work: Path) -> dict:
    return yaml.safe_load((work / "answers.yaml").read_text())


def rewrite(work: Path, **changes) -> None:
    grading.fill_answers(work / "answers.yaml", changes)


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_the_solution_gets_full_marks(tmp_path, lab: grading.Lab):
    grade = grading.check(lab, hand_in(tmp_path, lab.number))
    assert grade.passed, "\n".join(grade.lines(show_values=True))
    assert grade.score == grade.max_score > len(grade.checks)     # some checks weigh more


def test_runs_that_do_not_show_the_lockup_make_not_supported_the_right_answer(tmp_path):
    # 4 of 5: p = 0.19, so the student's runs do not support "none locks up" at 95 %
    work = hand_in(tmp_path, 1, verdicts=("lockup", "completed", "lockup", "lockup", "lockup"))
    assert answers_of(work)["none_locks_up"] == "not supported"
    grade = grading.check(grading.get_lab(1), work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))
    rewrite(work, none_locks_up="supported")
    grade = grading.check(grading.get_lab(1), work)
    [failed] = grade.failed
    assert failed.name == "conclusion from your runs"
    assert "again" not in " ".join(c.sentence for c in grade.checks)


def test_no_lockup_at_all_leaves_the_lockup_questions_ungraded_not_failed(tmp_path):
    work = hand_in(tmp_path, 1, verdicts=("completed",) * 5)
    assert answers_of(work)["lockup_run"] == "none"
    grade = grading.check(grading.get_lab(1), work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))
    assert sum("no lockup to read" in c.sentence for c in grade.checks) == 6


def test_a_sweep_without_the_trade_makes_not_supported_the_right_answer(tmp_path):
    work = hand_in(tmp_path, 4, overlap=True)
    got = answers_of(work)
    assert got["fewer_other_drops"] == got["less_headroom"] == "not supported"
    assert grading.check(grading.get_lab(4), work).passed


def test_gorman_runs_that_lock_up_are_graded_on_what_they_show(tmp_path):
    work = hand_in(tmp_path, 5, gorman_verdicts=("completed", "lockup", "completed",
                                                 "lockup", "completed"))
    assert answers_of(work)["gorman_completes"] == "not supported"
    grade = grading.check(grading.get_lab(5), work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))


def test_gorman_runs_that_never_reinstate_make_none_and_not_supported_the_right_answers(
        tmp_path):
    """Lab 7 as the model has it since 9f7b463: no gorman-3.6 run of step 1 reinstates
    (its new SYN is sent NOMEM on a socket not yet marked), so the times and re-issued
    commands are none, the claim is not supported, and the read-back is step 2's."""
    work = hand_in(tmp_path, 7, gorman_reinstates=False)
    got = answers_of(work)
    assert got["gorman_recovers"] == "not supported"
    assert got["pressure_reinstate_s"] == got["reissued"] == "none"
    assert got["reinstated_runs"] == {"phillips-2005": 0, "gorman-3.6": 0}
    assert got["pages_checked"] == 3584 and got["why_gorman_not_reinstated"] == "a"
    lab = grading.get_lab(7)
    grade = grading.check(lab, work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))
    rewrite(work, gorman_recovers="supported", pressure_reinstate_s=2.0,
            why_gorman_not_reinstated="c")
    grade = grading.check(lab, work)
    assert len(grade.failed) == 3, "\n".join(grade.lines(show_values=True))
    assert any("so the answer is none" in c.sentence for c in grade.failed)


def zero_answers(work: Path) -> None:
    """The hand-in of a student who wrote 0 everywhere to read the figures back."""
    template = answers_of(work)
    rewrite(work, **{k: ({p: 0 for p in v} if isinstance(v, dict) else 0)
                     for k, v in template.items() if not isinstance(v, str)})


@pytest.mark.parametrize("number", [1, 3, 4, 5, 7])
def test_failures_never_give_the_figures_away(tmp_path, number):
    """Same wrong answers, different runs: the sentences are the same; with the
    instructor's option the figures show, and differ."""
    a = hand_in(tmp_path, number, "a", scale=1.0)
    b = hand_in(tmp_path, number, "b", scale=1.7)
    for w in (a, b):
        zero_answers(w)
    lab = grading.get_lab(number)
    ga, gb = grading.check(lab, a), grading.check(lab, b)
    failed = [c.name for c in ga.failed]
    assert len(failed) >= 3 and failed == [c.name for c in gb.failed]
    assert [c.sentence for c in ga.failed] == [c.sentence for c in gb.failed]
    for c in ga.failed:
        assert "you wrote" not in c.sentence and "measured" not in c.sentence, c.sentence
        assert re.search(r"within|exactly|not (what|the)", c.sentence), c.sentence
    assert [c.values for c in ga.failed] != [c.values for c in gb.failed]
    assert all(c.values for c in ga.failed)
    text = "\n".join(ga.lines())
    shown = "\n".join(ga.lines(show_values=True))
    assert "values:" not in text and "values: you wrote 0" in shown


def test_the_cli_shows_values_only_when_asked(tmp_path):
    work = hand_in(tmp_path, 1)
    zero_answers(work)
    plain = subprocess.run(TESTBED + ["lab", "check", "1", str(work)], capture_output=True,
                           text=True, timeout=120)
    shown = subprocess.run(TESTBED + ["lab", "check", "1", str(work), "--show-values"],
                           capture_output=True, text=True, timeout=120)
    env = dict(os.environ, **{grading.SHOW_VALUES_ENV: "1"})
    by_env = subprocess.run(TESTBED + ["lab", "check", "1", str(work)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert plain.returncode == shown.returncode == by_env.returncode == 1
    assert "values:" not in plain.stdout and "values: you wrote" in shown.stdout
    assert "values: you wrote" in by_env.stdout


def test_a_mapping_half_right_earns_half_its_points(tmp_path):
    work = hand_in(tmp_path, 5)
    right = answers_of(work)["filter_drops"]
    rewrite(work, filter_drops={**right, "gorman-3.6": 0})
    grade = grading.check(grading.get_lab(5), work)
    [failed] = grade.failed
    assert failed.name == "filter drops" and failed.credit == 0.5
    assert failed.score == failed.points / 2
    assert grade.score == grade.max_score - failed.points / 2


# -- the student copy ----------------------------------------------------------------------

def reference_figures(lab: grading.Lab) -> set[str]:
    """Every number of the lab's reference answers with 3 digits or more (the example
    predictions are guesses made before any run, not reference figures)."""
    def walk(v) -> list[float]:
        if isinstance(v, dict):
            return [x for w in v.values() for x in walk(w)]
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else []
    ref = yaml.safe_load((lab.instructor / "answers.yaml").read_text())
    answers = {k: v for k, v in ref.items() if not k.startswith(grading.predictions.PREFIX)}
    got = {f"{v:g}" for v in walk(answers) if abs(v) >= 100}
    return got - {"2050"}        # the buffer size: a given of lab 2, printed by its step 1


def test_the_student_copy_holds_no_solution_key_or_reference(tmp_path):
    out = tmp_path / "course"
    r = subprocess.run(TESTBED + ["lab", "export", "--student", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    labs = grading.find_labs(out / "labs")
    # the terms the handouts use travel with them (a course repository has no docs/)
    assert (out / "labs" / "glossary.md").read_text() == grading.course.GLOSSARY.read_text()
    assert [lab.number for lab in labs] == [lab.number for lab in LABS]
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert not any(re.search(r"solution|solve\.py|key\.yaml|rubric\.yaml|instructor", n)
                   for n in names)
    for p in out.rglob("*"):
        if p.is_file():
            figures = (reference_figures(grading.get_lab(p.parent.name))
                       if p.parent.name[:2].isdigit() else set())
            text = p.read_text()
            assert "reference machine" not in text.lower(), p
            assert "REFERENCE ANSWERS" not in text, p
            yaml_answers = p.name == "answers.yaml" and any(
                v is not None for v in (yaml.safe_load(text) or {}).values())
            assert not yaml_answers, f"{p} has answers filled in"
            if p.suffix in (".md", ".yaml"):
                leaked = {f for f in figures if re.search(rf"\b{re.escape(f)}\b", text)}
                # the lab's givens: min_free_kbytes, rx_reserve, the sweep's reserves
                # (lab 2's grid is 0, 100, 200, 400), a trunk's 100 Mbit/s
                assert not leaked - {"100", "128", "200", "400", "800"}, (p, leaked)
    for lab in labs:       # no grader names an option as the answer
        assert not re.search(r"== \"[abcd]\"", lab.grader.read_text()), lab.grader
    # the older spelling writes the same tree, and neither overwrites one
    for argv in (["export", "--student", str(out)], ["student-copy", str(out)]):
        again = subprocess.run(TESTBED + ["lab", *argv], capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 1 and "not empty" in again.stderr, argv
    twin = tmp_path / "twin"
    r = subprocess.run(TESTBED + ["lab", "student-copy", str(twin)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(twin).as_posix() for p in twin.rglob("*")) == \
        sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    missing = subprocess.run(TESTBED + ["lab", "export"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "--student" in missing.stderr


def test_graders_run_from_the_student_copy_and_leave_the_key_to_the_instructor(tmp_path):
    out = grading.student_copy(tmp_path / "course")
    lab = grading.find_labs(out)[0]
    work = hand_in(tmp_path, 1)
    grade = grading.check(lab, work)
    ungraded = [c for c in grade.checks if not c.graded]
    assert [c.name for c in ungraded] == ["why writeback could not complete"]
    assert "graded by your instructor" in ungraded[0].sentence
    assert grade.passed and grade.max_score == grading.check(grading.get_lab(1), work).max_score - 3
    env = dict(os.environ, TESTBED_LABS=str(out))
    r = subprocess.run(TESTBED + ["lab", "check", "1", str(work)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and "----  why_no_progress: graded by your instructor" in r.stdout


# -- autograder output ---------------------------------------------------------------------

def test_gradescope_results_and_junit(tmp_path):
    work = hand_in(tmp_path, 3)
    rewrite(work, storage_drops={"reserve-only": 0, "phillips-2005": 0}, filter_against_forgery="a")
    results, junit = tmp_path / "out/results.json", tmp_path / "out/junit.xml"
    r = subprocess.run(TESTBED + ["lab", "check", "3", str(work), "--format", "gradescope",
                                  "--results", str(results), "--junit", str(junit)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(results.read_text())
    # Gradescope's documented format: top-level score, tests with these keys and types
    assert set(doc) >= {"score", "tests"} and doc["visibility"] in ("visible", "hidden",
                                                                     "after_due_date",
                                                                     "after_published")
    for t in doc["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output", "visibility"}
        assert isinstance(t["score"], (int, float)) and 0 <= t["score"] <= t["max_score"]
        assert t["status"] in ("passed", "failed")
    assert doc["score"] == pytest.approx(sum(t["score"] for t in doc["tests"]))
    by = {t["name"]: t for t in doc["tests"]}
    assert 0 < by["storage drops"]["score"] < by["storage drops"]["max_score"]   # partial
    assert by["what the filter can do"]["score"] == 0
    assert "the key says" not in by["what the filter can do"]["output"]
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and int(suite.get("failures")) == 2
    assert len(suite.findall("testcase")) == len(doc["tests"])
    ok = subprocess.run(TESTBED + ["lab", "check", "3", str(hand_in(tmp_path, 3, "ok")),
                                   "--format", "gradescope", "--results", str(results)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    full = json.loads(results.read_text())
    assert full["score"] == sum(t["max_score"] for t in full["tests"])


def test_grading_needs_neither_root_nor_mininet(tmp_path):
    """Grading (the library, the grader's child pytest and ``testbed lab check``) runs with
    Mininet unimportable: a ``mininet`` package that raises on import comes first on the
    path of each."""
    blocker = tmp_path / "block" / "mininet"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('grading must not need Mininet')\n")
    work = hand_in(tmp_path, 2)
    probe = ("import sys; from pathlib import Path; from testbed import grading; "
             "g = grading.check(grading.get_lab(2), Path(%r)); "
             "assert not any(m.startswith('mininet') for m in sys.modules); "
             "raise SystemExit(0 if g.passed else 1)") % str(work)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(blocker.parent), str(Path(grading.__file__).parents[2])]))
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    cli = subprocess.run(TESTBED + ["lab", "check", "2", str(work), "--format", "gradescope",
                                    "--results", str(tmp_path / "results.json")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert cli.returncode == 0, cli.stdout + cli.stderr       # the command, too
    src = Path(grading.__file__).parent.glob("*.py")
    assert not any("geteuid" in p.read_text() for p in src)


def test_a_reserve_is_clean_only_when_every_repeat_lost_no_storage_frame(tmp_path):
    # lab 2's sweep runs each grid point twice: one ACK lost on transmit in the second run
    # at reserve 400 with 3 hosts leaves 800 the smallest clean reserve there
    work = hand_in(tmp_path, 2, unclean=((400, 3),))
    got = answers_of(work)
    assert got["smallest_clean_reserve"] == {1: 200, 3: 800}
    assert grading.check(grading.get_lab(2), work).passed
    rewrite(work, smallest_clean_reserve={1: 200, 3: 400})
    [failed] = grading.check(grading.get_lab(2), work).failed
    assert failed.name == "smallest clean reserve" and failed.credit == 0.5
    assert "in every run" in failed.sentence and "400" not in failed.sentence
