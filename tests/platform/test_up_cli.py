"""`testbed up`: services in the hosts, the host table, the Mininet CLI, teardown on exit."""

import json
import re
import subprocess

import pytest

from .conftest import TESTBED, assert_nothing_left

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.tgtd]


def test_up_runs_services_and_the_cli(tmp_path):
    script = ("client ping -c1 target\n"
              "pingall\n"
              "client iscsi-inq iscsi://10.0.0.2:3260/iqn.2026-11.org.testbed:lun/1\n"
              "exit\n")
    r = subprocess.run(TESTBED + ["up", "contention", "--bulk", "2", "--bw", "20",
                                  "--lun-mb", "8", "--runs-dir", str(tmp_path)],
                       input=script, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr      # the Mininet CLI answers on stderr
    run_id = re.search(r"testbed: run ([0-9a-f]{8}) up", out).group(1)
    assert re.search(r"^client +10\.0\.0\.1 +client-eth0 +02:00:00:00:00:01 +tb-\w+-client$",
                     out, re.M)
    assert re.search(r"^bulk2 +10\.0\.0\.12 ", out, re.M)
    assert "1 packets transmitted, 1 received" in out
    assert "Results: 0% dropped (12/12 received)" in out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out
    run_dir = next(tmp_path.iterdir())
    target = [json.loads(l) for l in (run_dir / "target.ndjson").read_text().splitlines()]
    assert target[0]["event"] == "ready" and target[-1]["event"] == "stop"
    bulk = [json.loads(l) for l in (run_dir / "bulk1.ndjson").read_text().splitlines()]
    assert bulk[0]["event"] == "ready" and bulk[-1]["event"] == "stop"
    assert_nothing_left(run_id)
