"""A run's own fidelity (testbed.fidelity): the wake-up lag of the client's real sampler,
the host's real /proc/pressure/cpu, the link's achieved rate, the bounds as scenario keys,
and an invalid run kept but left out of the summary's validity, the claims, the
statistics and the results store."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from testbed import fidelity, results, scenario, stats, store
from testbed.cli import main
from testbed.errors import EnvironmentProblem
from testbed.mm.config import MachineConfig
from testbed.mm.manager import MemoryManager
from testbed.mm.metrics import Metrics
from testbed.report.summary import evidence, summarize
from testbed.schema import SchemaError
from tests.core.test_results import run_folder, summary
from tests.core.test_stats import claims_folder

WORK = ("client: {memory_mb: 16, workloads: [{kind: writer, total_mb: 4}, "
        "{kind: downloader, total_mb: 8}, {kind: downloader, total_mb: 8}]}\n")


def load(tmp_path: Path, text: str = "", overrides: Any = None) -> scenario.Scenario:
    p = tmp_path / "s.yaml"
    p.write_text("name: tiny\n" + WORK + text)
    return scenario.load(p, overrides)


# -- the lag recorder -------------------------------------------------------------------------

def test_lateness_is_measured_from_the_schedule_not_from_the_previous_wakeup():
    # slots every 0.1 s; wake-up 3 comes 0.25 s late, so 4 and 5 are late too (0.15 and
    # 0.05 s): a loop on a fixed schedule catches up, and every late wake-up counts
    times = [0.0, 0.1, 0.2, 0.55, 0.55, 0.55, 0.6]
    got = fidelity.lateness(times, 0.1)
    assert got == pytest.approx([0, 0, 0.25, 0.15, 0.05, 0])
    lag = fidelity.wakeup_lag([{"t": t} for t in times], 0.1, late_ms=100)
    assert (lag.wakeups, lag.max_ms, lag.late) == (6, 250, 2)
    assert lag.late_fraction == pytest.approx(2 / 6)


def test_a_restarted_client_starts_a_new_schedule_and_the_stop_sample_is_left_out():
    # first client: 4 on-schedule samples, then its stop sample 0.04 s after the last;
    # the restarted one counts from 0 again
    times = [0.001, 0.101, 0.201, 0.301, 0.341, 0.002, 0.102, 0.352]
    got = fidelity.lateness(times, 0.1)
    assert got == pytest.approx([0, 0, 0, 0, 0.15])
    assert fidelity.wakeup_lag([{"t": 1.0}], 0.1, 100) is None


def test_the_real_sampler_is_late_exactly_while_its_work_is_held_up():
    mm = MemoryManager.from_config(MachineConfig(memory_mb=16))
    sampler = Metrics(mm, interval_s=0.02)
    sampler.start()
    try:
        time.sleep(0.3)
        with mm.lock:               # a sample needs the lock: the next wake-ups come late
            time.sleep(0.3)
        time.sleep(0.3)
    finally:
        mm.shutdown()
        sampler.join(5)
    assert not sampler.is_alive()
    lag = fidelity.wakeup_lag(list(sampler.samples), 0.02, late_ms=100)
    # the sample that waited for the lock woke on time; the ones after it could not
    assert lag.wakeups >= 30 and 0.2 * 1000 <= lag.max_ms <= 0.6 * 1000
    assert lag.late >= 5
    assert lag.p99_ms >= 100


def test_quantile_is_a_value_that_occurred():
    assert stats.quantile([5, 1, 3, 2, 4], 0.99) == 5
    assert stats.quantile(list(range(1, 201)), 0.99) == 198
    with pytest.raises(ValueError):
        stats.quantile([], 0.5)


# -- the host's CPU pressure ------------------------------------------------------------------

@pytest.mark.skipif(not fidelity.PSI_CPU.exists(), reason="a kernel without PSI")
def test_the_real_pressure_file_is_read_and_its_total_only_grows():
    first = fidelity.read_pressure()
    watch = fidelity.PressureWatch()
    watch.start()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        watch.poll()
    got = watch.finish()
    assert 0 <= first.avg10 <= 100 and first.total_us >= 0
    assert watch.last.total_us >= first.total_us
    assert got["elapsed_s"] >= 0.3 and 0 <= got["some_fraction"] <= 1.1
    assert got["some_avg10_max"] >= 0


def test_a_pressure_file_without_a_some_line_is_named(tmp_path):
    bad = tmp_path / "cpu"
    bad.write_text("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    with pytest.raises(EnvironmentProblem, match=f"{bad}: no 'some"):
        fidelity.read_pressure(bad)
    watch = fidelity.PressureWatch(tmp_path / "absent")
    watch.start()
    watch.poll()
    assert "not available" in watch.finish()["note"]


# -- the bottleneck link ----------------------------------------------------------------------

def rx_samples(mbit: float, seconds: float = 3.0, every: float = 0.1) -> list[dict[str, Any]]:
    n = int(seconds / every)
    return [{"t": round(k * every, 3),
             "net": {"rx": {"received": {"bytes": int(k * every * mbit * 1e6 / 8)}}}}
            for k in range(n + 1)]


def test_the_link_is_judged_on_its_busiest_second_when_the_load_fills_it(tmp_path):
    s = load(tmp_path, "topology: {client_bw_mbit: 20, bulk_hosts: 2}\n")
    full = fidelity.link_rate(rx_samples(20), s)
    assert full["judged"] and full["ratio"] == pytest.approx(1.0, abs=0.01)
    # a slow start and an idle end do not matter: the busiest second does
    slow = rx_samples(12)
    assert fidelity.link_rate(slow, s)["ratio"] == pytest.approx(0.6, abs=0.01)


def test_a_link_never_asked_to_be_busy_is_not_judged(tmp_path):
    none = fidelity.link_rate(rx_samples(1), load(tmp_path, "topology: {bulk_hosts: 0}\n"))
    assert not none["judged"] and "nothing offered" in none["note"]
    capped = load(tmp_path, "topology: {client_bw_mbit: 20, bulk_hosts: 2}\n"
                            "bulk: {rate_mbit: 5}\n")
    got = fidelity.link_rate(rx_samples(10), capped)
    assert not got["judged"] and "offer 10 Mbit/s, under the link's 20" in got["note"]
    short = fidelity.link_rate(rx_samples(20, seconds=0.5), load(tmp_path))
    assert not short["judged"] and "less than a second" in short["note"]
    # 16 MiB of downloads is 3.4 s of a 40 Mbit/s link: too short a load to judge it by
    brief = fidelity.link_rate(rx_samples(30), load(tmp_path, "topology: {client_bw_mbit: 40}\n"))
    assert not brief["judged"] and "3.4 s of the link's rate, under 5 s" in brief["note"]
    flood = load(tmp_path, "topology: {client_bw_mbit: 40}\nbulk: {mode: udp}\n")
    assert fidelity.link_rate(rx_samples(30), flood)["ratio"] == pytest.approx(0.75, abs=0.01)


# -- the bounds -------------------------------------------------------------------------------

def test_the_bounds_have_defaults_and_are_scenario_keys(tmp_path):
    b = load(tmp_path).bounds
    assert (b.max_lag_ms, b.lag_late_ms, b.max_late_fraction, b.min_link_ratio) == \
        (1000.0, 100.0, 0.01, 0.9)
    b = load(tmp_path, "bounds: {max_lag_ms: 50, max_cpu_pressure: 0.5}\n",
             ["bounds.min_link_ratio=null"]).bounds
    assert (b.max_lag_ms, b.max_cpu_pressure, b.min_link_ratio) == (50, 0.5, None)


def test_a_wrong_bound_is_named_with_its_line(tmp_path):
    with pytest.raises(SchemaError) as e:
        load(tmp_path, "bounds:\n  max_late_fraction: 2\n  lag_late_ms: fast\n")
    keys = {(p.line, p.key) for p in e.value.problems}
    assert keys == {(4, "bounds.max_late_fraction"), (5, "bounds.lag_late_ms")}
    assert "s.yaml" in str(e.value)


# -- a run past a bound: invalid, its verdict kept --------------------------------------------

def completed_folder(path: Path, times: list[float], pressure: dict[str, Any]) -> Path:
    """A run folder the client left as a completed run, its samples at ``times``."""
    path.mkdir(parents=True)
    (path / "client-outcome.json").write_text(json.dumps(
        {"verdict": "completed", "t": times[-1], "bytes_written": 4 << 20,
         "bytes_written_back": 4 << 20, "longest_stall_s": 0.0, "stalls": [], "detail": "ok"}))
    (path / "client.ndjson").write_text("".join(
        json.dumps({"t": t, "writeback_bytes": 4 << 20}) + "\n" for t in times))
    (path / "integrity.json").write_text(json.dumps({"bytes_checked": 4 << 20, "mismatches": 0}))
    (path / "hosts.json").write_text(json.dumps({"client": "10.0.0.1"}))
    (path / fidelity.PRESSURE_FILE).write_text(json.dumps(pressure))
    return path


def test_a_run_past_a_bound_keeps_its_verdict_and_is_invalid(tmp_path):
    s = load(tmp_path, "topology: {bulk_hosts: 0}\n")
    calm = {"some_fraction": 0.2, "some_avg10_max": 30.0, "elapsed_s": 5.0}
    on_time = [round(0.1 * k, 3) for k in range(50)]
    good = summarize(completed_folder(tmp_path / "good", on_time, calm), s, 6.0)
    assert (good["verdict"], good["validity"], good["fidelity"]["invalid_by"]) == \
        ("completed", "valid", [])
    # the client stood still for 1.5 s once: the verdict is as measured, the run invalid
    late = on_time[:20] + [round(t + 1.5, 3) for t in on_time[20:]]
    bad = summarize(completed_folder(tmp_path / "bad", late, calm), s, 6.0)
    assert bad["verdict"] == "completed" and bad["validity"] == "invalid"
    assert bad["fidelity"]["lag"]["max_ms"] == pytest.approx(1500)
    (why_max, why_late) = bad["fidelity"]["invalid_by"]
    assert "1500 ms late" in why_max and "bounds.max_lag_ms 1000" in why_max
    assert "bounds.max_late_fraction" in why_late
    assert any(line.startswith("invalid: ") for line in evidence(bad))
    # the scenario may lift the bound, and a bound on the pressure can be asked for
    lifted = load(tmp_path, "topology: {bulk_hosts: 0}\nbounds: {max_lag_ms: null, "
                            "max_late_fraction: null, max_cpu_pressure: 0.1}\n")
    got = summarize(tmp_path / "bad", lifted, 6.0)
    assert got["fidelity"]["invalid_by"] == [
        "some task waited for a CPU 20% of the run (/proc/pressure/cpu; "
        "bounds.max_cpu_pressure 0.1)"]


# -- nothing counts an invalid run ------------------------------------------------------------

def mark_invalid(base: Path, label_prefix: str, how_many: int) -> None:
    entries = json.loads((base / "runs.json").read_text())["runs"]
    done = 0
    for entry in entries:
        if entry["label"].startswith(label_prefix) and done < how_many:
            p = base / entry["dir"] / "summary.json"
            s = json.loads(p.read_text())
            # starved runs that reached the opposite verdict: counted, they would refute
            s.update(verdict="completed", validity="invalid",
                     fidelity={"lag": {"max_ms": 2500.0}, "invalid_by": ["starved"]})
            p.write_text(json.dumps(s))
            done += 1


def test_the_claims_and_the_statistics_leave_invalid_runs_out(tmp_path, capsys):
    base = claims_folder(tmp_path / "claims")
    mark_invalid(base, "none#", 3)
    mark_invalid(base, "phillips-2005#", 2)
    assert main(["claims", "--from", str(base)]) == 0
    out = capsys.readouterr().out
    doc = json.loads((base / "claims.json").read_text())
    assert doc["invalid"]["none"] == 3 and doc["invalid"]["gorman-3.6"] == 0
    got = {c["claim"]: c for c in doc["claims"]}
    none = got["none locks up"]
    assert none["figures"] == ("7 of 7 runs locked up; rate >= 65% at 95% "
                               "(3 invalid runs left out)")
    assert none["supported"] and none["invalid"] == 3
    other = got["the threshold drops fewer frames of other traffic than phillips-2005"]
    assert other["figures"].endswith("(2 invalid runs left out)")
    assert "invalid runs left out" in out
    groups = {g["group"]: g for g in json.loads((base / "stats.json").read_text())["groups"]}
    g = groups["contention (none)"]
    assert (g["runs"], g["invalid"], g["verdicts"]) == (7, 3, {"lockup": 7})
    table = results.stats_table(results.batch_groups(results.open_batch(base),
                                                     results.open_batch(base).runs()),
                                results.open_batch(base).runs())
    row = next(r for r in table.rows if r[0] == "invalid runs, left out")
    assert row[table.header.index("contention (none)")] == "3"


def test_claims_with_every_run_valid_say_nothing_of_invalid_runs(tmp_path):
    base = claims_folder(tmp_path / "claims")
    assert main(["claims", "--from", str(base)]) == 0
    doc = json.loads((base / "claims.json").read_text())
    assert not any("invalid" in c["figures"] for c in doc["claims"])


# -- the results store ------------------------------------------------------------------------

def test_the_store_keeps_the_validity_and_the_fidelity_figures(tmp_path):
    s = summary()
    s.update(validity="invalid", fidelity={"lag": {"max_ms": 1500.0, "p99_ms": 900.0,
                                                    "late_fraction": 0.3},
                                           "link": {"ratio": 0.5, "judged": True},
                                           "cpu_pressure": {"some_fraction": 0.95}})
    db = tmp_path / "results.db"
    assert store.record_run(run_folder(tmp_path / "r", s), "run", db=db)
    assert store.record_run(run_folder(tmp_path / "old", summary()), "run", db=db)
    with store.Store.open(db) as st:
        bad, old = st.query()
    assert bad.validity == "invalid" and old.validity is None
    assert bad.figures["lag_max_ms"] == 1500 and bad.figures["link_ratio"] == 0.5
    assert bad.figures["cpu_pressure_some"] == 0.95 and "lag_max_ms" not in old.figures


def test_a_version_1_database_is_upgraded_with_a_validity_column(tmp_path):
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as c:
        c.executescript(store.SCHEMA_V1)
        c.execute("INSERT INTO runs (path, label, verdict) VALUES ('/x', 'x', 'lockup')")
        c.execute("PRAGMA user_version = 1")
    with store.Store.open(db) as st:
        (row,) = st.query()
        assert st.conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert row.verdict == "lockup" and row.validity is None


def test_tables_and_queries_mark_and_find_invalid_runs(tmp_path, capsys):
    bad = summary()
    bad.update(validity="invalid", fidelity={"lag": {"max_ms": 1500.0}})
    db = tmp_path / "results.db"
    store.record_run(run_folder(tmp_path / "bad", bad), "run", db=db)
    store.record_run(run_folder(tmp_path / "good", {**summary(), "validity": "valid"}), "run",
                     db=db)
    assert main(["results", "--db", str(db), "--validity", "invalid"]) == 0
    out = capsys.readouterr().out
    assert "completed (invalid)" in out and "1 runs in" in out
    assert main(["results", "--db", str(db), "--validity", "valid"]) == 0
    out = capsys.readouterr().out
    assert "(invalid)" not in out and "1 runs in" in out
    rows = results.table([results.open_run(tmp_path / "bad"), results.open_run(tmp_path / "good")])
    assert [r[rows.verdict_column] for r in rows.rows] == ["completed (invalid)", "completed"]
