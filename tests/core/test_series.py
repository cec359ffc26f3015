"""Series files (``testbed sweep --series``), the scaling series and the gigabit scenario.

A series file is read by the one checker: every mistake is a SchemaError naming the
series file, the line and the key, and a CLI error of one line that creates nothing.
The built-in scaling series is checked against the contention scenario it scales.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import results, scenario, series
from testbed.cli import main
from testbed.commands.run import sweep_points
from testbed.report import build_compare_report
from testbed.schema import SchemaError

from tests.core.test_results import batch_folder, summary

SCALE = scenario.SCENARIO_DIR / "series" / "scale.yaml"
KEYS = """keys:
  - client.memory_mb
  - topology.client_bw_mbit
  - client.workloads[1:].rcvbuf_kb
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def problems_of(path: Path, base: str = "contention") -> list[tuple[int, str, str]]:
    with pytest.raises(SchemaError) as exc:
        series.scenarios(series.read(path), scenario.load(base))
    assert all(p.file == str(path) for p in exc.value.problems)
    return [(p.line, p.key, p.message) for p in exc.value.problems]


# -- the built-in series and scenario -------------------------------------------------------

def test_the_scaling_series_is_the_contention_load_at_its_first_point_and_in_proportion():
    s = series.read(SCALE)
    base = scenario.load("contention")
    built = series.scenarios(s, base)
    assert s.knob == "client.memory_mb"
    assert [p.value for p, _ in built] == [32, 64, 128, 256, 512]
    assert built[0][1].to_dict() == base.to_dict()      # x1 is contention.yaml itself
    for point, sc in built:
        k = point.value // 32
        assert sc.topology.client_bw_mbit == 20 * k
        assert sc.topology.bw_mbit == min(100 * k, 1000)    # ContentionParams' maximum
        writer, *downloads = sc.client.workloads
        assert (writer.total_mb, writer.rate_mbps) == (40 * k, 16 * k)
        assert all((d.total_mb, d.rcvbuf_kb) == (6 * k, 2048 * k) for d in downloads)
        assert sc.target.lun_mb == 256 * k
        # what does not scale: the bulk hosts, the expectations, the timeouts
        assert sc.topology.bulk_hosts == 3 and sc.expect_by_policy == base.expect_by_policy
        assert sc.deadline_s == base.deadline_s and sc.initiator == base.initiator


def test_the_gigabit_scenario_is_contention_on_a_gigabit_link_and_256_mib():
    sc, base = scenario.load("gigabit"), scenario.load("contention")
    assert (sc.name, sc.client.memory_mb, sc.topology.client_bw_mbit) == ("gigabit", 256, 1000)
    assert sc.expect_by_policy == base.expect_by_policy and sc.expect == base.expect
    writer, *downloads = sc.client.workloads
    assert writer.kind == "mmap_writer" and writer.total_mb == 8 * 40
    assert [d.rcvbuf_kb for d in downloads] == [8 * 2048] * 3
    # the downloads last as long at the link's rate as contention's (7.5 s), so the run
    # judges the link's achieved rate (testbed.fidelity.MIN_BUSY_S)
    secs = sum(d.total_mb for d in downloads) * 8 * 2**20 / (sc.topology.client_bw_mbit * 1e6)
    assert secs == pytest.approx(sum(d.total_mb for d in base.client.workloads[1:]) * 8
                                 * 2**20 / (base.topology.client_bw_mbit * 1e6))
    assert sc.target.lun_mb >= sum(w.total_mb for w in sc.client.workloads)
    assert sc.bounds == base.bounds         # no bound loosened for the bigger load


# -- sweep points ------------------------------------------------------------------------------

def test_a_series_with_a_param_is_a_grid_the_series_first():
    jobs = sweep_points("contention", [("client.policy", ["none", "gorman-3.6"])], SCALE, [])
    assert len(jobs) == 10
    assert jobs[0].label == "client.memory_mb=32 client.policy=none"
    assert list(jobs[0].params.items()) == [("client.memory_mb", "32"),
                                            ("client.policy", "none")]
    got = {(j.params["client.memory_mb"], j.scenario.client.policy,
            j.scenario.client.memory_mb) for j in jobs}
    assert got == {(str(m), p, m) for m in (32, 64, 128, 256, 512)
                   for p in ("none", "gorman-3.6")}


def test_a_param_the_series_sets_is_refused(tmp_path):
    with pytest.raises(Exception, match="--param client.memory_mb: the series .* sets this key"):
        sweep_points("contention", [("client.memory_mb", ["16"])], SCALE, [])


@pytest.mark.cli
@pytest.mark.parametrize("extra, message", [
    (["--series", "MISSING"], "cannot read"),
    (["--series", "BAD"], "s.yaml:7: points[1][0]: client.memory_mb=2: "
                          "2 is below the minimum 4"),
    (["--series", "GOOD", "--param", "client.policy=none", "--param", "bulk.mode=tcp"],
     "a sweep takes one or two parameters (a --series is one)"),
    ([], "give --param KEY=V1,V2 (once or twice) or --series FILE")])
