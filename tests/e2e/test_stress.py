"""``testbed stress`` end to end on real Mininet and tgtd: short campaigns on a small load.

The first budget is short (a few runs of a small scenario); the campaign may or may not
find a counterexample, so the test asserts on what it reports and on its consistency
with the run folders and the results store, never on a verdict. The second searches
``none`` with client memory far above what the load needs (``none`` completed 11 of 11
such runs when the test was written), so that a counterexample is found and goes through
its N fresh confirming runs, shrinking and the shrunk load's confirmation on real runs.
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

from testbed import claims, results, stats
from testbed import scenario as scenario_mod
from testbed.stress import campaign

from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched
from tests.support.small import small_scenario

pytestmark = [pytest.mark.mininet, pytest.mark.root]

TESTBED = [sys.executable, "-m", "testbed.cli"]
BUDGET_S = 75

# A small load that runs in seconds (tests/support/small.py).
SCENARIO = small_scenario("stress-small")

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
    for outcome in ("refused", "invalid", "no-verdict", "inconclusive", "holds", "counterexample"):
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
    assert_confirmations(doc, tried)
    for found in doc["counterexamples"]:
        if found["confirmed"]:
            sc = scenario_mod.load(found["scenario_file"])
            assert sc.client.policy == "gorman-3.6"

    for t in ran:
        assert_nothing_left(json.loads((Path(t["run_dir"]) / "client-config.json")
                                       .read_text())["run_id"])
    assert_untouched(before, snapshot())


def assert_confirmations(doc: dict, tried: list[dict]) -> None:
    """Each confirmation is what its own fresh runs say: their folders, their outcomes,
    the rate test on them (the sampling run not among them)."""
    by_label = {t["label"]: t for t in tried}
    for found in doc["counterexamples"]:
        for conf in (found["confirmation"], (found.get("shrunk") or {}).get("confirmation")):
            if conf is None:
                continue
            runs = [by_label[r["label"]] for r in conf["runs"]]
            assert found["label"] not in [r["label"] for r in conf["runs"]]
            assert [t["phase"] for t in runs] == ["confirm"] * len(runs)
            assert [t["outcome"] for t in runs] == conf["outcomes"]
            assert all(Path(t["run_dir"]).is_dir() for t in runs)
            if conf["confirmed"] is None:
                assert len(runs) < conf["asked"] and conf["pvalue"] is None
                continue
            assert len(runs) == conf["asked"]
            assert conf["successes"] == conf["outcomes"].count("counterexample")
            t = stats.rate_test(conf["successes"], conf["counted"], claims.P0)
            assert conf["pvalue"] == t.pvalue and conf["confirmed"] == t.supported


CONFIRM_BUDGET_S = 110
ROOMY = "ranges:\n  client.memory_mb: {min: 96, max: 128, step: 32}\n"


def test_a_counterexample_is_confirmed_by_fresh_runs(tmp_path):
    (tmp_path / "small.yaml").write_text(SCENARIO)
    (tmp_path / "ranges.yaml").write_text(ROOMY)
    out, db = tmp_path / "out", tmp_path / "results.db"
    r = subprocess.run(TESTBED + ["stress", "small.yaml", "--policy", "none", "--budget",
                                  f"{CONFIRM_BUDGET_S}s", "--seed", "3", "--ranges",
                                  "ranges.yaml", "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path,
                       timeout=CONFIRM_BUDGET_S + 120,
                       env={**os.environ, "TESTBED_RESULTS_DB": str(db)})
    assert "Traceback" not in r.stderr
    doc = json.loads((out / campaign.SUMMARY).read_text())
    tried = [json.loads(line) for line in (out / campaign.TRIED).read_text().splitlines()]
    assert_confirmations(doc, tried)
    seen = [(t["label"], t["verdict"], t["outcome"], t["detail"][:120]) for t in tried]
    assert doc["counterexamples"], seen
    first = doc["counterexamples"][0]
    conf = first["confirmation"]
    at = [t["label"] for t in tried].index(first["label"])
    assert [t["label"] for t in tried[at:at + 6]] == \
        [first["label"]] + [f"{first['label']}-confirm{i}" for i in range(1, 6)], seen
    assert conf["asked"] == 5 == doc["confirm"]["runs"]
    assert conf["confirmed"] is not None, seen      # 6 runs of about 7 s fit the budget
    if conf["outcomes"] != ["counterexample"] * 5:
        # none locked up, or a run had no valid verdict (a loaded machine can starve one
        # past a fidelity bound): then 5 fresh runs cannot give p < 0.05
        assert first["confirmed"] is False and "not confirmed" in conf["text"], seen
        return
    # none completes with this much memory: 5 of 5 fresh runs, p = 1/32
    assert first["confirmed"] is True and r.returncode == 1, seen
    assert conf["pvalue"] == 2 ** -5 and "p = 0.031, supported: confirmed" in r.stdout
    sc = scenario_mod.load(first["scenario_file"])
    assert sc.client.policy == "none" and sc.expected == "lockup"
    shrunk = first["shrunk"]
    want = shrunk["load"] if shrunk["confirmed"] else first["load"]
    assert sc.client.memory_mb == want["client.memory_mb"]
    assert first["scenario_load"] == ("shrunk" if shrunk["confirmed"] else "sampled")


def test_a_second_campaign_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    r = subprocess.run(TESTBED + ["stress", "contention", "--policy", "none", "--budget", "1m",
                                  "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "folder exists and is not empty" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["something"]
