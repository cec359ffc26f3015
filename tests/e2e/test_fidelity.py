"""A real run measures its own fidelity: one short run (lab 5's load, ~20 s) on Mininet,
and its figures in summary.json, host-pressure.json, the evidence lines and the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import store
from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_untouched

pytestmark = [pytest.mark.mininet, pytest.mark.root]

TESTBED = [sys.executable, "-m", "testbed.cli"]
LAB5 = Path(__file__).resolve().parents[2] / "labs" / "05-linux-3.6" / "gorman.yaml"


def test_a_run_records_its_wakeup_lag_link_and_cpu_pressure(tmp_path):
    before = snapshot()
    out = tmp_path / "run"
    db = tmp_path / "results.db"
    r = subprocess.run(TESTBED + ["run", str(LAB5), "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, store.ENV: str(db)})
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    f = summary["fidelity"]
    lag = f["lag"]
    # the sampler's every 100 ms over a run of several seconds; a wake-up may be late
    assert lag["wakeups"] >= 30 and 0 <= lag["p99_ms"] <= lag["max_ms"]
    assert 0 <= lag["late_fraction"] <= 1
    # lab 5's 8 MiB of downloads are too short a load to judge the 40 Mbit/s link by
    assert f["link"]["configured_mbit"] == 40 and not f["link"]["judged"]
    assert "not judged" in f["link"]["note"]
    pressure = json.loads((out / "host-pressure.json").read_text())
    if Path("/proc/pressure/cpu").exists():
        assert pressure == f["cpu_pressure"] and 0 <= pressure["some_fraction"] <= 1.1
    assert summary["validity"] == ("invalid" if f["invalid_by"] else "valid")
    assert "fidelity: client wake-up lag max" in r.stdout
    with store.Store.open(db, create=False) as st:
        (rec,) = st.query()
    assert rec.validity == summary["validity"] and rec.figures["lag_max_ms"] == lag["max_ms"]
    assert_untouched(before, snapshot())
