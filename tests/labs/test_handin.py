"""Verified hand-ins (``testbed lab submit`` / ``testbed lab grade``), and multiple-choice
options that do not give the answer away.

The hand-in tests work on one real run: lab 1's work folder with its compare step made
once per session with one repeat (a real Mininet run, about 25 s), rather than the
handout's five. It is packed, verified and graded, then tampered with the ways a student
could: a hand-written summary.json, an edited metric stream (before and after packing),
a removed or added file, a broken archive, and the same runs handed in by two students.
A forger who rewrites the manifest's hashes is modelled by :func:`repack`.

The run's verdict is whatever the run gave. Lab 1's ``none`` run mostly locks up, but
2.6.13's OOM killer sometimes takes the writer first and the run completes
(docs/measurements.md), so each forgery is made against the verdict the run has: a
lockup forged into a completion, a completion into a lockup.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from testbed import grading
from testbed.grading import handin
from tests.labs.conftest import run_command, student_env, succeeded

RUN = "runs/none/none"          # the run folder of lab 1's compare step (policy none)
TESTBED = [sys.executable, "-m", "testbed.cli"]


def real_run(fn: Callable) -> Callable:
    """A test that reads the session's real run (root, Mininet, tgtd)."""
    for mark in (pytest.mark.mininet, pytest.mark.root, pytest.mark.tgtd,
                 pytest.mark.timeout(900)):
        fn = mark(fn)
    return fn


# -- one real run, once per session -------------------------------------------------------

@pytest.fixture(scope="session")
def lab1_work(tmp_path_factory) -> Path:
    """Lab 1's work folder with its compare step run once (one repeat) and answers."""
    work = grading.start(grading.get_lab(1), tmp_path_factory.mktemp("handin") / "lab1")
    cmd, _ = run_command("testbed compare deadlock.yaml --policies none --repeat 1 "
                         "--out runs/none", work, student_env())
    assert succeeded(cmd), cmd.output[-3000:]
    answers = work / grading.ANSWERS
    answers.write_text(answers.read_text().replace("why_no_progress:", "why_no_progress: b"))
    return work


@pytest.fixture(scope="session")
def packed(lab1_work, tmp_path_factory) -> Path:
    out, _ = handin.submit(grading.get_lab(1), lab1_work,
                           tmp_path_factory.mktemp("packed") / "alice.tar.gz")
    return out


def repack(archive: Path, dest: Path, edit: Callable[[Path], None], rehash: bool = True) -> Path:
    """``archive`` unpacked, edited, and packed again as ``dest``; with ``rehash`` the
    manifest's hashes are rewritten to match, as a forger would."""
    tmp = dest.parent / (dest.name + ".d")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp)           # our own archive
    edit(tmp)
    if rehash:
        manifest = json.loads((tmp / handin.MANIFEST).read_text())
        manifest["files"] = {p.relative_to(tmp).as_posix(): handin.sha256(p)
                             for p in sorted(tmp.rglob("*"))
                             if p.is_file() and p.name != handin.MANIFEST}
        (tmp / handin.MANIFEST).write_text(json.dumps(manifest))
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(tmp).as_posix())
    shutil.rmtree(tmp)
    return dest


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def forged_verdict(verdict: str) -> str:
    """The verdict a forger would claim instead of the run's own."""
    return "completed" if verdict == "lockup" else "lockup"


def forge_verdict(summary: dict) -> None:
    summary.update(verdict=forged_verdict(summary["verdict"]))


def refused(archive: Path) -> str:
    g = handin.grade_submission(archive)
    assert g.grade is None, f"{archive} was graded, not refused"
    return g.refused


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TESTBED, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


# -- packing, verifying, grading -------------------------------------------------------------

