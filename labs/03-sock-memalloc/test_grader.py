"""Grader of lab 3 (SOCK_MEMALLOC): one test per check, run by `testbed lab check 3`.

Figures come from the student's runs/compare and runs/spoof. Required of the runs
themselves: reserve-only locks up and phillips-2005 completes (the lab's point), and
the forged frames arrived.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, RunFolder, agrees, expect,
                          expect_finished, within)

COMPARE, SPOOF = "runs/compare", "runs/spoof"
HOSTS = "topology.bulk_hosts"
VERDICTS = ("completed", "lockup", "degraded")


@pytest.fixture(scope="module")
def compare(batch_folder) -> dict[str, RunFolder]:
    b: BatchFolder = batch_folder(COMPARE)
    runs = {p: b.by_policy(p) for p in ("reserve-only", "phillips-2005")}
    for r in runs.values():
        expect_finished(r, "run the compare again into a fresh folder")
    return runs


def net_counters(run: RunFolder) -> dict[str, Any]:
    try:
        return json.loads((run.path / "client-outcome.json").read_text())["net"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckFailed(f"{run.name}/client-outcome.json has no packet counters; run the "
                          f"spoof sweep again")


def storage_frames(run: RunFolder, direction: str) -> int:
    return net_counters(run)[direction]["classes"]["memalloc"]["received"]["frames"]


@pytest.fixture(scope="module")
def spoof(batch_folder) -> dict[int, RunFolder]:
    b: BatchFolder = batch_folder(SPOOF)
    runs = {}
    for r in b.runs:
        expect_finished(r.run, "run the spoof sweep again")
        expect(r.run.setting("bulk.mode") == "spoof",
               f"{r.run.name} was not a spoof run (bulk mode {r.run.setting('bulk.mode')}): "
               f"run step 2 as written (spoof.yaml)")
        runs[int(float(r.params.get(HOSTS, -1)))] = r.run
    expect(0 in runs and any(h > 0 for h in runs),
           f"{b.name} needs a run without spoofing hosts and one with: run step 2 as written "
           f"(--param {HOSTS}=0,2)")
    return runs


def forged(spoof: dict[int, RunFolder]) -> tuple[RunFolder, RunFolder, int, int]:
    clean, attacked = spoof[0], spoof[max(spoof)]
    rx = storage_frames(attacked, "rx") - storage_frames(clean, "rx")
    tx = storage_frames(attacked, "tx") - storage_frames(clean, "tx")
    return clean, attacked, rx, tx


def test_a_reserve_alone_locks_up_the_filter_completes(compare: dict[str, RunFolder]) -> None:
    """Your reserve-only run locked up and your phillips-2005 run completed."""
    ro, ph = compare["reserve-only"], compare["phillips-2005"]
    expect(ro.verdict == "lockup", f"{ro.name} ended {ro.verdict}, but this lab needs the "
           f"reserve-only run to lock up (runs vary): run the compare again into a fresh folder")
    expect(ph.verdict == "completed", f"{ph.name} ended {ph.verdict}, but this lab needs the "
           f"phillips-2005 run to complete: run the compare again into a fresh folder")


def test_verdicts(compare: dict[str, RunFolder], answers: Answers) -> None:
    """The verdicts you gave are those of your runs."""
    said = answers.mapping("verdicts")
    for p, r in compare.items():
        expect(p in said, f"verdicts has no entry for {p}")
        got = str(said[p]).strip().lower()
        expect(got in VERDICTS, f"verdicts: {p}: {said[p]!r} is not one of {', '.join(VERDICTS)}")
        expect(got == r.verdict, f"verdicts: you wrote {got} for {p}, but {r.name} ended "
               f"{r.verdict}")


def test_reserve_in_use_at_the_lockup(compare: dict[str, RunFolder], answers: Answers) -> None:
    """The reserve buffers out at the reserve-only lockup agree with your run (within 10 %)."""
    r = compare["reserve-only"]
    lk = r.summary.get("lockup") or {}
    used = sum((lk.get("reserve") or {}).values())
    agrees(answers.number("reserve_skbs_at_lockup"), used,
           "reserve buffers out at the lockup (reserve_skbs_at_lockup)",
           f"lockup.reserve of {r.name}", rel=0.10, abs_=2)


def test_filter_and_storage_drops(compare: dict[str, RunFolder], answers: Answers) -> None:
    """The filter's drops and the storage drops agree with your runs (within 2 %)."""
    ph = compare["phillips-2005"]
    agrees(answers.number("filter_drops"), ph.drops("other", "NOT_MEMALLOC"),
           "the filter's drops (filter_drops)", f"drops.other.NOT_MEMALLOC of {ph.name}",
           rel=0.02, abs_=2)
    said = answers.mapping("storage_drops")
    for p, r in compare.items():
        expect(p in said, f"storage_drops has no entry for {p}")
        try:
            value = float(said[p])
        except (TypeError, ValueError):
            raise CheckFailed(f"storage_drops for {p} must be a number (got {said[p]!r})")
        agrees(value, r.drops("memalloc"), f"storage drops of {p} (storage_drops)",
               f"drops.memalloc.total of {r.name}", rel=0.02, abs_=2)


