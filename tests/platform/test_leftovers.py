"""Nothing left behind: after a normal stop, SIGINT during bring-up, SIGKILL + testbed clean.

Each test snapshots the machine (root-namespace links, named namespaces, iptables,
nft) and plants untagged bystanders first; afterwards nothing of the run remains,
the snapshot is unchanged and the bystanders are alive. test_with_dockerd.py runs
the same checks while dockerd runs.
"""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testbed import cleanup
from testbed.backends.base import ContentionParams
from testbed.backends.mininet import MininetBackend
from testbed.runctx import STATE_DIR, RunContext

from .conftest import (TESTBED, assert_clean_removed, assert_nothing_left, assert_untouched,
                       other_runs, run_id_from_dir, snapshot)

pytestmark = [pytest.mark.root, pytest.mark.mininet]


def start_up(runs_dir: Path, bulk: int) -> subprocess.Popen:
    return subprocess.Popen(TESTBED + ["up", "contention", "--bulk", str(bulk), "--bw", "50",
                                       "--no-cli", "--runs-dir", str(runs_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_state(runs_dir: Path, resource_kind: str, timeout: float = 30) -> str:
    """Poll until the run's state file lists a resource of ``resource_kind``; its run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runs_dir.exists() and list(runs_dir.iterdir()):
            run_id = run_id_from_dir(runs_dir)
            try:
                state = json.loads((STATE_DIR / f"{run_id}.json").read_text())
            except (OSError, ValueError):
                state = {"resources": []}
            if any(r["kind"] == resource_kind for r in state["resources"]):
                return run_id
        time.sleep(0.005)
    raise AssertionError(f"no {resource_kind} in the run's state after {timeout}s")


def wait_up(proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith("testbed: run ") and " up;" in line:
            return line.split()[2]
        assert time.monotonic() < deadline
    raise AssertionError(f"testbed up ended: {proc.stderr.read()}")


def check_normal_stop(tmp_path, bystanders):
    before = snapshot()
    with RunContext.create(base_dir=tmp_path, name="normal") as run:
        net = MininetBackend(run).up(ContentionParams(n=4))
        net.host("bulk1").popen(["sleep", "300"])
        assert cleanup.find_run(run.id).netns        # there was something to remove
    assert_nothing_left(run.id)
    assert_untouched(before, snapshot())
    bystanders.assert_alive()


def check_sigint_during_bring_up(tmp_path, bystanders, stage: str):
    before = snapshot()
    runs = tmp_path / "runs"
    proc = start_up(runs, bulk=16)
    run_id = wait_for_state(runs, stage)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert " up;" not in out, "the signal came after bring-up"
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert_nothing_left(run_id)
    assert_untouched(before, snapshot())
    bystanders.assert_alive()


def check_sigkill_then_clean(tmp_path, bystanders):
    before = snapshot()
    proc = start_up(tmp_path / "runs", bulk=2)
    run_id = wait_up(proc)
    left = cleanup.find_run(run_id)
    assert left.netns and left.processes and left.state    # what the kill will leave behind
    others = other_runs()
    proc.kill()
    proc.wait(timeout=10)
    r = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert_clean_removed(r.stdout, run_id, others | other_runs())
    assert_nothing_left(run_id)
    assert_untouched(before, snapshot())
    bystanders.assert_alive()
    again = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and run_id not in again.stdout
    assert_untouched(before, snapshot())


def test_normal_stop(tmp_path, bystanders):
    check_normal_stop(tmp_path, bystanders)


@pytest.mark.parametrize("stage", ["network", "netns"])
def test_sigint_during_bring_up(tmp_path, bystanders, stage):
    check_sigint_during_bring_up(tmp_path, bystanders, stage)


def test_sigkill_then_clean(tmp_path, bystanders):
    check_sigkill_then_clean(tmp_path, bystanders)