@real_run
def test_submit_packs_what_the_grader_reads_and_grades_as_the_work_folder(lab1_work, packed):
    with handin.unpack(packed) as sub:
        files = set(sub.manifest.files)
        assert {"answers.yaml", "runs/none/runs.json", f"{RUN}/summary.json",
                f"{RUN}/client.ndjson", f"{RUN}/client-outcome.json"} <= files
        assert not [f for f in files if f.endswith(("lun.img", ".png", ".html"))]
        [run] = sub.manifest.runs
        config = json.loads((lab1_work / RUN / "client-config.json").read_text())
        prov = json.loads((lab1_work / RUN / "provenance.json").read_text())
        assert run.path == RUN and run.run_id == config["run_id"]
        assert run.fingerprint == handin.sha256(lab1_work / RUN / "client.ndjson")
        assert run.code_version == prov["code_version"] and prov["hostname"] in run.machine
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sub.manifest.packed_at)
        handin.verify(sub)
        root = sub.root
    assert not root.exists(), "the unpacked folder was left behind"
    g = handin.grade_submission(packed)
    assert g.grade is not None, g.refused
    direct = grading.check(grading.get_lab(1), lab1_work)
    assert g.grade.max_score == direct.max_score > 0
    assert [(c.name, c.status, c.score) for c in g.grade.checks] == \
        [(c.name, c.status, c.score) for c in direct.checks]


@real_run
@pytest.mark.parametrize("change, figure", [
    (forge_verdict, "verdict"),
    (lambda s: s["drops"]["memalloc"].update(total=s["drops"]["memalloc"]["total"] + 1),
     "drops.memalloc.total"),
    (lambda s: s.update(end_t=s["end_t"] + 2), "end_t"),
    (lambda s: s.pop("goodput"), "goodput"),
], ids=["verdict", "drops", "outcome time", "figure removed"])
def test_a_hand_written_summary_is_refused_naming_file_and_figure(packed, tmp_path, change,
                                                                  figure):
    forged = repack(packed, tmp_path / "mallory.tar.gz",
                    lambda d: edit_json(d / RUN / "summary.json", change))
    why = refused(forged)
    assert f"{RUN}/summary.json" in why and figure in why, why


@real_run
def test_submit_refuses_a_hand_written_summary_already(lab1_work, tmp_path):
    work = tmp_path / "lab1"
    shutil.copytree(lab1_work, work, ignore=shutil.ignore_patterns("lun.img"))
    edit_json(work / RUN / "summary.json", forge_verdict)
    forged = json.loads((work / RUN / "summary.json").read_text())["verdict"]
    with pytest.raises(handin.HandinError, match=rf"summary\.json: verdict is '{forged}'"):
        handin.submit(grading.get_lab(1), work)
    assert not list(work.glob("*.tar.gz")) and not list(work.glob(".handin-*"))


def _flip_lockup_samples(d: Path) -> None:
    """The metric stream made to contradict the run's verdict: a lockup's samples all
    cleared, or a completed run's last sample marked as a lockup."""
    stream = d / RUN / "client.ndjson"
    lines = [json.loads(x) for x in stream.read_text().splitlines() if x.strip()]
    if any(s.get("lockup") is True for s in lines):
        for s in lines:
            s["lockup"] = False
    else:
        lines[-1]["lockup"] = True
    stream.write_text("".join(json.dumps(s) + "\n" for s in lines))


def _forge_outcome_and_summary(d: Path) -> None:
    """The client's account and the summary both rewritten to the other verdict: a
    lockup to a completion, a completion to a lockup at the outcome's time."""
    outcome = json.loads((d / RUN / "client-outcome.json").read_text())
    verdict = forged_verdict(outcome["verdict"])
    lockup = {"t": outcome.get("t")} if verdict == "lockup" else None
    edit_json(d / RUN / "client-outcome.json", lambda o: o.update(verdict=verdict, lockup=lockup))
    edit_json(d / RUN / "summary.json",
              lambda s: s.update(verdict=verdict, client_verdict=verdict, lockup=lockup))


