"""``testbed run`` as a user meets it: bad scenarios, Ctrl-C, compare and report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched

pytestmark = [pytest.mark.mininet, pytest.mark.root]

TESTBED = [sys.executable, "-m", "testbed.cli"]


def test_a_malformed_scenario_names_file_line_key_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclient:\n  policy: gorman-36\n  memory_mb: -4\n"
                   "topology: {bulk_hosts: 2, client_bw_mbit: fast}\n")
    before = snapshot()
    out = tmp_path / "run"
    r = subprocess.run(TESTBED + ["run", str(bad), "--out", str(out)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1
    assert f"{bad}:3: client.policy" in r.stderr
    assert f"{bad}:5: topology.client_bw_mbit: expected float, got str 'fast'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert_untouched(before, snapshot())


def test_unknown_scenario_and_bad_set_are_one_line_errors(tmp_path):
    for argv, text in ((["run", "no-such-scenario"], "no such scenario file"),
                       (["run", "baseline", "--set", "client.policy"], "expected KEY=VALUE"),
                       (["run", "baseline", "--set", "client.memory_mb=lots"],
                        "--set client.memory_mb: expected int")):
        r = subprocess.run(TESTBED + argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 1 and text in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def samples(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def test_ctrl_c_mid_run_keeps_what_was_collected_and_leaves_nothing(tmp_path):
    before = snapshot()
    out = tmp_path / "run"
    p = subprocess.Popen(TESTBED + ["run", "contention-gorman-3.6", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: samples(out / "client.ndjson") >= 30, 60, "3 s of client samples")
        run_id = json.loads((out / "client-config.json").read_text())["run_id"]
        p.send_signal(signal.SIGINT)
        output, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["verdict"] is None
    assert samples(out / "client.ndjson") >= 30
    assert (out / "report.html").exists() and (out / "memory.png").exists()
    assert_nothing_left(run_id)
    assert_untouched(before, snapshot())


def test_compare_and_report(tmp_path):
    out = tmp_path / "cmp"
    r = subprocess.run(TESTBED + ["compare", "baseline", "--policies", "none,gorman-3.6",
                                  "--set", "client.workloads[0].total_mb=8",
                                  "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--set client.workloads[0].total_mb" in r.stderr  # lists are whole
    r = subprocess.run(TESTBED + ["compare", "baseline", "--policies", "none,gorman-3.6",
                                  "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    table = [l for l in r.stdout.splitlines() if l.startswith(("none ", "gorman-3.6 "))]
    assert len(table) == 2 and all("completed" in l for l in table), r.stdout
    index = json.loads((out / "runs.json").read_text())
    assert [x["label"] for x in index["runs"]] == ["none", "gorman-3.6"]
    (out / "report.html").unlink()
    (out / "compare.png").unlink()
    r = subprocess.run(TESTBED + ["report", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (out / "report.html").exists() and (out / "compare.png").exists()
    html = (out / "report.html").read_text()
    assert "none/report.html" in html and "gorman-3.6/report.html" in html


def test_a_run_is_recorded_in_the_results_store(tmp_path):
    """A real run's row: what its folder says, with the code and the machine; the same
    row again after --rebuild from the folders."""
    db = tmp_path / "runs" / "results.db"
    out = tmp_path / "runs" / "baseline"
    env = {**os.environ, "TESTBED_RESULTS_DB": str(db)}
    r = subprocess.run(TESTBED + ["run", "baseline", "--out", str(out)], capture_output=True,
                       text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = []
    for argv in ([], ["--rebuild"]):
        export = tmp_path / f"runs{len(rows)}.csv"
        r = subprocess.run(TESTBED + ["results", "--scenario", "baseline", "--export",
                                      str(export)] + argv,
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        with open(export, newline="") as f:
            rows.append(list(csv.DictReader(f)))
    before, after = rows
    assert len(before) == 1
    (row,) = before
    assert row["path"] == str(out.resolve()) and row["command"] == "run"
    assert (row["scenario"], row["policy"], row["verdict"]) == (
        "baseline", summary["policy"], summary["verdict"])
    assert float(row["duration_s"]) == summary["duration_s"]
    assert float(row["time_s"]) == summary["writeback"]["time_s"]
    assert row["code_version"] and row["hostname"] == os.uname().nodename
    assert float(row["timing.run"]) == summary["timings"]["run"]
    assert [{k: v for k, v in r.items() if k != "recorded"} for r in after] == \
        [{k: v for k, v in row.items() if k != "recorded"}]
