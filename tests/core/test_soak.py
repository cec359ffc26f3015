"""The soak's fault draws: every scenario it would run is one the schema accepts."""

from __future__ import annotations

import random

import yaml

from testbed import scenario as scenario_mod
from tests.support.soak import KINDS, draw_fault, scenario


def test_every_drawn_fault_makes_a_valid_scenario(tmp_path):
    rng = random.Random(7)
    seen = set()
    for i in range(60):
        fault = draw_fault(rng)
        seen.add(fault["kind"])
        path = tmp_path / f"soak-{i}.yaml"
        path.write_text(yaml.safe_dump(scenario(fault, i), sort_keys=False))
        sc = scenario_mod.load(path)            # raises SchemaError naming file and key
        assert sc.client.policy == "gorman-3.6"
        assert [f.kind for f in sc.faults] == [fault["kind"]]
    assert seen == set(KINDS)


def test_the_draws_follow_the_seed():
    def draws(seed: int) -> list[dict]:
        rng = random.Random(seed)
        return [draw_fault(rng) for _ in range(10)]
    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
