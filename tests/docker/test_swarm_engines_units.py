"""Units of the two-engine swarm check (tests/support/swarm_engines.py): no engine needed."""

from __future__ import annotations

import pytest

from tests.support.swarm_engines import CAPABILITIES, PLACEMENT, missing_capabilities

pytestmark = pytest.mark.unit


def status(bounding: int) -> str:
    return f"Name:\tpython\nCapInh:\t0000000000000000\nCapBnd:\t{bounding:016x}\n"


def test_the_engine_gets_every_capability_but_those_this_root_lacks(tmp_path):
    every = (1 << len(CAPABILITIES)) - 1
    f = tmp_path / "status"
    f.write_text(status(every))
    assert missing_capabilities(str(f)) == []
    # this VM's root: CAP_SYS_RESOURCE (24) is not in the bounding set
    f.write_text(status(0x000001fffeffffff))
    assert missing_capabilities(str(f)) == ["SYS_RESOURCE"]
    f.write_text(status(every & ~(1 << 12) & ~(1 << 40)))
    assert missing_capabilities(str(f)) == ["NET_ADMIN", "CHECKPOINT_RESTORE"]


def test_capability_names_are_the_kernels_by_number():
    assert CAPABILITIES.index("NET_ADMIN") == 12
    assert CAPABILITIES.index("SYS_ADMIN") == 21
    assert CAPABILITIES.index("SYS_RESOURCE") == 24
    assert CAPABILITIES.index("CHECKPOINT_RESTORE") == 40


def test_the_placement_file_puts_only_bulk_on_workers():
    import yaml
    doc = yaml.safe_load(PLACEMENT)
    assert doc["version"] == "3.8"       # docker stack deploy of docker.io 20.10 needs it
    assert doc["services"] == {"bulk": {"deploy": {"placement": {
        "constraints": ["node.role == worker"]}}}}
