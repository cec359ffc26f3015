"""``testbed stress`` end to end on real Mininet and tgtd: a short campaign on a small load.

The budget is short (a few runs of a small scenario); the campaign may or may not find a
counterexample, so the test asserts on what it reports and on its consistency with the
run folders and the results store, never on a verdict.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import results
from testbed import scenario as scenario_mod
from testbed.stress import campaign

from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched

pytestmark = [pytest.mark.mininet, pytest.mark.root]

TESTBED = [sys.executable, "-m", "testbed.cli"]
BUDGET_S = 75

# A small load that runs in seconds (the shape of tests/support/killpoints.py's).
SCENARIO = """name: stress-small
expect: completed
expect_by_policy: {none: lockup, reserve-only: lockup}
duration_s: 8
deadline_s: 25
topology: {bulk_hosts: 1, client_bw_mbit: 40, bw_mbit: 100}
client:
  memory_mb: 32
  policy: gorman-3.6
  lockup_after_s: 15
  workloads:
    - {kind: writer, total_mb: 4, rate_mbps: 2, files: 1}
    - {kind: downloader, total_mb: 2}
target: {lun_mb: 16}
bulk: {mode: tcp, rate_mbit: 5}
"""

RANGES = """ranges:
  client.memory_mb: {min: 24, max: 40, step: 8}
  topology.bulk_hosts: {min: 1, max: 2}
  client.workloads[1:].rcvbuf_kb: {min: 0, max: 1024, step: 512}
"""


def test_a_short_campaign_writes_what_it_tried_consistently_with_its_runs(tmp_path):
    (tmp_path / "small.yaml").write_text(SCENARIO)
    (tmp_path / "ranges.yaml").write_text(RANGES)
    out, db = tmp_path / "out", tmp_path / "results.db"
    before = snapshot()
    t0 = time.monotonic()
    r = subprocess.run(TESTBED + ["stress", "small.yaml", "--policy", "gorman-3.6",
                                  "--budget", f"{BUDGET_S}s", "--seed", "3", "--ranges",
                                  "ranges.yaml", "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=BUDGET_S + 120,
                       env={**os.environ, "TESTBED_RESULTS_DB": str(db)})
    wall = time.monotonic() - t0
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr

    doc = json.loads((out / campaign.SUMMARY).read_text())
    tried = [json.loads(line) for line in (out / campaign.TRIED).read_text().splitlines()]
    counts = doc["counts"]
    assert doc["stopped_by"] == "budget" and doc["seed"] == 3 and counts["runs"] >= 1
    assert counts["tried"] == len(tried) and counts["runs"] == sum(t["run_dir"] is not None
                                                                  for t in tried)
    for outcome in ("invalid", "no-verdict", "inconclusive", "holds", "counterexample"):
        assert counts[outcome] == sum(t["outcome"] == outcome for t in tried), outcome
    # a run in flight is finished, none is started that the budget cannot cover
    assert wall < BUDGET_S + 60, wall

    # every run tried is a run folder whose summary says what tried.ndjson says
    ran = [t for t in tried if t["run_dir"]]
    for t in ran:
        run = results.read_run(Path(t["run_dir"]))
        assert run is not None and run.verdict == t["verdict"] and run.policy == "gorman-3.6"
        want = {"lockup": "counterexample", "completed": "holds"}.get(run.verdict)
        assert want is None or t["outcome"] == want, t
    batch = results.open_batch(out)
    assert [e.label for e in batch.entries] == [t["label"] for t in ran]
    assert all(e.params.keys() == {"client.memory_mb", "topology.bulk_hosts",
                                   "client.workloads[1:].rcvbuf_kb"} for e in batch.entries)

    # ... and a row of the results store, as command stress
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT label, verdict, command FROM runs ORDER BY id").fetchall()
    assert rows == [(t["label"], t["verdict"], "stress") for t in ran]

    # what it printed: one line per load, then the summary
    lines = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == len(tried)
    assert f"{counts['tried']} loads tried" in r.stdout and "counterexamples:" in r.stdout
    report = (out / campaign.REPORT).read_text()
    assert f"| {counts['tried']} | {counts['runs']} |" in report
    for found in doc["counterexamples"]:
        if found["confirmed"]:
            sc = scenario_mod.load(found["scenario_file"])
            assert sc.client.policy == "gorman-3.6"

    for t in ran:
        assert_nothing_left(json.loads((Path(t["run_dir"]) / "client-config.json")
                                       .read_text())["run_id"])
    assert_untouched(before, snapshot())


def test_a_second_campaign_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    r = subprocess.run(TESTBED + ["stress", "contention", "--policy", "none", "--budget", "1m",
                                  "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "folder exists and is not empty" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["something"]
