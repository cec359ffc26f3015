"""Grader of lab 5 (Linux 3.6): one test per check, run by `testbed lab check 5`.

Figures come from the student's runs/compare; fixed are only the verdicts (both
complete), the policies, and the signs the policies guarantee (phillips-2005 never
throttles direct reclaim; the lab needs a gorman-3.6 run that did).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from testbed.grading import Answers, BatchFolder, CheckFailed, RunFolder, agrees, expect

COMPARE = "runs/compare"
POLICIES = ("phillips-2005", "gorman-3.6")
FILTER_REASON = {"phillips-2005": "NOT_MEMALLOC", "gorman-3.6": "PFMEMALLOC"}


@pytest.fixture(scope="module")
def runs(batch_folder) -> dict[str, RunFolder]:
    b: BatchFolder = batch_folder(COMPARE)
    got = {p: b.by_policy(p) for p in POLICIES}
    for p, r in got.items():
        expect(r.finished and r.verdict == "completed",
               f"{r.name} ended {r.verdict or r.summary.get('status')}, not completed: this "
               f"lab compares two runs that complete; run the compare again into a fresh folder")
    return got


def last(run: RunFolder, key: str) -> Any:
    return run.all_samples[-1].get(key)


def per_policy(runs: dict[str, RunFolder], answers: Answers, key: str,
               measure: Callable[[str, RunFolder], float], what: str,
               rel: float = 0.0, abs_: float = 0.0, unit: str = "") -> None:
    said = answers.mapping(key)
    for p, r in runs.items():
        expect(p in said, f"{key} has no entry for {p}: write one line per policy, "
               f"e.g. {{phillips-2005: ..., gorman-3.6: ...}}")
        try:
            value = float(said[p])
        except (TypeError, ValueError):
            raise CheckFailed(f"{key} for {p} must be a number (got {said[p]!r})")
        agrees(value, measure(p, r), f"{what} of {p} ({key})", r.name, rel=rel, abs_=abs_,
               unit=unit)


def test_both_runs_completed(runs: dict[str, RunFolder]) -> None:
    """runs/compare has a phillips-2005 and a gorman-3.6 run, and both completed."""


def test_watermarks_and_reserves(runs: dict[str, RunFolder], answers: Answers) -> None:
    """The min watermarks and the pages added for the network are those of your runs."""
    per_policy(runs, answers, "min_watermark", lambda p, r: r.samples[0]["wmark_min"],
               "the min watermark", unit=" pages")
    per_policy(runs, answers, "added_reserve_pages",
               lambda p, r: sum((r.samples[-1].get("reserve_pages") or {}).values()),
               "the pages added for the network", unit=" pages")


def test_filter_drops(runs: dict[str, RunFolder], answers: Answers) -> None:
    """The drops of each policy's protocol step agree with your runs (within 2 %)."""
    per_policy(runs, answers, "filter_drops",
               lambda p, r: r.drops("other", FILTER_REASON[p]), "the protocol step's drops",
               rel=0.02, abs_=2)


def test_completion_time(runs: dict[str, RunFolder], answers: Answers) -> None:
    """The completion times agree with your runs (within 0.2 s)."""
    per_policy(runs, answers, "completion_s", lambda p, r: r.time_s,
               "the time to completion", abs_=0.2, unit=" s")


def test_throttling_shows_where_it_should(runs: dict[str, RunFolder]) -> None:
    """Only gorman-3.6 throttled direct reclaim in your runs."""
    ph = last(runs["phillips-2005"], "pgscan_direct_throttle") or 0
    expect(ph == 0, f"{runs['phillips-2005'].name} counts {ph} throttled reclaims, but "
           f"phillips-2005 has no throttle: is it really a phillips-2005 run?")
    go = last(runs["gorman-3.6"], "pgscan_direct_throttle") or 0
    expect(go > 0, f"{runs['gorman-3.6'].name} never throttled direct reclaim "
           f"(pgscan_direct_throttle stayed 0): runs vary; run the compare again into a "
           f"fresh folder")


def test_throttle_events(runs: dict[str, RunFolder], answers: Answers) -> None:
    """The throttle counts are the last pgscan_direct_throttle of each run."""
    per_policy(runs, answers, "throttle_events",
               lambda p, r: last(r, "pgscan_direct_throttle") or 0,
               "pgscan_direct_throttle at the end")


def test_first_throttle(runs: dict[str, RunFolder], answers: Answers) -> None:
    """The first throttle of the gorman-3.6 run is where its samples show it (within 0.2 s)."""
    r = runs["gorman-3.6"]
    first = next((s for s in r.all_samples if s.get("pgscan_direct_throttle")), None)
    if first is None:
        raise CheckFailed(f"{r.name} never throttled direct reclaim: run the compare again")
    agrees(answers.number("first_throttle_s"), first["t"], "the first throttle "
           "(first_throttle_s)", f"the first sample of {r.name}/client.ndjson with "
           f"pgscan_direct_throttle above 0", abs_=0.2, unit=" s")


def test_throttle_limit(runs: dict[str, RunFolder], answers: Answers) -> None:
    """The throttle limit is half the min watermark of the gorman-3.6 run (within 1 page)."""
    r = runs["gorman-3.6"]
    wmin = r.samples[0]["wmark_min"]
    agrees(answers.number("throttle_limit_pages"), wmin // 2,
           "the free pages at or below which direct reclaim waits (throttle_limit_pages)",
           f"half the min watermark of {r.name} ({wmin} pages)", abs_=1, unit=" pages")


def test_who_is_throttled(answers: Answers) -> None:
    """Throttled are the tasks that enter direct reclaim, never kernel threads."""
    said = answers.choice("who_is_throttled", ("a", "b", "c", "d"))
    why = {"a": "kswapd is the thread the throttled tasks wait for; kernel threads are never "
                "throttled",
           "b": "the flusher is a kernel thread (PF_MEMALLOC): kernel threads are never "
                "throttled",
           "d": "the receive path allocates with GFP_ATOMIC and never enters direct reclaim"}
    expect(said == "c", f"who_is_throttled: {said} is not it: {why.get(said)}")
