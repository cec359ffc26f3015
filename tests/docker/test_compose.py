"""docker-compose.yml as users run it: `docker compose up` to a verdict, and Ctrl-C.

Compose v2 (`docker compose`) where the machine has it, else v1 (`docker-compose`):
see :func:`compose_command`. The project's own compose file is used, with
``--project-directory`` pointing at a temporary folder so that its ``./runs`` bind
mount lands there.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, TESTBED, compose_command, labelled, sh, untagged_env

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.slow]

COMPOSE_TIMEOUT = 240


def compose_argv(tmp_path: Path, project: str, *args: str) -> list[str]:
    return [*compose_command(), "-f", str(ROOT / "docker-compose.yml"),
            "--project-directory", str(tmp_path), "-p", project, *args]


def compose_env(run: str, **extra: str) -> dict[str, str]:
    return untagged_env(TESTBED_COMPOSE_RUN=run, SCENARIO="baseline", **extra)


def the_run_folder(tmp_path: Path) -> Path:
    folders = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_compose_up_runs_the_scenario_to_a_verdict(engine, tmp_path):
    run = secrets.token_hex(4)
    project = f"tb{run}"
    env = compose_env(run, TESTBED_SET="topology.bulk_hosts=2")
    try:
        r = subprocess.run(compose_argv(tmp_path, project, "up", "--no-color", "--scale",
                                        "bulk=2"),
                           capture_output=True, text=True, timeout=COMPOSE_TIMEOUT, env=env)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-3000:]
        # every node built its link, shaped and verified it, and the run ended by itself
        assert out.count("link up,") == 4 and out.count("shaped and verified") == 4, out[-3000:]
        assert "verdict: completed (expected completed)" in out
        for c in engine.containers.list(all=True, filters={"label": f"org.testbed.run={run}"},
                                        ignore_removed=True):
            assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 0, c.name
        folder = the_run_folder(tmp_path)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["verdict"] == summary["expected"] == "completed"
        assert summary["integrity"]["checked"] and summary["integrity"]["mismatches"] == 0
        assert summary["integrity"]["bytes_checked"] > 0
        hosts = json.loads((folder / "hosts.json").read_text())
        assert sorted(hosts) == ["bulk1", "bulk2", "client", "target"]
        assert len(set(hosts.values())) == 4
        assert (folder / "report.html").exists() and (folder / "client.ndjson").exists()
    finally:
        sh(*compose_argv(tmp_path, project, "down", "-v"), timeout=120, env=env, check=False)
    assert labelled(engine, run) == []


def test_ctrl_c_then_clean(engine, tmp_path, docker_bystanders):
    run = secrets.token_hex(4)
    project = f"tb{run}"
    env = compose_env(run)
    p = subprocess.Popen(compose_argv(tmp_path, project, "up", "--no-color"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + COMPOSE_TIMEOUT
        for line in p.stdout:
            if "t=" in line and "free" in line:     # the client's progress: the run is on
                break
            assert time.monotonic() < deadline, "the run did not start"
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    summary = json.loads((the_run_folder(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["verdict"] is None
    assert labelled(engine, run)            # compose stops containers, removes nothing
    out = sh(*TESTBED, "clean", timeout=120, env=untagged_env(TESTBED_COMPOSE_GRACE="0")).stdout
    assert f"removed run {run}" in out
    assert labelled(engine, run) == []
    docker_bystanders.assert_alive()
