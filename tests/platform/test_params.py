"""Topology parameters: checked before anything exists, one-line errors naming the parameter."""

import subprocess

import pytest

from testbed.backends.base import ContentionParams, make_params
from testbed.errors import ConfigError
from topologies.contention import ContentionTopo, host_ip, host_mac, topos

from .conftest import TESTBED


@pytest.mark.parametrize("values, name", [
    ({"n": -1}, "n"),
    ({"n": 65}, "n"),
    ({"n": 2.5}, "n"),
    ({"n": True}, "n"),
    ({"bw": 0}, "bw"),
    ({"bw_client": 0}, "bw_client"),
    ({"bw": 1001}, "bw"),
    ({"bw": float("nan")}, "bw"),
    ({"bw": "fast"}, "bw"),
    ({"delay": -1}, "delay"),
    ({"loss": 101}, "loss"),
    ({"queue": 0}, "queue"),
    ({"trunk_loss": -0.1}, "trunk_loss"),
])
def test_bad_value_names_the_parameter(values, name):
    with pytest.raises(ConfigError) as err:
        make_params("contention", **values)
    msg = str(err.value)
    assert f"parameter {name} " in msg and "\n" not in msg


def test_every_bad_parameter_is_named_on_one_line():
    with pytest.raises(ConfigError) as err:
        make_params("contention", n=70, bw_client=0, bw=0)
    assert str(err.value) == ("contention: parameter n must be at least 0 and at most 64, got 70; "
                              "parameter bw_client must be greater than 0 and at most 1000, got 0; "
                              "parameter bw must be greater than 0 and at most 1000, got 0")


def test_unknown_topology_and_parameter():
    with pytest.raises(ConfigError, match=r"topology 'ring' is unknown \(known: contention\)"):
        make_params("ring", n=1)
    with pytest.raises(ConfigError, match=r"unknown parameter 'bulk'"):
        make_params("contention", bulk=1)


def test_good_params_build_the_topology():
    p = make_params("contention", n=3, bw_client=5, bw=50, delay=10, loss=1, queue=50)
    assert p == ContentionParams(3, 5, 50, 10, 1, 50)
    topo = p.topo()
    assert sorted(topo.hosts()) == ["bulk1", "bulk2", "bulk3", "client", "target"]
    assert topo.switches() == ["s1"]
    info = topo.linkInfo("client", "s1")
    assert (info["bw"], info["delay"], info["loss"], info["max_queue_size"]) == (5, "10ms", 1, 50)
    assert info["port2"] == 1 and topo.linkInfo("bulk3", "s1")["port2"] == 5
    assert topo.linkInfo("target", "s1")["bw"] == 50 and "delay" not in topo.linkInfo("target", "s1")
    assert topo.nodeInfo("bulk3")["ip"] == "10.0.0.13/24"
    assert topos["contention"] is ContentionTopo


def test_fixed_addresses():
    assert (host_ip("client"), host_ip("target"), host_ip("bulk64")) == \
        ("10.0.0.1", "10.0.0.2", "10.0.0.74")
    assert host_mac("bulk1") == "02:00:00:00:00:0b"
    with pytest.raises(ValueError):
        host_ip("router")


@pytest.mark.cli
@pytest.mark.parametrize("argv, needle", [
    (["up", "contention", "--bulk", "-1"], "parameter n "),
    (["up", "contention", "--bw", "0"], "parameter bw "),
    (["up", "contention", "--client-bw", "0"], "parameter bw_client "),
    (["up", "mesh"], "topology 'mesh' is unknown"),
])
def test_cli_rejects_bad_parameters_and_creates_nothing(tmp_path, argv, needle):
    r = subprocess.run(TESTBED + argv + ["--runs-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("testbed: error: ") and needle in lines[0]
    assert not (tmp_path / "runs").exists()    # no run was started: nothing was created
