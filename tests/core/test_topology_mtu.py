"""topology.mtu: a scenario key bounded where ContentionParams declares it, set on every
interface by the Mininet backend, refused by the Docker backend unless it is the default."""

from pathlib import Path

import pytest

from testbed import scenario
from testbed.backends.base import ContentionParams, make_params
from testbed.backends.docker import check_mtu
from testbed.backends.mininet import mtu_commands
from testbed.backends.shaping import topology_links
from testbed.errors import ConfigError
from testbed.schema import SchemaError

WORK = "client:\n  workloads: [{kind: writer}]\n"


def load(tmp_path: Path, topology: str) -> scenario.Scenario:
    p = tmp_path / "s.yaml"
    p.write_text("name: t\ntopology:\n" + topology + WORK)
    return scenario.load(p)


def test_default_is_ethernet_and_reaches_the_params(tmp_path):
    assert load(tmp_path, "  bulk_hosts: 1\n").topology.params().mtu == 1500
    assert load(tmp_path, "  mtu: 1450\n").topology.params().mtu == 1450
    assert load(tmp_path, "  mtu: 9000\n").topology.params().mtu == 9000


@pytest.mark.parametrize("value, message", [
    ("575", "575 is below the minimum 576"),
    ("9001", "9001 is above the maximum 9000"),
    ("1450.5", "expected int, got float 1450.5"),
    ("jumbo", "expected int, got str 'jumbo'"),
])
def test_bad_mtu_is_named_with_file_line_and_key(tmp_path, value, message):
    with pytest.raises(SchemaError) as e:
        load(tmp_path, f"  bulk_hosts: 1\n  mtu: {value}\n")
    (pr,) = e.value.problems
    assert (pr.line, pr.key) == (4, "topology.mtu")
    assert pr.message == message


def test_override_is_checked_too(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\n" + WORK)
    assert scenario.load(p, overrides=["topology.mtu=1450"]).topology.params().mtu == 1450
    with pytest.raises(SchemaError, match=r"topology\.mtu: 100 is below the minimum 576"):
        scenario.load(p, overrides=["topology.mtu=100"])


def test_params_name_the_parameter():
    with pytest.raises(ConfigError, match=r"^contention: parameter mtu must be at least 576 "
                                          r"and at most 9000, got 10000$"):
        make_params("contention", mtu=10000)


def test_the_layout_does_not_take_the_mtu():
    """The link plan and the Mininet Topo are the same with any MTU: the backend sets it."""
    a, b = ContentionParams(n=2), ContentionParams(n=2, mtu=1450)
    assert topology_links(a) == topology_links(b)
    assert "mtu" not in b.layout() and b.layout()["n"] == 2
    assert sorted(b.topo().hosts()) == ["bulk1", "bulk2", "client", "target"]


def test_mininet_sets_and_checks_every_interface():
    cmds = mtu_commands(["s1-eth1", "s1-eth2"], 1450)
    assert cmds == ["ip link set dev s1-eth1 mtu 1450",
                    'test "$(cat /sys/class/net/s1-eth1/mtu)" = 1450',
                    "ip link set dev s1-eth2 mtu 1450",
                    'test "$(cat /sys/class/net/s1-eth2/mtu)" = 1450']


def test_docker_refuses_another_mtu_naming_the_key():
    check_mtu(ContentionParams(n=1))
    with pytest.raises(ConfigError, match=r"^topology\.mtu \(parameter mtu\) is 1450: .*"
                                          r"only the Mininet backend sets topology\.mtu$"):
        check_mtu(ContentionParams(n=1, mtu=1450))