def test_the_cli_refuses_a_bad_series_in_one_line_and_creates_nothing(extra, message, tmp_path,
                                                                     capsys):
    bad = write(tmp_path, KEYS + "points:\n  - [32, 20, 2048]\n  - [2, 20, 2048]\n")
    names = {"MISSING": str(tmp_path / "nope.yaml"), "BAD": str(bad), "GOOD": str(SCALE)}
    out = tmp_path / "out"
    argv = ["sweep", "contention"] + [names.get(a, a) for a in extra] + ["--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


# -- bad series files: file, line, key -----------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("- a list\n", [(1, "", "a series file is a mapping")]),
    (KEYS + "points:\n  - [32, 20]\n", [(6, "points[0]", "has 2 values for 3 keys")]),
    (KEYS + "points:\n  - [32, 20, 1]\n  - [32, 40, 2]\n",
     [(6, "points", "the knob (client.memory_mb) takes a value twice")]),
    ("keys: []\npoints: []\n", [(1, "keys", "give at least one key"),
                                (2, "points", "give at least one point")]),
    ("keys: [client.memory_mb, client.memory_mb]\npoints: [[32, 32]]\n",
     [(1, "keys", "a key is given twice: client.memory_mb")]),
    (KEYS + "points:\n  - [32, [20], 1]\n", [(6, "points[0]", "each value is a number")]),
    (KEYS + "points: [[32, 20, 1]]\nextra: 1\n", [(6, "extra", "unknown key")]),
])
def test_the_file_s_own_shape(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SchemaError) as exc:
        series.read(path)
    got = [(p.line, p.key, p.message) for p in exc.value.problems]
    assert len(got) == len(expected)
    for (line, key, message), (gl, gk, gm) in zip(expected, got):
        assert (gl, gk) == (line, key) and gm.startswith(message)


def test_a_key_the_scenario_lacks_is_named_at_the_keys_line(tmp_path):
    path = write(tmp_path, "# a comment\nkeys: [client.memory_mb, client.nope]\n"
                           "points: [[32, 1]]\n")
    assert problems_of(path) == [(2, "keys", "client.nope: no such key in the scenario "
                                             "(scenario contention)")]


def test_an_unreadable_key_is_named_at_the_keys_line(tmp_path):
    path = write(tmp_path, "keys: [client.memory_mb, 'client..x']\npoints: [[32, 1]]\n")
    ((line, key, message),) = problems_of(path)
    assert (line, key) == (1, "keys") and message.startswith("cannot read this key")


def test_every_bad_value_is_named_at_its_cell_with_the_scenario_s_own_message(tmp_path):
    path = write(tmp_path, KEYS + "points:\n"
                                  "  - [32, 20, 2048]\n"
                                  "  - [64,\n"
                                  "     0, -1]\n"
                                  "  - [3, 20, 2048]\n")
    assert problems_of(path) == [
        (8, "points[1][1]", "client.memory_mb=64: topology.client_bw_mbit=0: "
                            "must be greater than 0, got 0.0"),
        # a slice's value is checked on each element it sets, and named once
        (8, "points[1][2]", "client.memory_mb=64: client.workloads[1:].rcvbuf_kb=-1: "
                            "-1 is below the minimum 0"),
        (9, "points[2][0]", "client.memory_mb=3: 3 is below the minimum 4")]


def test_a_rule_across_keys_is_named_at_the_row(tmp_path):
    path = write(tmp_path, "keys: [client.memory_mb, client.min_free_kbytes]\n"
                           "points:\n  - [32, 128]\n  - [4, 1024]\n")
    ((line, key, message),) = problems_of(path)
    assert (line, key) == (4, "points[1][1]") and "leaves too little of 4 MiB" in message


# -- the series' report ------------------------------------------------------------------------

def test_a_sweep_report_has_the_table_by_point_and_the_time_plot(tmp_path):
    s = [summary("lockup", policy="none", lockup_t=48.0), summary("completed"),
         summary("lockup", policy="none", lockup_t=49.0), summary("completed")]
    s[3]["duration_s"], s[3]["validity"] = 70.0, "invalid"
    base = batch_folder(tmp_path / "sweep", [
        (f"m={m} p={p}", {"client.memory_mb": m, "client.policy": p}, x)
        for (m, p), x in zip([("32", "none"), ("32", "gorman-3.6"),
                              ("64", "none"), ("64", "gorman-3.6")], s)], title="t: sweep")
    report = build_compare_report(base)
    table = results.sweep_table(results.open_batch(base).runs(),
                                results.open_batch(base).param_keys)
    assert table.header == ["client.memory_mb", "client.policy", "policy", "verdict",
                            "time to verdict (s)", "run's wall time (s)", "validity"]
    assert table.rows[0] == ["32", "none", "none", "lockup", "48.0", "20.0", "-"]
    assert table.rows[3] == ["64", "gorman-3.6", "gorman-3.6", "completed", "12.3", "70.0",
                             "invalid"]
    assert table.verdict_column == 3
    page = report.read_text()
    assert "By grid point" in page and "sweep-time.png" in page
    assert (base / "sweep-time.png").stat().st_size > 0
