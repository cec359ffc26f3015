"""Pure parts of the Docker backend: link script and its verification, label rules."""

from __future__ import annotations

import time

import pytest

from testbed.backends import docker_labels
from testbed.backends.docker import configure_link, plumbing_commands, role_of
from testbed.backends.shaping import LinkSpec, ShapingError, readback_commands

SPEC = LinkSpec("client", "client-eth0", "s1", "s1-eth1", 20.0, queue=50)

GOOD = """@@ {intf}
qdisc htb 5: root refcnt 2 r2q 10 default 0x1 direct_packets_stat 0
qdisc pfifo 10: parent 5:1 limit 50p
class htb 5:1 root leaf 10: prio 0 rate 20Mbit ceil 20Mbit burst 15Kb cburst 1600b
tx-checksumming: off
tcp-segmentation-offload: off
generic-segmentation-offload: off
generic-receive-offload: off
"""


def fake_script(out: str, status: int = 0, err: str = ""):
    seen = []

    def run(script: str):
        seen.append(script)
        return status, out, err
    return run, seen


def test_script_builds_the_port_then_shapes_both_ends_then_reads_back():
    run, seen = fake_script(GOOD.format(intf="client-eth0") + GOOD.format(intf="s1-eth1"))
    configure_link(run, "host client", SPEC, "10.0.0.1/24", "02:00:00:00:00:01", "testbed:abcd1234")
    script = seen[0]
    order = [script.index(s) for s in (
        "ip link add client-eth0 type veth peer name s1-eth1",
        "ip link set dev eth0 master s1",
        "ip addr add 10.0.0.1/24 dev client-eth0",
        "tc qdisc replace dev client-eth0 root handle 5: htb",
        "tc qdisc replace dev s1-eth1 root handle 5: htb",
        "echo '@@ client-eth0'", "echo '@@ s1-eth1'")]
    assert order == sorted(order)
    assert "rate 20mbit" in script and "pfifo limit 50" in script
    for cmd in readback_commands("s1-eth1"):
        assert cmd in script


def test_a_rate_that_did_not_take_is_named():
    bad = GOOD.format(intf="client-eth0") + GOOD.format(intf="s1-eth1").replace("20Mbit", "2Mbit", 1)
    run, _ = fake_script(bad)
    with pytest.raises(ShapingError, match=r"link client-eth0<->s1-eth1, interface s1-eth1: "
                                           r"htb class 5:1 rate is 2 Mbit/s, expected 20"):
        configure_link(run, "host client", SPEC, "10.0.0.1/24", "02:00:00:00:00:01", "t")


def test_a_failed_command_is_named_with_the_host():
    run, _ = fake_script("", status=1, err="noise\nip link add client-eth0 type veth peer name s1-eth1\n")
    with pytest.raises(ShapingError, match="host client: link configuration failed: "
                                           "ip link add client-eth0"):
        configure_link(run, "host client", SPEC, "10.0.0.1/24", "02:00:00:00:00:01", "t")


def test_plumbing_removes_dockers_address_and_takes_the_trunks_mtu():
    cmds = plumbing_commands(SPEC, "10.0.0.1/24", "02:00:00:00:00:01")
    assert cmds[:2] == ["ip addr flush dev eth0", "ip route flush dev eth0"]
    assert any("mtu" in c and "client-eth0" in c and "/sys/class/net/eth0/mtu" in c for c in cmds)


def test_roles():
    assert [role_of(h) for h in ("client", "target", "bulk1", "bulk64")] == \
        ["client", "target", "bulk", "bulk"]


class FakeApi:
    """The three list calls of the engine's API, answering from fixed tables."""

    def __init__(self, containers=(), networks=(), volumes=(), services=None):
        self._c, self._n, self._v, self._s = list(containers), list(networks), list(volumes), services

    def containers(self, all, filters):
        return self._c

    def networks(self, filters):
        return self._n

    def volumes(self, filters):
        return {"Volumes": self._v}

    def services(self, filters):
        if self._s is None:
            raise RuntimeError("This node is not a swarm manager.")
        return self._s


def container(name, run, managed, running, age=1000.0, stack=None):
    labels = {"org.testbed.run": run, "org.testbed.managed": managed}
    if stack:
        labels["com.docker.stack.namespace"] = stack
    return {"Id": name, "Names": ["/" + name], "Labels": labels,
            "State": "running" if running else "exited", "Created": time.time() - age}


