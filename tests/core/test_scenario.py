"""Scenario files: defaults, extends, --set, and errors that name file, line and key."""

import dataclasses
from pathlib import Path

import pytest

from testbed import scenario, schema
from testbed.backends.base import ContentionParams
from testbed.errors import ConfigError
from testbed.schema import SchemaError


# Every scenario needs a workload (a run without one would do nothing).
WORK = "client:\n  workloads: [{kind: writer}]\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(exc: SchemaError) -> list[tuple[int, str]]:
    return [(p.line, p.key) for p in exc.problems]


def test_smallest_scenario_gets_every_default(tmp_path):
    s = scenario.load(write(tmp_path, "s.yaml", "name: tiny\n" + WORK))
    assert s.name == "tiny" and s.expect == "completed"
    assert s.topology.bulk_hosts == 3 and s.client.policy == "gorman-3.6"
    assert s.topology.params().n == 3


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", """name: base
client:
  memory_mb: 32
  policy: none
  workloads:
    - {kind: writer, total_mb: 8}
    - {kind: downloader}
topology: {bulk_hosts: 4}
""")
    v = scenario.load(write(tmp_path, "v.yaml", """extends: base.yaml
name: variant
client:
  policy: phillips-2005
  workloads: [{kind: mmap_writer, total_mb: 4}]
"""))
    assert v.name == "variant" and v.client.memory_mb == 32
    assert v.client.policy == "phillips-2005" and v.topology.bulk_hosts == 4
    assert [w.kind for w in v.client.workloads] == ["mmap_writer"]


def test_overrides_apply_last_and_are_typed(tmp_path):
    p = write(tmp_path, "s.yaml", "name: s\n" + WORK)
    s = scenario.load(p, ["client.policy=none", "topology.bulk_hosts=5", "capture=true"])
    assert (s.client.policy, s.topology.bulk_hosts, s.capture) == ("none", 5, True)
    with pytest.raises(SchemaError) as e:
        scenario.load(p, ["topology.bulk_hosts=many"])
    assert str(e.value) == "--set topology.bulk_hosts: expected int, got str 'many'"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        scenario.load(p, ["client.policy"])


def test_every_mistake_is_named_with_file_line_and_key(tmp_path):
    p = write(tmp_path, "bad.yaml", """name: bad
topology:
  bulk_hosts: -1
  colour: blue
client:
  memory_mb: lots
  workloads:
    - {kind: writer, rate_mbps: -3}
target:
  chap: {user: u, secret: short}
bulk: {mode: udpp}
""")
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    got = problems(e.value)
    assert (3, "topology.bulk_hosts") in got
    assert (4, "topology.colour") in got
    assert (6, "client.memory_mb") in got
    assert (8, "client.workloads[0].rate_mbps") in got
    assert (10, "target.chap.secret") in got
    assert (11, "bulk.mode") in got
    assert all(pr.file == str(p) for pr in e.value.problems)
    assert "did you mean 'udp'" in str(e.value)


def test_policy_typo_is_named(tmp_path):
    p = write(tmp_path, "s.yaml", "name: s\nclient:\n  policy: philips-2005\n  workloads: [{kind: writer}]\n")
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    assert problems(e.value) == [(3, "client.policy")]
    assert "phillips-2005" in str(e.value)


def test_error_in_base_file_names_the_base(tmp_path):
    base = write(tmp_path, "base.yaml", "name: b\nduration_s: soon\n" + WORK)
    v = write(tmp_path, "v.yaml", "extends: base.yaml\nname: v\n")
    with pytest.raises(SchemaError) as e:
        scenario.load(v)
    (pr,) = e.value.problems
    assert (pr.file, pr.line, pr.key) == (str(base.resolve()), 2, "duration_s")


def test_extends_cycles_and_missing_files(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="cycle"):
        scenario.load(tmp_path / "a.yaml")
    with pytest.raises(SchemaError, match="no such file"):
        scenario.load(write(tmp_path, "c.yaml", "extends: nope.yaml\nname: c\n"))


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(SchemaError, match=r"bad.yaml:2: not valid YAML"):
        scenario.load(write(tmp_path, "bad.yaml", "name: x\n  - : [\n"))
    with pytest.raises(SchemaError, match="a scenario is a mapping"):
        scenario.load(write(tmp_path, "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match="no such scenario"):
        scenario.load(tmp_path / "missing.yaml")


def test_deadline_shorter_than_duration(tmp_path):
    with pytest.raises(SchemaError, match="deadline_s"):
        scenario.load(write(tmp_path, "s.yaml", "name: s\nduration_s: 60\ndeadline_s: 30\n"))


def test_built_in_scenarios_all_load():
    files = sorted(scenario.SCENARIO_DIR.glob("*.yaml"))
    for f in files:
        scenario.load(f)


def test_expect_by_policy_overrides_expect(tmp_path):
    p = write(tmp_path, "s.yaml", """name: s
expect: completed
expect_by_policy: {none: lockup, reserve-only: lockup}
client: {policy: none, workloads: [{kind: writer}]}
""")
    assert scenario.load(p).expected == "lockup"
    assert scenario.load(p, ["client.policy=gorman-3.6"]).expected == "completed"
    bad = write(tmp_path, "b.yaml", "name: b\nexpect_by_policy: {nnoe: lockup, gorman-3.6: fine}\n" + WORK)
    with pytest.raises(SchemaError) as e:
        scenario.load(bad)
    assert [pr.key for pr in e.value.problems] == ["expect_by_policy", "expect_by_policy.gorman-3.6"]


def test_an_empty_mapping_clears_the_base(tmp_path):
    write(tmp_path, "base.yaml", "name: b\nexpect_by_policy: {none: lockup}\n" + WORK)
    v = scenario.load(write(tmp_path, "v.yaml", "extends: base.yaml\nname: v\nexpect_by_policy: {}\n"))
    assert v.expect_by_policy == {}


def test_trunk_links_are_scenario_keys_checked_where_the_topology_declares_them(tmp_path):
    bad = write(tmp_path, "bad.yaml", "name: t\ntopology:\n  bulk_hosts: 2\n  trunk_loss_pct: 150\n" + WORK)
    with pytest.raises(SchemaError) as e:
        scenario.load(bad)
    (pr,) = e.value.problems
    assert (pr.file, pr.line, pr.key) == (str(bad), 4, "topology.trunk_loss_pct")
    assert pr.message == "150.0 is above the maximum 100"
    assert str(pr) == f"{bad}:4: topology.trunk_loss_pct: 150.0 is above the maximum 100"
    good = write(tmp_path, "good.yaml", "name: t\ntopology: {trunk_delay_ms: 5, trunk_loss_pct: 0.5}\n" + WORK)
    params = scenario.load(good).topology.params()
    assert (params.trunk_delay, params.trunk_loss) == (5.0, 0.5)
    assert scenario.load(write(tmp_path, "s.yaml", "name: s\n" + WORK)).topology.params().trunk_loss == 0.0


def test_every_topology_parameter_is_a_scenario_key():
    names = {f.name for f in dataclasses.fields(ContentionParams)}
    assert set(schema.mirrored(scenario.TopologySection())) == names
