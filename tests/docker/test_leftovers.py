"""No leftovers on Docker: normal end, Ctrl-C during bring-up, SIGKILL then `testbed clean`.

Each case checks both halves: nothing labelled or tagged with the run remains, and
the bystanders (unlabelled container, network, volume; untagged process, namespace,
veth, iptables rule) are untouched.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from testbed import cleanup
from testbed.backends import docker_labels
from testbed.backends.base import ContentionParams
from testbed.backends.docker import DockerBackend
from testbed.backends.docker_labels import LABEL_MANAGED, LABEL_ROLE, LABEL_RUN
from testbed.runctx import RunContext

from .conftest import ROOT, TESTBED, assert_nothing_left, labelled, sh, untagged_env

pytestmark = [pytest.mark.root, pytest.mark.docker]

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from testbed.runctx import RunContext
from testbed.backends.base import ContentionParams
from testbed.backends.docker import DockerBackend
with RunContext.create(base_dir={base!r}, name="child") as run:
    print(run.id, flush=True)
    net = DockerBackend(run).up(ContentionParams(n={n}))
    print("READY", flush=True)
    time.sleep(600)
"""


def start_child(tmp_path, n: int) -> tuple[subprocess.Popen, str]:
    code = CHILD.format(root=str(ROOT), base=str(tmp_path), n=n)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=untagged_env())
    run_id = p.stdout.readline().strip()
    assert len(run_id) == 8, run_id
    return p, run_id


def test_normal_run(engine, tmp_path, bystanders, docker_bystanders):
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        net = DockerBackend(run).up(ContentionParams(n=2))
        net.host("target").popen(["sleep", "300"])
        assert len(labelled(engine, run.id)) == 5
    assert_nothing_left(engine, run.id)
    bystanders.assert_alive()
    docker_bystanders.assert_alive()


def test_sigint_during_bring_up(engine, tmp_path, bystanders, docker_bystanders):
    p, run_id = start_child(tmp_path, n=16)
    try:
        deadline = time.monotonic() + 60
        while sum(x.startswith("container") for x in labelled(engine, run_id)) < 3:
            assert p.poll() is None and time.monotonic() < deadline, "bring-up did not start"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        assert p.wait(120) != 0
        assert "READY" not in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert_nothing_left(engine, run_id)
    bystanders.assert_alive()
    docker_bystanders.assert_alive()


def test_sigkill_then_clean(engine, tmp_path, bystanders, docker_bystanders):
    p, run_id = start_child(tmp_path, n=2)
    try:
        assert p.stdout.readline().strip() == "READY"
        p.kill()
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # The run is dead now: a run starting elsewhere on the machine (other tests) may
    # sweep it at any moment, so the counts below are "what is still there".
    left = labelled(engine, run_id)
    assert left, "SIGKILL left nothing to clean"
    dry = sh(*TESTBED, "clean", "--dry-run", env=untagged_env()).stdout
    still = labelled(engine, run_id)
    if still:
        assert f"would remove run {run_id}" in dry and "Docker objects" in dry, dry
    sh(*TESTBED, "clean", timeout=120, env=untagged_env())
    assert_nothing_left(engine, run_id)
    bystanders.assert_alive()
    docker_bystanders.assert_alive()


def test_clean_leaves_a_live_run_alone(engine, tmp_path):
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        net = DockerBackend(run).up(ContentionParams(n=1))
        sh(*TESTBED, "clean", timeout=120, env=untagged_env())
        assert len(labelled(engine, run.id)) == 4
        assert net.host("client").run(["ping", "-c1", "-W2", "10.0.0.2"]).returncode == 0
    assert_nothing_left(engine, run.id)


def test_compose_objects_live_while_running(engine, monkeypatch):
    """A compose run's objects stay while a container runs; once none runs, clean takes them."""
    monkeypatch.setattr(docker_labels, "COMPOSE_GRACE", 0.0)
    run = "c0" + time.strftime("%H%M%S")
    labels = {LABEL_RUN: run, LABEL_MANAGED: "compose"}
    net = engine.networks.create(f"tbtest-{run}", internal=True, labels=labels)
    c = engine.containers.run("testbed-node:latest", name=f"tbtest-{run}", detach=True,
                              entrypoint=["sleep", "infinity"], command=[], network=net.name,
                              labels=dict(labels, **{LABEL_ROLE: "client"}))
    try:
        cleanup.clean_dead_runs()
        assert sorted(labelled(engine, run)) == [f"container tbtest-{run}", f"network tbtest-{run}"]
        c.stop(timeout=1)
        dead = cleanup.clean_dead_runs()
        assert [str(o) for left in dead if left.run_id == run for o in left.docker]
        assert labelled(engine, run) == []
    finally:
        for obj in labelled(engine, run):
            kind, name = obj.split()
            (engine.containers if kind == "container" else engine.networks).get(name).remove(
                **({"force": True} if kind == "container" else {}))


def test_a_network_with_an_endpoint_left_is_still_removed(engine):
    """The engine's "has active endpoints" refusal (moby/moby#42119) is outlasted.

    A container the run's removal did not see (an engine call that outlived its
    client's timeout) holds an endpoint on the run's network: ``remove_network``
    disconnects it by force and removes the network; the container itself stays, for
    the second container pass of ``DockerNetwork.stop``.
    """
    run = "e0" + time.strftime("%H%M%S")
    labels = {LABEL_RUN: run, LABEL_MANAGED: "backend"}
    net = engine.networks.create(f"tbtest-{run}", internal=True, labels=labels)
    c = engine.containers.run("testbed-node:latest", name=f"tbtest-{run}", detach=True,
                              entrypoint=["sleep", "infinity"], command=[], network=net.name,
                              labels=labels)
    try:
        with pytest.raises(Exception, match="active endpoints"):
            engine.api.remove_network(net.id)      # the refusal is real
        docker_labels.remove_network(engine.api, net.id, grace=20)
        assert engine.networks.list(filters={"label": f"{LABEL_RUN}={run}"}) == []
        c.reload()
        assert c.status == "running"
    finally:
        c.remove(force=True)
        for n in engine.networks.list(filters={"label": f"{LABEL_RUN}={run}"}):
            n.remove()