def test_forged_frames_arrived(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """The forged frames counted as storage traffic agree with your two spoof runs (within 5 %)."""
    clean, attacked, rx, _ = forged(spoof)
    expect(rx > 100, f"with spoofing hosts, {attacked.name} received only {rx} more "
           f"storage-flow frames than {clean.name}: the forged frames did not arrive; run "
           f"step 2 again as written")
    agrees(answers.number("forged_frames_received"), rx,
           "forged frames taken for the storage flow (forged_frames_received)",
           f"the storage-flow frames received in {attacked.name} minus those in {clean.name}",
           rel=0.05)


def test_the_filter_dropped_none(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """The filter's drops in the spoofed run agree with that run (within 2 frames)."""
    attacked = spoof[max(spoof)]
    agrees(answers.number("forged_run_filter_drops"), attacked.drops("other", "NOT_MEMALLOC"),
           "the filter's drops in the spoofed run (forged_run_filter_drops)",
           f"drops.other.NOT_MEMALLOC of {attacked.name}", abs_=2)


def test_replies_per_forged_frame(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """The replies per forged frame agree with the ratio of your two spoof runs (within 10 %)."""
    clean, attacked, rx, tx = forged(spoof)
    expect(rx > 0, f"no forged frame arrived in {attacked.name}; run step 2 again")
    agrees(answers.number("replies_per_forged_frame"), tx / rx,
           "storage-flow frames sent per forged frame (replies_per_forged_frame)",
           f"(frames sent - frames sent without spoofers) / forged frames = {tx} / {rx}",
           rel=0.10)


def test_what_the_filter_can_do(spoof: dict[int, RunFolder], answers: Answers) -> None:
    """Your statement on forged frames is the one your counters support."""
    clean, attacked, rx, tx = forged(spoof)
    said = answers.choice("filter_against_forgery", ("a", "b", "c", "d"))
    dropped = attacked.drops("other", "NOT_MEMALLOC")
    why = {"a": f"the filter dropped {dropped} frames in {attacked.name}, but {rx} forged "
                f"frames were taken for the storage flow",
           "c": f"{rx} more storage-flow frames arrived with the spoofers than without",
           "d": f"they were counted as storage traffic: {rx} more storage-flow frames, and "
                f"the filter dropped {dropped}"}
    expect(said == "b", f"filter_against_forgery: {said} is not what your runs show: "
           f"{why.get(said)}")
    expect(within(tx / rx, 1.0, rel=0.5) if rx else False,
           f"your runs do not show the replies (ratio {tx}/{rx}); run step 2 again")
