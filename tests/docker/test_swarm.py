"""The same compose file as a stack on a single-node Docker Swarm: deploy, run, remove.

The swarm is made here only if the engine is not in one (and left again, with the
docker_gwbridge network it brings, if that did not exist before). Overlay network,
``endpoint_mode: dnsrr`` (no IPVS in this kernel), no devices for services (the client
makes /dev/net/tun), and the run folder on a bind mount next to the compose file.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time

import pytest

from .conftest import ROOT, TESTBED, labelled, sh, untagged_env

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.slow]

RUN_TIMEOUT = 240
DONE = {"complete", "failed", "rejected", "shutdown", "orphaned"}


@pytest.fixture
def swarm(engine):
    state = engine.info()["Swarm"]["LocalNodeState"]
    had_gwbridge = bool(engine.networks.list(names=["docker_gwbridge"]))
    made = state == "inactive"
    if made:
        sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1", timeout=60)
    elif state != "active":
        pytest.skip(f"engine's swarm state is {state}")
    try:
        yield
    finally:
        if made:
            sh("docker", "swarm", "leave", "--force", timeout=60, check=False)
            for n in engine.networks.list(names=["docker_gwbridge"]):
                if not had_gwbridge:
                    n.remove()


def task_states(engine, service: str) -> list[str]:
    return [t["Status"]["State"] for t in engine.services.get(service).tasks()]


def wait_until(what: str, done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_stack_deploys_runs_and_is_removed(engine, swarm, tmp_path):
    run = secrets.token_hex(4)
    stack = f"tb{run}"
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "runs").mkdir()
    env = untagged_env(TESTBED_COMPOSE_RUN=run, SCENARIO="baseline",
                       TESTBED_SET="topology.bulk_hosts=3")
    try:
        out = sh("docker", "stack", "deploy", "-c", str(tmp_path / "docker-compose.yml"),
                 stack, env=env, cwd=tmp_path).stdout
        assert f"Creating service {stack}_client" in out
        services = [f"{stack}_{s}" for s in ("client", "target", "bulk")]
        # the client runs the scenario and ends; then target and bulk stop by themselves
        wait_until("every task to end",
                   lambda: all(set(task_states(engine, s)) <= DONE and task_states(engine, s)
                               for s in services), RUN_TIMEOUT)
        assert set(task_states(engine, f"{stack}_client")) == {"complete"}
        assert len(task_states(engine, f"{stack}_bulk")) == 3
        [folder] = list((tmp_path / "runs").iterdir())
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["verdict"] == summary["expected"] == "completed"
        assert summary["integrity"]["checked"] and summary["integrity"]["mismatches"] == 0
        hosts = json.loads((folder / "hosts.json").read_text())
        assert sorted(hosts) == ["bulk1", "bulk2", "bulk3", "client", "target"]
        lan = engine.networks.get(f"{stack}_lan")
        assert lan.attrs["Driver"] == "overlay" and lan.attrs["Internal"]
        assert lan.attrs["Labels"]["org.testbed.run"] == run
    finally:
        sh("docker", "stack", "rm", stack, timeout=60, check=False)
    wait_until("the stack's containers and network to go",
               lambda: not [x for x in labelled(engine, run) if not x.startswith("volume")], 60)
    # `docker stack rm` leaves volumes; with the stack gone they are leftovers for clean
    assert labelled(engine, run) == [f"volume {stack}_target-data"]
    sh(*TESTBED, "clean", timeout=120, env=untagged_env(TESTBED_COMPOSE_GRACE="0"))
    assert labelled(engine, run) == []