def _contradicted(verdict: str) -> str:
    """What the grader says when client-outcome.json's ``verdict`` is not the stream's."""
    if verdict == "lockup":
        return "client-outcome.json: verdict is a lockup, but no sample of client.ndjson"
    return f"client-outcome.json: verdict is {verdict}, but client.ndjson shows a lockup"


@real_run
@pytest.mark.parametrize("edit, rehash, says", [
    (_flip_lockup_samples, False, f"{RUN}/client.ndjson was changed after packing"),
    (_flip_lockup_samples, True, _contradicted),
    (_forge_outcome_and_summary, True, lambda verdict: _contradicted(forged_verdict(verdict))),
    (lambda d: (d / RUN / "target.ndjson").unlink(), False,
     f"{RUN}/target.ndjson is listed in handin.json but missing"),
    (lambda d: (d / RUN / "client.ndjson").unlink(), True, f"{RUN}/client.ndjson: missing"),
    (lambda d: (d / "runs/extra.txt").write_text("x"), False,
     "runs/extra.txt is not listed in handin.json"),
    (lambda d: (d / handin.MANIFEST).write_text("{"), False, "handin.json is not valid JSON"),
    (lambda d: edit_json(d / handin.MANIFEST, lambda m: m["runs"].append({**m["runs"][0], "path": "../.."})),
     False, "the run folder ../.. is missing"),
], ids=["stream edited", "stream edited, rehashed", "outcome forged", "file removed",
        "stream removed", "file added", "manifest broken", "run outside the archive"])
def test_tampering_is_caught_and_named(lab1_work, packed, tmp_path, edit, rehash, says):
    if callable(says):                  # what is said depends on the run's own verdict
        says = says(json.loads((lab1_work / RUN / "client-outcome.json").read_text())["verdict"])
    why = refused(repack(packed, tmp_path / "mallory.tar.gz", edit, rehash))
    assert says in why, why


