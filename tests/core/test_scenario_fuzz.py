"""Malformed scenario files end in a typed error that names the place, never a traceback.

First the four cases issue 15 found by hand (an empty file, a negative ``memory_mb``
reported late, an absurd ``memory_mb`` accepted, a scenario with no workload). Then
Hypothesis: each generated file is a valid scenario broken on purpose in one or more
ways (wrong types, unknown keys, numbers past a declared bound, deep nesting, broken
anchors and aliases, tags no reader knows, keys that are not names, duplicate keys, a
document that is not a mapping, several documents, binary junk), or raw text and bytes.
Every one must raise :class:`~testbed.errors.TestbedError`; a :class:`SchemaError` must
name the file on every problem and a line on every problem from a file; the mistake put
in on purpose must be among the problems, at its key. Loading is all that happens:
starting a process or opening a socket fails the test.

``make fuzz`` (``tests/support/fuzz.py``) runs the same cases 10,000 at a time and
prints the counts; here a few hundred run with every ``make test``.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from testbed import scenario
from testbed.schema import SchemaError
from tests.support import malformed

EXAMPLES = 400


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- the four cases of the issue -----------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "---\n"])
def test_an_empty_file_is_a_schema_error_naming_the_file(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    (pr,) = e.value.problems
    assert pr.file == str(p) and "empty" in pr.message
    assert str(e.value).startswith(f"{p}: the file is empty")


def test_a_negative_memory_is_reported_with_every_other_mistake(tmp_path):
    p = write(tmp_path, """name: s
duration_s: 50
deadline_s: 10
topology: {colour: blue}
client:
  memory_mb: -64
  policy: gorman-36
  workloads: []
bulk: {mode: tcp, udp_size: 9000}
""")
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    got = {(pr.line, pr.key) for pr in e.value.problems}
    assert got == {(4, "topology.colour"), (6, "client.memory_mb"), (7, "client.policy"),
                   (8, "client.workloads"), (9, "bulk.udp_size"), (3, "deadline_s")}


def test_a_rule_that_reads_a_wrong_field_is_skipped_not_misled(tmp_path):
    # min_free_kbytes' rule compares with memory_mb: with memory_mb wrong it says nothing
    p = write(tmp_path, "name: s\nclient:\n  memory_mb: lots\n  min_free_kbytes: 100000\n"
                        "  workloads: [{kind: writer}]\n")
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    assert [(pr.line, pr.key) for pr in e.value.problems] == [(3, "client.memory_mb")]


def test_memory_has_an_upper_bound(tmp_path):
    p = write(tmp_path, "name: s\nclient:\n  memory_mb: 100000000\n  workloads: [{kind: writer}]\n")
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    (pr,) = e.value.problems
    assert (pr.line, pr.key) == (3, "client.memory_mb")
    assert pr.message == "100000000 is above the maximum 16384"
    ok = write(tmp_path, "name: s\nclient:\n  memory_mb: 16384\n  workloads: [{kind: writer}]\n",
               "ok.yaml")
    assert scenario.load(ok).client.memory_mb == 16384


@pytest.mark.parametrize("text,line", [
    ("name: s\n", 1),                                        # no client section at all
    ("name: s\nclient:\n  memory_mb: 32\n", 3),              # a client, no workloads
    ("name: s\nclient:\n  memory_mb: 32\n  workloads: []\n", 4),   # an empty list
])
def test_a_scenario_without_workloads_is_refused(tmp_path, text, line):
    p = write(tmp_path, text)
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    (pr,) = e.value.problems
    assert (pr.file, pr.line, pr.key) == (str(p), line, "client.workloads")
    assert "at least one workload" in pr.message


def test_a_variant_that_clears_the_workloads_is_refused(tmp_path):
    write(tmp_path, "name: b\nclient:\n  workloads: [{kind: writer}]\n", "base.yaml")
    v = write(tmp_path, "extends: base.yaml\nname: v\nclient:\n  workloads: []\n", "v.yaml")
    with pytest.raises(SchemaError, match=r"v.yaml:4: client.workloads: a scenario needs"):
        scenario.load(v)
    with pytest.raises(SchemaError, match=r"--set client.workloads: a scenario needs"):
        scenario.load(tmp_path / "base.yaml", ["client.workloads=[]"])


# -- what the reader alone cannot take -------------------------------------------------

@pytest.mark.parametrize("data,line,words", [
    (b"name: x\xff\n", 1, "invalid start byte"),
    (b"name: x\nclient: \x00\n", 2, "special characters"),
    (b"name: *nowhere\n", 1, "undefined alias"),
    (b"a: &x 1\nb: &x 2\n", 2, "duplicate anchor"),
    (b"name: a\n---\nname: b\n", 2, "a single document"),
    (b"name: x\nclient: " + b"[" * 5000 + b"]" * 5000 + b"\n", 2, "nested too deeply"),
    (b"name: x\nclient: &c {workloads: [*c]}\n", 2, "a cycle"),
    (b"name: !!bool maybe\n", 1, "cannot read the value 'maybe'"),
    (b"name: !!python/name:os.system x\n", 1, "cannot read the value"),
    (b"name: x\n? [a, b]\n: 1\n", 2, "a key must be a plain name"),
    (b"name: x\nname: y\n", 2, "given twice (first on line 1)"),
])
def test_unreadable_files_name_the_line(tmp_path, data, line, words):
    p = tmp_path / "s.yaml"
    p.write_bytes(data)
    with pytest.raises(SchemaError) as e:
        scenario.load(p)
    assert any(pr.file == str(p) and pr.line == line and words in pr.message
               for pr in e.value.problems), str(e.value)


@pytest.mark.parametrize("value", ["&a [*a]", "#only a comment", "!!int abc", "[" * 3000])
def test_unreadable_set_values_are_config_errors(tmp_path, value):
    p = write(tmp_path, "name: s\nclient:\n  workloads: [{kind: writer}]\n")
    with pytest.raises(scenario.ConfigError, match=r"--set client.policy: .* is not a valid value"):
        scenario.load(p, [f"client.policy={value}"])


# -- Hypothesis ---------------------------------------------------------------------------

@pytest.fixture
def nothing_starts(monkeypatch):
    """Loading a scenario must not start a process or open a socket."""
    def refuse(*args, **kwargs):
        raise AssertionError("loading a scenario started something")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(socket.socket, "__init__", refuse)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@FUZZ
@given(case=malformed.broken_scenarios())
def test_broken_scenarios_end_in_a_typed_error_at_their_place(tmp_path, nothing_starts, case):
    outcome = malformed.load_case(tmp_path / "case.yaml", case)
    assert outcome.kind == "typed", outcome.detail


@FUZZ
@given(data=malformed.junk())
def test_junk_ends_in_a_typed_error_or_a_scenario(tmp_path, nothing_starts, data):
    outcome = malformed.load_junk(tmp_path / "junk.yaml", data)
    assert outcome.kind in ("typed", "accepted"), outcome.detail
