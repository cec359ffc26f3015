"""Lab 8 (modern Linux) followed as a student would, on real runs: Mininet, tgtd, and the
kernel client (Debian's Linux 6.1 in a QEMU guest, TCG here).

The handout's commands run as written in a fresh folder (``handout(8)`` in conftest.py:
``testbed lab start 8``, the predictions, five runs of the 2005 model, five each of the
model of 3.6's design and of the kernel, the counters, then the reference solution fills
``answers.yaml`` from those runs and ``testbed lab check 8``). The tests then read that
folder: every command worked, the solution passed every check, nothing of the runs was
left behind (no QEMU, no namespace), the kernel's runs carry the kernel's own counters and
no handler's drops, and wrong hand-ins (the step 1 batch in step 2's place, wrong answers)
fail with sentences that name the key and the tolerance, never the figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from testbed import grading
from tests.labs.conftest import HandoutRun
from tests.platform.conftest import assert_nothing_left

# the handout's runs: 5 of the model at a time of 2, then 10 one at a time (5 in a guest)
pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.tgtd, pytest.mark.slow,
              pytest.mark.timeout(1800)]

LAB = 8


def followed(handout) -> HandoutRun:
    h = handout(LAB)
    bad = h.failed()
    assert not bad, h.describe(bad[0])
    assert len(h.commands) == len(h.lab.handout.commands()), "the handout was not run through"
    assert h.work is not None
    return h


def test_handout_runs_as_written_and_the_reference_solution_passes(handout):
    h = followed(handout)
    check = h.commands[-1]
    assert check.text == f"testbed lab check {LAB}"
    assert "checks passed" in check.output and "FAIL" not in check.output, check.output
    grade = grading.check(h.lab, h.work)
    assert grade.passed, "\n".join(grade.lines(show_values=True))
    assert len(grade.checks) >= 6
    for config in h.work.glob("runs/**/client-config.json"):
        assert_nothing_left(json.loads(config.read_text())["run_id"])
    took = {c.text.split(" --out ")[-1]: round(c.seconds) for c in h.commands
            if " --out " in c.text}
    print(f"lab 8 followed: {sum(c.seconds for c in h.commands):.0f} s in all; "
          f"per batch (s): {took}")


def test_the_kernel_runs_carry_the_kernels_counters_and_no_handlers_drops(handout):
    """What step 3 prints is there in every kernel run: the guest's counters (from its
    boot, so a rise over the load), its min watermark, and no packet handler's drops;
    the model's runs have a handler and the model's counters."""
    h = followed(handout)
    batch = grading.BatchFolder.open(h.work / "runs/modern", h.work)
    kinds = [r.run.outcome.client_kind for r in batch.runs]
    assert sorted(kinds) == ["emulated"] * 5 + ["kernel"] * 5, kinds
    for r in (x.run for x in batch.runs):
        assert r.finished, f"{r.name}: {r.summary.get('status')} {r.summary.get('detail')}"
        kernel = r.outcome.client_kind == "kernel"
        assert r.outcome.handler_counted is not kernel, r.name
        for name in ("PFMemallocDrop", "pgscan_direct_throttle", "allocstall"):
            assert r.outcome.counter_rise(name) is not None, (r.name, name)
        assert all(isinstance(s.get("wmark_min"), int) for s in r.samples if "free" in s), \
            r.name
        if kernel:
            assert "hung_tasks" in r.samples[-1], r.name
            assert r.policy == "gorman-3.6"
    step3 = next(c for c in h.commands if "client_kind == 'kernel'" in c.text)
    assert len(step3.output.strip().splitlines()) == 5, step3.output


def hand_in(tmp_path: Path, runs: dict[str, Path], answers: Path) -> Path:
    work = grading.start(grading.get_lab(LAB), tmp_path / f"lab{LAB}")
    for rel, src in runs.items():
        shutil.copytree(src, work / rel)
    shutil.copy(answers, work / "answers.yaml")
    # the predictions as recorded with the runs: only the answers are wrong here
    shutil.copy(answers.parent / grading.predictions.RECORD, work)
    return work


def test_step_1s_batch_handed_in_for_step_2_names_what_is_missing(handout, tmp_path):
    h = followed(handout)
    work = hand_in(tmp_path, {"runs/2005": h.work / "runs/2005",
                              "runs/modern": h.work / "runs/2005"}, h.work / "answers.yaml")
    grade = grading.check(h.lab, work)
    assert not grade.passed
    assert grade.failed[0].sentence == (
        "runs/modern has fewer than 5 runs of gorman-3.6 (it has: none): step 2 (--clients "
        "emulated:gorman-3.6,kernel --repeat 5) asks for 5 of each before you look at any "
        "of them")


def test_wrong_answers_fail_with_sentences_that_name_the_key_not_the_figures(handout,
                                                                             tmp_path):
    h = followed(handout)
    right = yaml.safe_load((h.work / "answers.yaml").read_text())
    wrong = dict(right)
    wrong.update(kernel_runs_at_min=right["kernel_runs_at_min"] + 1,
                 pfmemalloc_drops=right["pfmemalloc_drops"] + 7,
                 hung_task_warnings=right["hung_task_warnings"] + 3,
                 time_ratio=round(right["time_ratio"] + 0.5, 2),
                 allocstall={k: v * 2 + 50 for k, v in right["allocstall"].items()},
                 socket_marked="a", why_22_mib="d")
    bad = tmp_path / "wrong" / "answers.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump(wrong))
    shutil.copy(h.work / grading.predictions.RECORD, bad.parent)
    work = hand_in(tmp_path, {"runs/2005": h.work / "runs/2005",
                              "runs/modern": h.work / "runs/modern"}, bad)
    grade = grading.check(h.lab, work)
    by_name = {c.name: c for c in grade.checks}
    failed = {c.name for c in grade.failed}
    assert failed == {"kernel runs at min", "pfmemalloc drops", "hung task warnings",
                      "time ratio", "direct reclaim stalls", "socket marked", "why 22 mib"}, \
        failed
    assert by_name["time ratio"].sentence == (
        "the kernel's time to completion over the model's (time_ratio): your answer does not "
        "agree with the ratio in the last column of the validation table of runs/modern "
        "(within 0.02); read it again from there")
    assert by_name["pfmemalloc drops"].sentence.startswith(
        "the frames counted in PFMemallocDrop (pfmemalloc_drops): your answer does not agree")
    assert by_name["socket marked"].sentence.startswith(
        "socket_marked: a is not the statement your runs support")
    figures = [wrong["kernel_runs_at_min"], wrong["pfmemalloc_drops"],
               wrong["hung_task_warnings"], wrong["time_ratio"], right["time_ratio"],
               right["pfmemalloc_drops"], *right["allocstall"].values(),
               *wrong["allocstall"].values()]
    # small whole numbers are words of the sentences too ("5 runs", "2 %"): not looked for
    figures = [f for f in figures if abs(f) >= 10 or f != int(f)]
    for c in grade.failed:
        for figure in figures:
            assert f" {figure:g} " not in f" {c.sentence} ", (c.sentence, figure)
    shown = "\n".join(grade.lines(show_values=True))
    assert f"you wrote {wrong['time_ratio']:g}" in shown
