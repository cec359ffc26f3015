"""End to end on the real engine: the same scenario on Mininet and on Docker, same verdict.

Each case runs ``testbed run`` twice, one backend after the other (never at the same
time: both share two cores and the verdicts depend on timing), and compares the
verdicts with each other and with the scenario's expectation; completed runs must
have read every acknowledged page back from the LUN without a mismatch.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import ROOT, TESTBED, untagged_env

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.mininet, pytest.mark.tgtd,
              pytest.mark.slow]

CASES = [("baseline", None), ("contention", "gorman-3.6"), ("contention", "none")]
RUN_TIMEOUT = 300


def run_on(backend: str, scenario: str, policy: str | None, out) -> dict:
    argv = [*TESTBED, "run", str(ROOT / "scenarios" / f"{scenario}.yaml"),
            "--backend", backend, "--out", str(out)]
    if policy:
        argv += ["--set", f"client.policy={policy}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                       env=untagged_env())
    summary = json.loads((out / "summary.json").read_text())
    assert r.returncode == (0 if summary["verdict"] == summary["expected"] else 1), r.stderr
    return summary


@pytest.mark.parametrize("scenario,policy", CASES,
                         ids=[f"{s}-{p or 'default'}" for s, p in CASES])
def test_same_verdict_as_mininet(engine, tmp_path, scenario, policy):
    got = {b: run_on(b, scenario, policy, tmp_path / b) for b in ("mininet", "docker")}
    expected = got["docker"]["expected"]
    assert got["docker"]["verdict"] == got["mininet"]["verdict"] == expected, \
        {b: (s["verdict"], s["reasons"], s["detail"]) for b, s in got.items()}
    for backend, s in got.items():
        assert s["integrity"]["mismatches"] == 0, backend
        if s["verdict"] == "completed":
            assert s["integrity"]["checked"] and s["integrity"]["bytes_checked"] > 0, backend
