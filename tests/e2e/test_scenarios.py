"""End to end on real Mininet, real tgtd, real TCP: the seed's claims, one command each.

Each test runs ``testbed run`` (the command a user types) into a temporary folder and
reads its ``summary.json``:

- ``none`` locks up; ``reserve-only`` locks up once bulk traffic drains the reserve;
  ``phillips-2005`` completes; ``phillips-2005-threshold`` completes with fewer drops of
  other traffic than ``phillips-2005``; ``gorman-3.6`` completes; so do the baseline,
  the UDP flood and the local disk;
- the verdicts are stable: three runs of each contention scenario agree;
- every completed run reads back with 0 mismatches, and what the target acknowledged
  before a lockup verifies too;
- nothing of a run is left on the machine afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.mm.gfp import AllocFlags, slowpath_mark
from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.slow]

TESTBED = [sys.executable, "-m", "testbed.cli"]
REPEATS = 3
RUN_TIMEOUT = 180


def run(name: str, out: Path, *sets: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = TESTBED + ["run", name, "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    summary = json.loads((out / "summary.json").read_text())
    run_id = json.loads((out / "client-config.json").read_text())["run_id"]
    assert_nothing_left(run_id)
    return r, summary


def check_integrity(summary: dict) -> None:
    i = summary["integrity"]
    assert i["checked"], i
    assert i["mismatches"] == 0, i
    if summary["verdict"] == "completed":
        assert i["bytes_checked"] == summary["writeback"]["bytes_written"] > 0


POLICIES = {"none": "lockup", "reserve-only": "lockup", "phillips-2005": "completed",
            "phillips-2005-threshold": "completed", "gorman-3.6": "completed"}


@pytest.fixture(scope="module")
def contention_runs(tmp_path_factory) -> dict[str, list[dict]]:
    """Every policy on the contention load, REPEATS times, interleaved."""
    base = tmp_path_factory.mktemp("contention")
    before = snapshot()
    runs: dict[str, list[dict]] = {p: [] for p in POLICIES}
    for k in range(REPEATS):
        for policy in POLICIES:
            r, summary = run(f"contention-{policy}", base / f"{policy}-{k}")
            summary["exit"] = r.returncode
            summary["stdout"] = r.stdout
            runs[policy].append(summary)
    assert_untouched(before, snapshot())
    return runs


@pytest.mark.parametrize("policy", list(POLICIES))
def test_each_policy_reaches_its_verdict_every_time(contention_runs, policy):
    verdicts = [s["verdict"] for s in contention_runs[policy]]
    assert verdicts == [POLICIES[policy]] * REPEATS, verdicts
    for s in contention_runs[policy]:
        assert s["exit"] == 0, s["stdout"]
        assert f"verdict: {POLICIES[policy]}" in s["stdout"]
        check_integrity(s)


def test_lockup_evidence_is_the_seed_signature(contention_runs):
    for s in contention_runs["none"] + contention_runs["reserve-only"]:
        lk = s["lockup"]
        assert lk["dirty"] > 0 and lk["free"] <= lk["wmark_min"]
        assert lk["stalled_for_s"] >= 4.0
        # the acknowledgements could not be received: frames were dropped for lack of memory
        assert s["drops"]["memalloc"].get("NOMEM", 0) + s["drops"]["other"].get("NOMEM", 0) > 0


def test_none_stops_at_the_atomic_floor_reserve_only_drains_the_reserve(contention_runs):
    """``none``: GFP_ATOMIC may dip to 3/8 of min and no further, so free memory stops
    there and atomic allocations fail. ``reserve-only``: frames went on into the reserve
    (__GFP_MEMALLOC) until it was empty: free memory reached zero."""
    for s in contention_runs["none"]:
        lk = s["lockup"]
        floor = slowpath_mark(lk["wmark_min"], AllocFlags.HIGH | AllocFlags.HARDER)
        # a few pages may come back between the last failed allocation and the snapshot
        # (a frame freed on drop, a page read by the agent): near the floor, not under min
        assert 0 < lk["free"] <= floor + 8 < lk["wmark_min"], (floor, lk)
        assert lk["alloc_fail"]["atomic"] > 0 and lk["alloc_fail"]["memalloc"] == 0
        assert lk["reserve"]["client-eth0"] == 0
    for s in contention_runs["reserve-only"]:
        lk = s["lockup"]
        assert lk["free"] <= 2, lk
        assert lk["alloc_fail"]["memalloc"] > 0 and lk["reserve"]["client-eth0"] > 0


def test_the_filter_drops_other_traffic_not_storage(contention_runs):
    for policy in ("phillips-2005", "phillips-2005-threshold", "gorman-3.6"):
        for s in contention_runs[policy]:
            assert s["drops"]["memalloc"]["total"] == 0, (policy, s["drops"])
    for s in contention_runs["phillips-2005"]:
        assert s["drops"]["other"].get("NOT_MEMALLOC", 0) > 0
    for s in contention_runs["gorman-3.6"]:
        assert s["drops"]["other"].get("PFMEMALLOC", 0) > 0


def test_threshold_drops_less_other_traffic_than_phillips(contention_runs):
    """Other traffic may keep part of the reserve before drops start, so fewer of its
    frames are dropped. A single run's count varies with how much bulk data is in flight
    when memory runs out (measured here: 24 to 138 for phillips-2005), so the claim is
    checked on the runs together."""
    plain = sum(s["drops"]["other"]["total"] for s in contention_runs["phillips-2005"])
    shared = sum(s["drops"]["other"]["total"] for s in contention_runs["phillips-2005-threshold"])
    assert shared < plain, (shared, plain)


@pytest.mark.parametrize("name", ["baseline", "udp-flood", "local-disk"])
def test_reference_scenarios_complete(tmp_path, name):
    r, summary = run(name, tmp_path / name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary["verdict"] == "completed"
    check_integrity(summary)
