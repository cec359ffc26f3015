"""``--workers 2`` on the real machine: two whole runs at once (Mininet, tgtd, the nodes).

Both runs must be up at the same moment (their namespaces are seen side by side), reach
their verdicts, carry different run ids (so different namespace names, tags and scratch
folders), and leave nothing behind; Ctrl-C of the batch must end both and leave nothing
either. ``testbed claims --workers 2`` runs its batch (every policy and the baseline) the
same way. A small load keeps each run to seconds (the shape of tests/e2e/test_stress.py's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testbed import claims
from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched
from tests.support.small import small_scenario

pytestmark = [pytest.mark.mininet, pytest.mark.root]

TESTBED = [sys.executable, "-m", "testbed.cli"]
NETNS = Path("/run/netns")



class NamespaceWatch:
    """Which runs have their client namespace up at the same time, sampled every 50 ms."""

    def __init__(self) -> None:
        self.together: set[frozenset[str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            names = os.listdir(NETNS) if NETNS.is_dir() else []
            ids = frozenset(m.group(1) for n in names
                            if (m := re.fullmatch(r"tb-([0-9a-f]{8})-client", n)))
            if len(ids) > 1:
                self.together.add(ids)

    def __enter__(self) -> "NamespaceWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "client-config.json").read_text())["run_id"]


def test_two_runs_at_once_reach_their_verdicts_apart_and_leave_nothing(tmp_path):
    (tmp_path / "small.yaml").write_text(small_scenario("workers-small", 4, 64))
    out = tmp_path / "cmp"
    before = snapshot()
    with NamespaceWatch() as watch:
        r = subprocess.run(TESTBED + ["compare", "small.yaml", "--policies",
                                      "gorman-3.6,phillips-2005", "--workers", "2",
                                      "--out", str(out)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=150)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    index = json.loads((out / "runs.json").read_text())
    assert [x["label"] for x in index["runs"]] == ["gorman-3.6", "phillips-2005"]  # in order
    dirs = [out / x["dir"] for x in index["runs"]]
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    assert all(s["verdict"] in ("completed", "lockup") for s in summaries), summaries
    assert [s["policy"] for s in summaries] == ["gorman-3.6", "phillips-2005"]
    ids = [run_id(d) for d in dirs]
    assert ids[0] != ids[1]
    assert any(set(ids) <= seen for seen in watch.together)   # both up at the same moment
                                                  # (other engineers' runs may be up too)
    assert r.stdout.index("gorman-3.6:") < r.stdout.index("phillips-2005:")
    for d in dirs:
        assert (d / "progress.log").read_text().startswith(f"run {run_id(d)}:")
    for i in ids:
        assert_nothing_left(i)
    assert_untouched(before, snapshot())


def test_ctrl_c_ends_both_runs_in_flight_and_leaves_nothing(tmp_path):
    # runs far past the Ctrl-C
    (tmp_path / "long.yaml").write_text(small_scenario("workers-small", 40, 64))
    out = tmp_path / "cmp"
    before = snapshot()
    p = subprocess.Popen(TESTBED + ["compare", "long.yaml", "--policies", "gorman-3.6",
                                    "--repeat", "3", "--workers", "2", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        logs = [out / "gorman-3.6_1" / "client.ndjson", out / "gorman-3.6_2" / "client.ndjson"]
        while not all(f.exists() and f.stat().st_size > 0 for f in logs):
            assert time.monotonic() < deadline and p.poll() is None, "both runs never started"
            time.sleep(0.2)
        ids = [run_id(f.parent) for f in logs]
        p.send_signal(signal.SIGINT)
        output, _ = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, output
    assert "Traceback" not in output
    for f in logs:
        assert json.loads((f.parent / "summary.json").read_text())["status"] == "interrupted"
    assert not (out / "gorman-3.6_3").exists()             # the third never started
    for i in ids:
        assert_nothing_left(i)
    assert_untouched(before, snapshot())


def test_a_claims_batch_runs_two_at_once_and_states_the_claims(tmp_path):
    """``testbed claims --repeat 2 --workers 2``: the five policies and the baseline, two
    runs at once through the pool, indexed in the claims' order, then the claims."""
    (tmp_path / "small.yaml").write_text(small_scenario("claims-small", 4, 64))
    out = tmp_path / "claims"
    before = snapshot()
    with NamespaceWatch() as watch:
        r = subprocess.run(TESTBED + ["claims", "small.yaml", "--repeat", "2", "--workers", "2",
                                      "--out", str(out)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=400)
    # with 2 runs a group no rate claim can be supported (p = 0.25): exit status 1
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    variants = [*claims.POLICIES, claims.BASELINE]
    index = json.loads((out / "runs.json").read_text())["runs"]
    assert [x["label"] for x in index] == [f"{v}#{k}" for k in (1, 2) for v in variants]
    dirs = [out / x["dir"] for x in index]
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    assert all(s["verdict"] in ("completed", "lockup") for s in summaries), summaries
    assert [s["scenario"] for s in summaries] == \
        [claims.BASELINE if v == claims.BASELINE else "claims-small" for _ in (1, 2)
         for v in variants]
    ids = [run_id(d) for d in dirs]
    assert len(set(ids)) == len(ids)
    assert any(len(set(ids) & seen) > 1 for seen in watch.together)   # two at once
    for d in dirs:
        assert (d / "progress.log").read_text().startswith(f"run {run_id(d)}:")
    stated = json.loads((out / "claims.json").read_text())
    assert stated["scenario"] == "claims-small" and stated["claims"]
    assert stated["runs"] == {v: 2 for v in variants}
    assert "The article's claims on claims-small" in r.stdout
    for i in ids:
        assert_nothing_left(i)
    assert_untouched(before, snapshot())
