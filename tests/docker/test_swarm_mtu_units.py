"""The two-engine check's link MTU (tests/support/swarm_engines.py): no engine needed."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.swarm_engines import VXLAN_OVERHEAD, client_wire_mtu, overlay_mtu_file

pytestmark = pytest.mark.unit


def test_the_overlay_is_made_vxlans_headers_larger_than_the_links():
    doc = yaml.safe_load(overlay_mtu_file(1500))
    assert doc == {"version": "3.8", "networks": {"lan": {"driver_opts": {
        "com.docker.network.driver.mtu": str(1500 + VXLAN_OVERHEAD)}}}}


def test_the_wire_mtu_is_the_client_handlers(tmp_path):
    assert client_wire_mtu(tmp_path) is None
    lines = [{"t": 0.0, "free": 1}, {"t": 0.3, "net": {"device": {"name": "client-eth0",
                                                                  "mtu": 1500}}}]
    (tmp_path / "client.ndjson").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert client_wire_mtu(tmp_path) == 1500