@real_run
def test_batch_flags_shared_runs_refuses_forgeries_and_writes_csv(packed, tmp_path):
    batch = tmp_path / "submissions"
    batch.mkdir()
    shutil.copy(packed, batch / "alice.tar.gz")
    shutil.copy(packed, batch / "bob.tar.gz")                 # bob handed in alice's runs
    repack(packed, batch / "carol.tar.gz",
           lambda d: edit_json(d / RUN / "summary.json", forge_verdict))
    (batch / "dave.tar.gz").write_bytes(packed.read_bytes()[:2000])   # a torn upload
    p = cli("lab", "grade", "--batch", str(batch), "--format", "gradescope", cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    rows = {r["student"]: r for r in csv.DictReader(open(batch / "grades.csv"))}
    assert set(rows) == {"alice", "bob", "carol", "dave"}
    for name, other in (("alice", "bob"), ("bob", "alice")):
        assert rows[name]["status"] == "graded" and float(rows[name]["max_points"]) > 0
        assert f"the same run id as {other}:{RUN}" in rows[name]["flags"]
        assert f"the same metric stream as {other}:{RUN}" in rows[name]["flags"]
    assert rows["carol"]["status"].startswith("refused:") and "summary.json" in rows["carol"]["status"]
    # a refused archive's manifest is not believed: it flags nobody, nor is it flagged
    assert rows["carol"]["flags"] == "" and "carol" not in rows["alice"]["flags"]
    assert "not a readable hand-in archive" in rows["dave"]["status"]
    assert rows["alice"]["machines"] not in ("", "not recorded") and rows["alice"]["packed_at"]
    for name in rows:
        result = json.loads((batch / "results" / f"{name}.json").read_text())
        assert {"score", "tests", "output"} <= set(result)
    assert json.loads((batch / "results/dave.json").read_text())["score"] == 0


# -- what needs no run -------------------------------------------------------------------------

@pytest.mark.cli
def test_a_broken_archive_gets_a_message_not_a_traceback(tmp_path):
    cases = {"empty.tar.gz": b"", "text.tar.gz": b"hello, grader\n",
             "torn.tar.gz": gzip.compress(b"x" * 100000)[:300]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        p = cli("lab", "grade", name, cwd=tmp_path)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "Traceback" not in p.stderr
        assert f"testbed: error: {name}: not a readable hand-in archive" in p.stderr, p.stderr
    p = cli("lab", "grade", "nowhere.tar.gz", cwd=tmp_path)
    assert "nowhere.tar.gz: no such hand-in archive" in p.stderr and p.returncode == 1


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_members_outside_the_archive_or_not_plain_files_are_refused(tmp_path):
    link = tarfile.TarInfo("runs/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for name, members, says in (
            ("up.tar.gz", [(tarfile.TarInfo("../evil"), b"x")], "points outside the archive"),
            ("abs.tar.gz", [(tarfile.TarInfo("/tmp/evil"), b"x")], "points outside the archive"),
            ("link.tar.gz", [(link, b"")], "runs/link is not a plain file"),
            ("bare.tar.gz", [(tarfile.TarInfo("answers.yaml"), b"a: 1\n")], "has no handin.json")):
        with pytest.raises(handin.HandinError, match=re.escape(says)):
            with handin.unpack(_tar(tmp_path / name, members)):
                pass
    assert not (tmp_path.parent / "evil").exists()


def test_submit_names_what_is_missing(tmp_path):
    lab = grading.get_lab(1)
    work = grading.start(lab, tmp_path / "lab1")
    with pytest.raises(handin.HandinError, match=r"runs/none: missing: run the step"):
        handin.submit(lab, work)
    (work / "answers.yaml").unlink()
    with pytest.raises(handin.HandinError, match=r"answers\.yaml: missing"):
        handin.submit(lab, work)


@pytest.mark.parametrize("lab", grading.find_labs(), ids=lambda lab: lab.path.name)
def test_the_packed_folders_are_the_handouts_out_folders(lab):
    folders = handin.graded_folders(lab)
    assert folders and all(f.startswith("runs/") for f in folders)
    grader = lab.grader.read_text()
    for f in folders:
        assert f'"{f}"' in grader or f"'{f}'" in grader, f"{lab.name}: the grader never reads {f}"


def test_first_difference_names_the_figure():
    said = {"drops": {"memalloc": {"total": 3, "NOMEM": 3}}, "stalls": [{"t": 1.0}]}
    assert handin.first_difference(said, json.loads(json.dumps(said)), "s") is None
    got = {"drops": {"memalloc": {"total": 4, "NOMEM": 3}}, "stalls": [{"t": 1.0}]}
    assert handin.first_difference(said, got, "s") == ("s.drops.memalloc.total", 3, 4)
    assert handin.first_difference({"x": [1]}, {"x": [1, 2]}, "s") == ("s.x", [1], [1, 2])
    # a figure only the recomputed summary has was added by newer code: not a forgery
    assert handin.first_difference({"a": 1}, {"a": 1, "journal": {}}, "s") is None


# -- multiple choice --------------------------------------------------------------------

OPTION = re.compile(r"^#\s+([a-h])\)\s+(.*)$")
CONTINUED = re.compile(r"^#\s{4,}(\S.*)$")
MAX_LENGTH_RATIO = 1.3     # the longest option at most 30 % longer than the shortest


def choice_options(template: Path) -> dict[str, dict[str, str]]:
    """Per multiple-choice question of an answers template, its options' texts: the
    ``#   a) ...`` comment lines (and their indented continuations) above its key."""
    questions: dict[str, dict[str, str]] = {}
    options: dict[str, str] = {}
    last = ""
    for line in template.read_text().splitlines():
        m = OPTION.match(line)
        c = CONTINUED.match(line)
        if m:
            last = m.group(1)
            options[last] = m.group(2).strip()
        elif c and last:
            options[last] += " " + c.group(1).strip()
        elif re.match(r"^[A-Za-z_]\w*:", line):
            if options:
                questions[line.split(":")[0]] = options
            options, last = {}, ""
        else:
            last = ""
    return questions


BANNED_OPTIONS = re.compile(r"\b(all|none|both) of (the|these) (above|options|statements)\b|"
                            r"\b[a-h] and [a-h]\b", re.I)


def option_style(text: str) -> str:
    """``sentence`` (a capital first, a full stop last) or ``fragment`` (neither); a mix
    of the two is its own style, which no option set may have."""
    first, last = text[0].isupper(), text.rstrip().endswith(".")
    return {(True, True): "sentence", (False, False): "fragment"}.get((first, last), "mixed")


@pytest.mark.parametrize("lab", grading.find_labs(), ids=lambda lab: lab.path.name)
def test_multiple_choice_options_are_of_equal_length_and_style(lab):
    """The right option must not stand out: the options of a question are within
    MAX_LENGTH_RATIO of each other in length, all sentences or all fragments, and none is
    "all of the above" (or "a and b"), in the student's and the instructor's copy."""
    for root in (lab.path, lab.instructor):
        for key, options in choice_options(root / grading.ANSWERS).items():
            where = f"{root}/answers.yaml: {key}"
            assert len(options) >= 3, f"{where} has {len(options)} options"
            lengths = {o: len(text) for o, text in options.items()}
            ratio = max(lengths.values()) / min(lengths.values())
            assert ratio <= MAX_LENGTH_RATIO, (
                f"{where}: the options differ in length by {ratio:.2f}x (at most "
                f"{MAX_LENGTH_RATIO}): {lengths}")
            styles = {o: option_style(text) for o, text in options.items()}
            assert len(set(styles.values())) == 1 and "mixed" not in styles.values(), (
                f"{where}: options of different styles (all sentences or all fragments): "
                f"{styles}")
            banned = [o for o, text in options.items() if BANNED_OPTIONS.search(text)]
            assert not banned, f"{where}: option {banned[0]} points at other options"


def keyed_questions() -> list[tuple[str, str, dict[str, str]]]:
    """(lab, key, options) with the key's right option, over every keyed lab."""
    out = []
    for lab in grading.find_labs():
        path = lab.instructor / grading.KEY
        if path.exists():
            options = choice_options(lab.path / grading.ANSWERS)
            for k, v in yaml.safe_load(path.read_text()).items():
                out.append((lab.path.name, str(v["answer"]), options.get(k, {})))
    return out


def test_the_right_option_is_neither_the_longest_nor_always_in_one_place():
    """Two cues a student could answer from without the runs: the right option as the
    (only) longest of its question, and the same letter right everywhere."""
    got = keyed_questions()
    for lab, right, options in got:
        assert right in options, f"{lab}: the key's answer {right} is not an option"
        longest = max(len(t) for t in options.values())
        assert not (len(options[right]) == longest
                    and sum(len(t) == longest for t in options.values()) == 1), (
            f"{lab}: the right option {right} is the longest of its question")
    letters = [right for _, right, _ in got]
    assert len(set(letters)) > 1, f"every right option is {letters[0]}"
    assert max(letters.count(x) for x in set(letters)) <= (len(letters) + 1) // 2 + 1


def test_the_option_checks_can_fail():
    assert option_style("the link was slow") == "fragment"
    assert option_style("The link was slow.") == "sentence"
    assert option_style("The link was slow") == "mixed"
    assert BANNED_OPTIONS.search("all of the above") and BANNED_OPTIONS.search("both a and c")
    assert not BANNED_OPTIONS.search("the flusher and kswapd")


def test_every_keyed_question_has_its_options_found():
    """The parser above finds each question the instructor's key answers, so the length
    test cannot pass by finding nothing."""
    keyed_labs = 0
    for lab in grading.find_labs():
        key = lab.instructor / grading.KEY
        if key.exists():
            keyed_labs += 1
            keyed = set(yaml.safe_load(key.read_text()))
            assert keyed <= set(choice_options(lab.path / grading.ANSWERS)), lab.path
    assert keyed_labs >= 3
