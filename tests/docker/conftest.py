"""Fixtures of the Docker tests: a running engine with the node image, labels, bystanders.

The session's first Docker test starts dockerd with ``scripts/docker-up.sh`` if it is
not running and builds the images with ``docker/build-images.sh`` (idempotent: the
debootstrapped base is kept, an unchanged source costs a second); the session's end
stops the dockerd it started, by pid, with ``scripts/docker-down.sh``, and nothing else.

"Nothing left behind" is checked by label (no container, network or volume with
``org.testbed.run=<id>``) and by tag (``testbed.cleanup.find_run``), and "nothing
else touched" by bystanders: an unlabelled container, network and volume, and an
untagged process, namespace, veth and iptables rule.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import cleanup
from testbed.backends.docker_labels import LABEL_RUN
from testbed.runctx import STATE_DIR

ROOT = Path(__file__).resolve().parents[2]
TESTBED = [sys.executable, "-m", "testbed.cli"]
BUILD_TIMEOUT = 900


def sh(*argv: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


@functools.lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """Compose v2 (`docker compose`) where the machine has it, else v1 (`docker-compose`,
    the one Debian 12 packages): both run docker-compose.yml with the same options."""
    try:
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True,
                            timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        v2 = False
    if v2:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    pytest.fail("no Compose: neither `docker compose` (v2) nor `docker-compose` (v1); "
                "scripts/setup.sh installs docker-compose")


def untagged_env(**extra: str) -> dict[str, str]:
    """Our environment without TESTBED_RUN: a helper must not look like a run's process."""
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """A Docker SDK client of a running engine that has the node image."""
    if os.geteuid() != 0:
        pytest.skip("needs root (run `make test` as root)")
    if not shutil.which("dockerd"):
        pytest.fail("dockerd not installed: scripts/setup.sh installs docker.io")
    pidfile = tmp_path_factory.mktemp("dockerd") / "dockerd.pid"
    sh(str(ROOT / "scripts/docker-up.sh"), str(pidfile), timeout=120, env=untagged_env())
    try:
        sh(str(ROOT / "docker/build-images.sh"), timeout=BUILD_TIMEOUT, env=untagged_env())
        import docker
        client = docker.from_env(timeout=120)
        yield client
        client.close()
    finally:
        sh(str(ROOT / "scripts/docker-down.sh"), str(pidfile), timeout=120, check=False)


def labelled(client, run: str) -> list[str]:
    """Containers, networks and volumes labelled with run ``run``, as 'kind name'."""
    f = {"label": f"{LABEL_RUN}={run}"}
    containers = client.containers.list(all=True, filters=f, ignore_removed=True)
    return ([f"container {c.name}" for c in containers]
            + [f"network {n.name}" for n in client.networks.list(filters=f)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=f)])


def assert_nothing_left(client, run_id: str) -> None:
    """Nothing labelled or tagged with run ``run_id`` remains, and no state file."""
    assert labelled(client, run_id) == []
    left = cleanup.find_run(run_id)
    deadline = time.monotonic() + 3          # a killed process may linger while reaped
    while left.processes and time.monotonic() < deadline:
        time.sleep(0.1)
        left = cleanup.find_run(run_id)
    assert left.empty, f"leftovers: {left}"
    assert not list(STATE_DIR.glob(f"{run_id}*"))


class DockerBystanders:
    """An unlabelled container, network and volume: cleaning must leave them alone."""

    def __init__(self, client):
        tag = secrets.token_hex(3)
        self.client = client
        self.network = client.networks.create(f"bystander-{tag}", internal=True)
        self.volume = client.volumes.create(f"bystander-{tag}")
        self.container = client.containers.run(
            "testbed-node:latest", name=f"bystander-{tag}", entrypoint=["sleep", "infinity"],
            command=[], detach=True, network=self.network.name,
            volumes={self.volume.name: {"bind": "/data", "mode": "rw"}})

    def assert_alive(self) -> None:
        self.container.reload()
        assert self.container.status == "running", "bystander container was stopped"
        self.network.reload()
        self.volume.reload()

    def remove(self) -> None:
        self.container.remove(force=True)
        self.network.remove()
        self.volume.remove(force=True)


@pytest.fixture
def docker_bystanders(engine):
    b = DockerBystanders(engine)
    try:
        yield b
    finally:
        b.remove()


class Bystanders:
    """An untagged process, namespace, veth and iptables rule (names unique to the test)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.netns = f"tb-bystander-{tag}"       # tb- prefix, but no run id
        self.veth = f"tbby{tag}a"
        self.rule = ["-t", "raw", "-A", "OUTPUT", "-d", "127.0.0.254/32", "-m", "comment",
                     "--comment", f"bystander{tag}", "-j", "ACCEPT"]
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", f"tbby{tag}b")
        sh("ip", "link", "set", self.veth, "alias", "testbed:not-a-run")
        sh("iptables", *self.rule)
        self.proc = subprocess.Popen(["sleep", "600"], env=untagged_env())

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, "bystander process was killed"
        assert self.netns in os.listdir("/run/netns"), "bystander namespace was removed"
        assert sh("ip", "link", "show", self.veth, check=False).returncode == 0, \
            "bystander veth was removed"
        assert sh("iptables", "-t", "raw", "-C", *self.rule[3:], check=False).returncode == 0, \
            "bystander iptables rule was removed"

    def remove(self) -> None:
        self.proc.kill()
        self.proc.wait()
        sh("iptables", "-t", "raw", "-D", *self.rule[3:], check=False)
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "delete", self.netns, check=False)


@pytest.fixture
def bystanders():
    b = Bystanders()
    try:
        yield b
    finally:
        b.remove()
