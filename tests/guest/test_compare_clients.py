"""``testbed compare --clients emulated:gorman-3.6,kernel`` end to end: one short load
run once on the model and once on Debian's 6.1 kernel in a guest, and the validation
table both on the terminal and in the batch's report (testbed.validation)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from testbed import results, validation
from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_untouched

import pytest

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.slow]

# short: the guest is slow under TCG (15 to 20 s to boot and log in); 128 MiB for both
SCENARIO = """\
name: compare-clients-e2e
expect: completed
duration_s: 30
deadline_s: 60
topology: {bulk_hosts: 1, client_bw_mbit: 20, bw_mbit: 100}
client:
  memory_mb: 128
  dirty_ratio: 40
  dirty_background_ratio: 10
  lockup_after_s: 4
  workloads:
    - {kind: writer, total_mb: 10, rate_mbps: 8, files: 1, seed: 2}
    - {kind: downloader, total_mb: 2, rcvbuf_kb: 1024}
target: {lun_mb: 64}
bulk: {mode: tcp}
"""


def test_compare_clients_runs_the_load_on_both_and_prints_the_validation_table(
        tmp_path, guest_image):
    path = tmp_path / "load.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "batch"
    before = snapshot()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "compare", str(path),
                        "--clients", "emulated:gorman-3.6,kernel", "--out", str(out)],
                       capture_output=True, text=True, timeout=500)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    runs = results.open_batch(out).runs()
    assert [(x.label, x.client_kind, x.verdict, x.mismatches) for x in runs] == [
        ("emulated:gorman-3.6", "emulated", "completed", 0),
        ("kernel", "kernel", "completed", 0)]
    model, kernel = runs
    assert model.handler_counted and not kernel.handler_counted
    assert kernel.drops("other") is None and model.drops("other") is not None
    assert kernel.summary["policy"] == "gorman-3.6"
    # both wrote the same load back; the kernel's counters are its own
    assert model.written_back_bytes >= 8 * 2**20 and kernel.written_back_bytes >= 8 * 2**20
    assert kernel.counter_rise("PFMemallocDrop") is not None
    assert model.counter_rise("pgscan_direct_throttle") is not None
    v = validation.validation(runs)
    rows = {row[0]: row[1:] for row in v.table.rows}
    # a run past a fidelity bound (a busy machine) keeps its verdict but is not counted
    counted = [x.summary.get("validity") != "invalid" for x in runs]
    assert rows["runs"][:2] == [str(int(c)) for c in counted]
    if all(counted):
        assert rows["verdicts"] == ["completed 1", "completed 1", "same"]
    assert rows["storage frames dropped, received (handler)"][1:] == ["n/a [3]", "n/a"]
    assert rows["TCPBacklogDrop (frames)"][0] == "n/a [4]"
    # both count what TCP's sockets charged against tcp_mem, each from its own counters
    assert all(c not in ("-", "n/a") for c, ok in
               zip(rows["socket memory, peak (pages) [2]"], counted) if ok)
    assert all(c not in ("-", "n/a") for c, ok in zip(rows["writeback goodput (MiB/s)"], counted)
               if ok)
    assert "goodput bulk1 (Mbit/s)" in rows
    # the terminal and the report show the same table
    assert "the model against the kernel" in r.stdout and "[3] the kernel client has no " \
        "packet handler" in r.stdout
    assert "The model against the kernel" in (out / "report.html").read_text()
    assert json.loads((out / results.STATS).read_text())["groups"][1]["group"] == "kernel"
    assert_untouched(before, snapshot())
    print(f"compare --clients, one run each: {took:.1f}s wall")
