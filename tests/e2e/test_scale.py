"""The scaling series on the real machine: ``testbed sweep --series`` at its two smallest
sizes (32 and 64 MiB, the contention load and its double) under gorman-3.6.

Each point is a real run (Mininet, tgtd, the storage client) built from the series'
keys: the run folder's scenario has the point's memory, link and loads; both runs reach
one of gorman-3.6's outcomes on the contention load (:func:`assert_gorman_outcome`)
unless the machine starved them (then the run says so: invalid, its verdict not
counted); the sweep's report has the table by grid point and the plot against memory;
nothing of the runs is left. About two minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed import results, series
from testbed.scenario import SCENARIO_DIR
from tests.e2e.machine import snapshot
from tests.e2e.verdicts import assert_held_at_tcp_mem, at_tcp_mem
from tests.platform.conftest import assert_nothing_left, assert_untouched

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.slow]

TESTBED = [sys.executable, "-m", "testbed.cli"]


def two_smallest(tmp_path: Path) -> Path:
    """The built-in scaling series' first two points, as a series file of their own."""
    s = series.read(SCENARIO_DIR / "series" / "scale.yaml")
    keys = list(s.points[0].load)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"keys": keys,
                                    "points": [list(p.load.values()) for p in s.points[:2]]}))
    return path


def assert_gorman_outcome(summary: dict) -> None:
    """gorman-3.6's outcomes on the contention load, at any scale: completed, or (rarely)
    the stream-specific deadlock with free memory above min, where 3.6 has no
    ``pfmemalloc`` skb to let past ``tcp_mem[2]`` (:func:`at_tcp_mem`). The downloads
    charge their queues up to the fair share while the dirty limits throttle every reader,
    and whether the count reaches ``tcp_mem[2]`` before the storage flow's next response is
    a race. Seen in the CI run of 367e74a at 64 MiB (TCP held 3,072 of 3,072 pages from
    3.8 s, free memory 6,131 pages against a min of 256); not in 16 runs of these two points
    (docs/measurements.md, "`gorman-3.6`'s rare other outcome")."""
    if at_tcp_mem(summary):
        assert_held_at_tcp_mem(summary)
        lk = summary["lockup"]
        assert lk["free"] > lk["wmark_min"] and not lk["tcp"]["pfmemalloc"], lk
        return
    assert summary["verdict"] == "completed", summary.get("detail")


def test_the_series_two_smallest_points_run_scaled_and_reach_the_verdict(tmp_path):
    out = tmp_path / "sweep"
    before = snapshot()
    r = subprocess.run(TESTBED + ["sweep", "contention", "--series", str(two_smallest(tmp_path)),
                                  "--param", "client.policy=gorman-3.6", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    batch = results.open_batch(out)
    runs = batch.runs()
    assert [run.label for run in runs] == ["client.memory_mb=32 client.policy=gorman-3.6",
                                           "client.memory_mb=64 client.policy=gorman-3.6"]
    assert batch.param_keys == ["client.memory_mb", "client.policy"]
    for run, k in zip(runs, (1, 2)):
        ran = yaml.safe_load((run.path / "scenario.yaml").read_text())
        assert ran["client"]["memory_mb"] == 32 * k
        assert ran["topology"]["client_bw_mbit"] == 20 * k
        assert [w["rcvbuf_kb"] for w in ran["client"]["workloads"][1:]] == [2048 * k] * 3
        assert run.validity in ("valid", "invalid")
        if not run.invalid:
            assert_gorman_outcome(run.summary)
            assert run.mismatches == 0
    page = (out / "report.html").read_text()
    assert "By grid point" in page and (out / "sweep-time.png").stat().st_size > 0
    for run in runs:
        assert_nothing_left(json.loads((run.path / "client-config.json").read_text())["run_id"])
    assert_untouched(before, snapshot())