def stamp(age: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime(time.time() - age))


def test_label_rules():
    api = FakeApi(
        containers=[container("b1", "aaaaaaaa", "backend", True),
                    container("c1", "compose1", "compose", True),
                    container("c2", "compose1", "compose", False),
                    container("c3", "compose2", "compose", False),
                    container("s1", "stack1", "compose", False, stack="tbs"),
                    container("s2", "stack2", "compose", False, stack="gone")],
        networks=[{"Id": "n1", "Name": "young", "Labels": {"org.testbed.run": "compose3",
                   "org.testbed.managed": "compose"}, "Created": stamp(5)},
                  {"Id": "n2", "Name": "old", "Labels": {"org.testbed.run": "compose2",
                   "org.testbed.managed": "compose"}, "Created": stamp(1000)}],
        volumes=[{"Name": "v1", "Labels": {"org.testbed.run": "stack2",
                  "com.docker.stack.namespace": "gone"}, "CreatedAt": stamp(1000)}],
        services=[{"Spec": {"Labels": {"com.docker.stack.namespace": "tbs"}}}])
    found = {(o.kind, o.name) for o in docker_labels.scan(api)}
    # backend: always listed (liveness from its state file); compose1 runs; compose3 is
    # young; tbs is deployed; compose2 and the removed stack "gone" are leftovers
    assert found == {("container", "b1"), ("container", "c3"), ("network", "old"),
                     ("container", "s2"), ("volume", "v1")}


def test_outside_a_swarm_stack_objects_are_judged_like_compose():
    api = FakeApi(containers=[container("s1", "stack1", "compose", False, stack="tbs")])
    assert [o.name for o in docker_labels.scan(api)] == ["s1"]


def test_engine_times():
    assert docker_labels._unix_time("1970-01-01T00:01:00.5Z") == 60.0
    assert docker_labels._unix_time("1970-01-01T01:01:00+01:00") == 60.0
    assert docker_labels._unix_time("") == 0.0


def test_no_engine_no_objects(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    assert docker_labels.api(timeout=1) is None
    assert docker_labels.scan() == []
    assert docker_labels.remove([]) == []


class FakeSwarmApi(FakeApi):
    """A manager's engine: its swarm and nodes, with the removals recorded."""

    def __init__(self, swarm_labels, nodes, **kw):
        super().__init__(**kw)
        self.swarm = {"ID": "sw1", "CreatedAt": stamp(1000), "Spec": {"Labels": swarm_labels}}
        self._nodes, self.calls = nodes, []

    def inspect_swarm(self):
        return self.swarm

    def nodes(self):
        return self._nodes

    def remove_node(self, ident, force):
        self.calls.append(("node", ident))

    def leave_swarm(self, force):
        self.calls.append(("leave",))

    def containers(self, all, filters):
        return self._c if "leave" not in [c[0] for c in self.calls] else []

    def remove_container(self, ident, force, v):
        self.calls.append(("container", ident))

    def remove_network(self, ident):
        self.calls.append(("network", ident))

    def remove_volume(self, ident, force):
        self.calls.append(("volume", ident))


def node(ident, labels, state="down"):
    return {"ID": ident, "CreatedAt": stamp(1000), "Spec": {"Labels": labels},
            "Description": {"Hostname": f"host-{ident}"}, "Status": {"State": state}}


def test_a_labelled_swarm_and_node_are_listed_and_removed_swarm_last():
    run = {"org.testbed.run": "aaaaaaaa", "org.testbed.managed": "swarm-engines"}
    api = FakeSwarmApi(dict(run, **{"org.testbed.gwbridge": "made"}),
                       [node("n1", run), node("n2", {}, "ready")],
                       containers=[container("w1", "aaaaaaaa", "swarm-engines", True)])
    found = docker_labels.scan(api)
    assert {(o.kind, o.name) for o in found} == {("container", "w1"), ("node", "host-n1"),
                                                 ("swarm", "swarm")}
    assert {o.run for o in found} == {"aaaaaaaa"}
    assert docker_labels.remove(found, api) == []
    # the worker's container, its node entry, then the swarm and the gwbridge it brought
    assert api.calls == [("container", "w1"), ("node", "n1"), ("leave",),
                         ("network", "docker_gwbridge")]


def test_an_unlabelled_swarm_is_not_listed():
    api = FakeSwarmApi({}, [node("n2", {}, "ready")])
    assert docker_labels.scan(api) == []
