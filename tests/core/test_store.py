"""The results store (testbed.store) and ``testbed results``, on real small run folders.

The folders are written as ``testbed run | compare | sweep`` leave them (the helpers of
test_results.py, with the run's samples, bulk flows and timings added); every check
compares what the database or an export says with what testbed.results reads from the
folders, the unit of truth.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from testbed import results, store
from testbed.cli import main
from testbed.commands import run as run_cmd
from testbed.errors import ConfigError
from testbed.orchestrator import RunResult
from tests.core.test_results import batch_folder, run_folder, summary


def full_summary(verdict: Optional[str] = "completed", policy: str = "gorman-3.6",
                 t: float = 30.0, other: int = 5, scenario: str = "tiny") -> dict[str, Any]:
    """A summary with bulk flows, a duration and the orchestrator's timings."""
    s = summary(verdict, policy, lockup_t=t if verdict == "lockup" else None, wb_time=t,
                other=other, expected="completed")
    s["scenario"] = scenario
    s["duration_s"] = t + 2.5
    s["goodput"] = {"bulk1": {"bytes": 10**6, "mbit_s": 2.5, "longest_stall_s": 4.0,
                              "retrans": 3, "rto": 2, "rto_time_s": 0.4}}
    s["timings"] = {"bring_up": 0.3, "start_nodes": 0.4, "run": t + 1, "verify": 0.2}
    return s


def with_samples(path: Path, free: list[int]) -> Path:
    """client.ndjson with one sample per free-page count (lowest_free_pages reads it)."""
    (path / "client.ndjson").write_text(
        "".join(json.dumps({"t": i * 0.1, "free": f}) + "\n" for i, f in enumerate(free)))
    return path


def sweep_folder(base: Path) -> Path:
    """A sweep over client.reserve_pages x topology.bulk_hosts, one run without a verdict."""
    runs = []
    for pages, bulk, verdict, t in (("0", "1", "lockup", 5.0), ("0", "3", "lockup", 4.0),
                                    ("100", "1", "completed", 31.0), ("100", "3", None, 12.0)):
        runs.append((f"client.reserve_pages={pages} topology.bulk_hosts={bulk}",
                     {"client.reserve_pages": pages, "topology.bulk_hosts": bulk},
                     full_summary(verdict, "phillips-2005", t, other=int(t * 10))))
    batch_folder(base, runs, title="tiny: sweep over client.reserve_pages x topology.bulk_hosts")
    for i, free in enumerate(([300, 40, 90], [200, 12], [500, 300], [400])):
        with_samples(base / f"run{i}", free)
    return base


def record_batch(base: Path, db: Path, command: str = "sweep") -> None:
    batch = results.open_batch(base)
    for e in batch.entries:
        store.record_run(batch.run_path(e), command, e.label, e.params, batch=base, db=db)


def query(db: Path, **kw: Any) -> list[store.Record]:
    with store.Store.open(db, create=False) as st:
        return st.query(store.Query(**kw))


# -- recording ---------------------------------------------------------------------------------

def test_a_run_is_recorded_with_its_figures_provenance_and_timings(tmp_path, capsys):
    db = tmp_path / "runs" / "results.db"
    folder = with_samples(run_folder(tmp_path / "runs" / "r1", full_summary("lockup", "none", 5.7)),
                          [900, 120, 47, 60])
    assert store.record_run(folder, "run", db=db)
    assert capsys.readouterr().err == ""
    (rec,) = query(db)
    run = results.read_run(folder)
    assert run is not None
    assert (rec.path, rec.batch, rec.command, rec.label) == (
        str(folder.resolve()), None, "run", "tiny")
    assert (rec.scenario, rec.policy, rec.verdict, rec.expected, rec.status) == (
        "tiny", "none", "lockup", "completed", "finished")
    # every figure is the one testbed.results computes from the folder
    for f in results.figures([run]):
        assert rec.figures.get(f.key) == pytest.approx(f.value(run)), f.key
    assert rec.figures["lowest_free_pages"] == 47 and rec.figures["goodput_bulk1"] == 2.5
    assert rec.timings == {"bring_up": 0.3, "start_nodes": 0.4, "run": 6.7, "verify": 0.2}
    assert rec.duration_s == 8.2
    # the code and the machine: in the row and, for --rebuild, in the folder
    prov = json.loads((folder / results.PROVENANCE).read_text())
    assert prov["command"] == "run" and prov["code_version"] == store.code_version() != ""
    assert (rec.hostname, rec.kernel, rec.cpus) == (os.uname().nodename, os.uname().release,
                                                   os.cpu_count())
    assert rec.code_version == prov["code_version"]
    ended = time.mktime(time.strptime(rec.ended, store.TIME_FORMAT)) - time.timezone
    assert abs(ended - (folder / "summary.json").stat().st_mtime) < 1.5
    assert rec.started < rec.ended


def test_recording_again_replaces_the_row_and_a_run_never_started_is_left_out(tmp_path):
    db = tmp_path / "results.db"
    folder = run_folder(tmp_path / "r", full_summary("completed"))
    assert store.record_run(folder, "run", db=db)
    (folder / "summary.json").write_text(json.dumps(full_summary("degraded")))
    assert store.record_run(folder, "run", db=db)
    assert [r.verdict for r in query(db)] == ["degraded"]
    assert not store.record_run(run_folder(tmp_path / "never", None), "run", db=db)
    assert len(query(db)) == 1


def test_a_batch_is_queried_by_scenario_policy_param_verdict_and_date(tmp_path):
    db = tmp_path / "runs" / "results.db"
    record_batch(sweep_folder(tmp_path / "runs" / "sweep"), db)
    other = run_folder(tmp_path / "runs" / "base",
                       full_summary("completed", "none", scenario="baseline"))
    store.record_run(other, "run", db=db)
    assert len(query(db)) == 5
    assert [r.scenario for r in query(db, scenario="baseline")] == ["baseline"]
    assert len(query(db, policy="phillips-2005")) == 4 and query(db, policy="nosuch") == []
    got = query(db, params={"client.reserve_pages": "0"})
    assert [r.verdict for r in got] == ["lockup", "lockup"]
    assert [r.params for r in got] == [{"client.reserve_pages": "0", "topology.bulk_hosts": "1"},
                                       {"client.reserve_pages": "0", "topology.bulk_hosts": "3"}]
    both = query(db, params={"client.reserve_pages": "100", "topology.bulk_hosts": "1"})
    assert [r.verdict for r in both] == ["completed"]
    assert [r.label for r in query(db, verdict="none")] == [
        "client.reserve_pages=100 topology.bulk_hosts=3"]
    assert len(query(db, verdict="lockup", command="sweep")) == 2
    assert query(db, command="compare") == []
    # dates: everything started after yesterday, nothing after tomorrow
    assert len(query(db, since=store.utc(time.time() - 86400))) == 5
    assert query(db, since=store.utc(time.time() + 86400)) == []
    assert {r.batch for r in query(db, command="sweep")} == {
        str((tmp_path / "runs" / "sweep").resolve())}


def test_the_cli_prints_the_matching_runs_and_refuses_bad_filters(tmp_path, capsys):
    db = tmp_path / "runs" / "results.db"
    record_batch(sweep_folder(tmp_path / "runs" / "sweep"), db)
    assert main(["results", "--db", str(db), "--param", "topology.bulk_hosts=3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["started", "(UTC)", "command"]
    assert len(out) == 4 and out[-1] == f"2 runs in {db}"
    rows = {line.split()[5]: line for line in out[1:3]}     # params: key=value pairs
    assert " lockup " in rows["client.reserve_pages=0"]
    assert " none " in rows["client.reserve_pages=100"]      # the run without a verdict
    for argv, text in ((["--param", "topology.bulk_hosts"],
                        "--param 'topology.bulk_hosts': expected KEY=VALUE"),
                       (["--since", "yesterday"], "--since 'yesterday': expected an ISO 8601 date"),
                       (["--export", str(tmp_path / "x.xlsx")], "must end in .csv or .parquet")):
        assert main(["results", "--db", str(db)] + argv) == 1
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err
    assert main(["results", "--db", str(tmp_path / "none.db")]) == 1
    assert "none.db: no results database yet" in capsys.readouterr().err


def test_since_takes_a_date_or_a_time_in_local_time_unless_zoned():
    from testbed.commands.results import parse_since
    assert parse_since("2026-11-29T08:00:00+01:00") == "2026-11-29T07:00:00Z"
    assert parse_since("2026-11-29T08:00Z") == "2026-11-29T08:00:00Z"
    local = time.mktime((2026, 11, 29, 0, 0, 0, 0, 0, -1))
    assert parse_since("2026-11-29") == store.utc(local)


# -- export ------------------------------------------------------------------------------------

def folder_rows(base: Path) -> list[dict[str, Any]]:
    """What the run folders say, read through testbed.results, as export rows."""
    batch = results.open_batch(base)
    return sorted(({"path": str(r.path.resolve()), "label": r.label, "policy": r.policy,
                    "verdict": r.verdict, **{f"param.{k}": v for k, v in r.params.items()},
                    **{f.key: f.value(r) for f in results.figures([r])}}
                   for r in batch.runs()), key=lambda row: row["path"])


def test_csv_export_reads_back_as_the_run_folders(tmp_path, capsys):
    db = tmp_path / "runs" / "results.db"
    base = sweep_folder(tmp_path / "runs" / "sweep")
    record_batch(base, db)
    out = tmp_path / "campaign.csv"
    assert main(["results", "--db", str(db), "--export", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"exported 4 runs to {out}"
    with open(out, newline="") as f:
        got = sorted(csv.DictReader(f), key=lambda row: row["path"])
    want = folder_rows(base)
    assert len(got) == len(want) == 4
    for row, w in zip(got, want):
        for k, v in w.items():
            if v is None:
                assert row[k] == "", k
            elif isinstance(v, (int, float)):
                assert float(row[k]) == pytest.approx(v), k
            else:
                assert row[k] == v, k
        assert row["command"] == "sweep" and row["timing.bring_up"] == "0.3"


def test_parquet_export_reads_back_as_the_run_folders(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")     # the 'results' extra; setup installs it
    db = tmp_path / "runs" / "results.db"
    base = sweep_folder(tmp_path / "runs" / "sweep")
    record_batch(base, db)
    out = tmp_path / "campaign.parquet"
    assert main(["results", "--db", str(db), "--policy", "phillips-2005",
                 "--export", str(out)]) == 0
    table = pq.read_table(out)
    got = sorted(table.to_pylist(), key=lambda row: row["path"])
    assert str(table.schema.field("lowest_free_pages").type) == "double"
    assert str(table.schema.field("cpus").type) == "int64"
    for row, w in zip(got, folder_rows(base), strict=True):
        for k, v in w.items():
            assert row[k] == (pytest.approx(v) if isinstance(v, (int, float)) else v), k


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    db = tmp_path / "results.db"
    store.record_run(run_folder(tmp_path / "r", full_summary()), "run", db=db)
    monkeypatch.setitem(sys.modules, "pyarrow", None)       # import pyarrow fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["results", "--db", str(db), "--export", str(tmp_path / "x.parquet")]) == 1
    err = capsys.readouterr().err
    assert "Parquet needs pyarrow" in err and "pip install" in err and "[results]" in err
    assert not (tmp_path / "x.parquet").exists()


# -- rebuild -----------------------------------------------------------------------------------

def comparable(recs: list[store.Record]) -> list[tuple]:
    """Everything but when the row was written, in the order of the folders' paths (the
    store lists runs by start time, to the second)."""
    return sorted((tuple(v for k, v in r.fields.items() if k != "recorded"), r.params,
                   r.figures, r.timings) for r in recs)


def test_rebuild_regenerates_the_database_from_the_folders(tmp_path, capsys):
    runs = tmp_path / "runs"
    db = runs / "results.db"
    record_batch(sweep_folder(runs / "sweep"), db)
    compare = batch_folder(runs / "cmp", [("none", {}, full_summary("lockup", "none", 5.0)),
                                          ("gorman-3.6", {}, full_summary())])
    record_batch(compare, db, command="compare")
    elsewhere = run_folder(tmp_path / "elsewhere" / "r", full_summary())    # --out outside runs/
    store.record_run(elsewhere, "run", db=db)
    before = query(db)
    assert len(before) == 7
    assert main(["results", "--db", str(db), "--rebuild"]) == 0
    assert "rebuilt" in capsys.readouterr().out
    assert comparable(query(db)) == comparable(before)
    # from the folders alone: a lost database comes back, but for the folder outside
    # runs/, which only the old database named
    db.unlink()
    done = store.rebuild(db)
    assert done.runs == 6
    assert comparable(query(db)) == comparable([r for r in before if r.command != "run"])
    # a folder recorded before provenance.json existed: its command is inferred
    for p in (runs / "cmp").glob(f"*/{results.PROVENANCE}"):
        p.unlink()
    store.rebuild(db)
    assert {r.command for r in query(db, policy="none")} == {"compare"}
    assert [r.code_version for r in query(db, policy="none")] == [None]


# -- versions ---------------------------------------------------------------------------------

def test_a_database_of_another_version_is_refused_naming_the_file(tmp_path, capsys):
    db = tmp_path / "runs" / "results.db"
    folder = run_folder(tmp_path / "runs" / "r", full_summary())
    store.record_run(folder, "run", db=db)
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    newer, ours = store.SCHEMA_VERSION + 1, store.SCHEMA_VERSION
    with pytest.raises(store.StoreError, match=re.escape(
            f"{db}: has schema version {newer}, and this testbed reads version {ours} "
            f"(it was written by a newer testbed); it is not read")):
        store.Store.open(db)
    assert main(["results", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert str(db) in err and "--rebuild" in err and len(err.strip().splitlines()) == 1
    # a run still ends well: one warning, its folder stands
    assert not store.record_run(folder, "run", db=db)
    err = capsys.readouterr().err
    assert err.startswith("testbed: warning:") and f"has schema version {newer}" in err
    # --rebuild regenerates it, and keeps the old file beside it
    assert main(["results", "--db", str(db), "--rebuild"]) == 0
    assert "kept as" in capsys.readouterr().out
    assert len(query(db)) == 1
    (old,) = db.parent.glob("results.db.old-*")
    with sqlite3.connect(old) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == newer


def test_files_that_are_not_this_store_are_refused(tmp_path):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE runs (x)")
    with pytest.raises(store.StoreError, match="foreign.db: has tables but no schema version"):
        store.Store.open(foreign)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all, but long enough to have a header" * 20)
    with pytest.raises(store.StoreError, match="junk.db: not a results database"):
        store.Store.open(junk)


def test_an_older_version_is_upgraded_by_its_written_step(tmp_path, monkeypatch):
    db = tmp_path / "results.db"
    store.record_run(run_folder(tmp_path / "r", full_summary()), "run", db=db)
    v = store.SCHEMA_VERSION
    monkeypatch.setattr(store, "SCHEMA_VERSION", v + 2)
    with pytest.raises(store.StoreError, match=f"has schema version {v}.*no upgrade written"):
        store.Store.open(db)
    monkeypatch.setattr(store, "MIGRATIONS", {**store.MIGRATIONS,
                                              v: "ALTER TABLE runs ADD COLUMN note TEXT",
                                              v + 1: "UPDATE runs SET note = 'v3'"})
    with store.Store.open(db) as st:
        assert st.conn.execute("SELECT note FROM runs").fetchall() == [("v3",)]
        assert st.conn.execute("PRAGMA user_version").fetchone()[0] == v + 2
        assert [r.verdict for r in st.query()] == ["completed"]


# -- recording never breaks a run --------------------------------------------------------------

def test_a_locked_database_costs_one_warning_and_the_run_stands(tmp_path, monkeypatch, capsys):
    db = tmp_path / "results.db"
    first = run_folder(tmp_path / "a", full_summary())
    assert store.record_run(first, "run", db=db)
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store, "_warned", set())
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")           # another process in a long transaction
    try:
        folders = [run_folder(tmp_path / f"b{i}", full_summary("lockup", "none", 5.0))
                   for i in range(3)]
        t0 = time.monotonic()
        assert [store.record_run(f, "compare", db=db) for f in folders] == [False] * 3
        assert time.monotonic() - t0 < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "database is locked" in err[0] and "--rebuild" in err[0], err
    assert [r.verdict for r in map(results.open_run, folders)] == ["lockup"] * 3
    assert len(query(db)) == 1
    store.rebuild(db, extra_roots=[tmp_path])
    assert len(query(db)) == 4


def _record_all(folders: list[Path], db: Path) -> None:
    """A child process: record each folder; exit 1 if any was not recorded."""
    ok = all(store.record_run(f, "sweep", db=db) for f in folders)
    os._exit(0 if ok else 1)


def test_runs_that_end_at_the_same_time_are_all_recorded(tmp_path):
    """Parallel writers (workers of one campaign) wait for the write lock in turn."""
    db = tmp_path / "results.db"
    groups = [[run_folder(tmp_path / f"w{w}" / f"r{i}", full_summary()) for i in range(15)]
              for w in range(4)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_all, args=(g, db)) for g in groups]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(query(db)) == 60


def test_an_unwritable_database_costs_one_warning(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    db = tmp_path / "file" / "results.db"          # its folder is a file
    assert not store.record_run(run_folder(tmp_path / "r", full_summary()), "run", db=db)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("testbed: warning:") and str(db) in err[0]


# -- the commands that record, and their --out -------------------------------------------------

class FakeOrchestrator:
    """Stands in for the orchestrator: writes a finished run's summary.json."""

    def __init__(self, scenario: Any, out_dir: Path) -> None:
        self.out = out_dir

    def run(self) -> RunResult:
        self.out.mkdir(parents=True)
        s = full_summary("completed", self.out.name.split("_")[0])
        (self.out / "summary.json").write_text(json.dumps(s))
        return RunResult(self.out, s)


def test_a_batch_records_each_run_as_it_ends(tmp_path, monkeypatch, results_db):
    monkeypatch.setattr(run_cmd, "Orchestrator", FakeOrchestrator)
    monkeypatch.setattr(run_cmd, "build_compare_report", lambda base: base / "report.html")
    db = tmp_path / "results.db"
    monkeypatch.setenv(store.ENV, str(db))
    jobs = [run_cmd.Job(p, None, {}) for p in ("none", "gorman-3.6")]  # type: ignore[arg-type]
    base = run_cmd._batch_dir(tmp_path / "cmp", "compare", "tiny")
    run_cmd._run_batch(base, jobs, "t", "compare")
    got = query(db)
    assert [(r.label, r.command, r.batch) for r in got] == [
        ("none", "compare", str(base.resolve())), ("gorman-3.6", "compare", str(base.resolve()))]
    sweep = [run_cmd.Job("x=1", None, {"x": "1"})]  # type: ignore[arg-type]
    run_cmd._run_batch(run_cmd._batch_dir(tmp_path / "sw", "sweep", "tiny"), sweep, "t")
    assert [(r.command, r.params) for r in query(db, command="sweep")] == [("sweep", {"x": "1"})]


def test_compare_and_sweep_refuse_an_out_folder_that_holds_something(tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "runs.json").write_text("{}")
    for argv in (["compare", "baseline", "--policies", "none"],
                 ["sweep", "baseline", "--param", "client.threshold=0,1"]):
        assert main(argv + ["--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"--out {out}: folder exists and is not empty" in err and "--force" in err
        assert len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["runs.json"]      # untouched
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cmd._batch_dir(empty, "sweep", "tiny") == empty   # an empty folder is fine


def test_force_moves_the_old_folder_aside_and_the_store_follows(tmp_path, monkeypatch, capsys):
    db = tmp_path / "results.db"
    monkeypatch.setenv(store.ENV, str(db))
    out = batch_folder(tmp_path / "cmp", [("none", {}, full_summary("lockup", "none", 5.0))])
    record_batch(out, db, "compare")
    got = run_cmd._batch_dir(out, "compare", "tiny", force=True)
    assert got == out and list(out.iterdir()) == []
    (aside,) = tmp_path.glob("cmp.old-*")
    assert (aside / "runs.json").exists() and (aside / "run0" / "summary.json").exists()
    assert f"moved the old {out} aside to {aside}" in capsys.readouterr().out
    (rec,) = query(db)
    assert rec.path == str((aside / "run0").resolve()) and rec.batch == str(aside.resolve())


def test_default_batch_folders_made_in_the_same_second_do_not_share(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_cmd.time, "strftime", lambda fmt, *a: "20261129-080000")
    first = run_cmd._batch_dir(None, "compare", "tiny")
    # the second comes before the first has written anything (two batches started at
    # once): the name is taken by the first one's mkdir all the same
    second = run_cmd._batch_dir(None, "compare", "tiny")
    third = run_cmd._batch_dir(None, "compare", "tiny")
    assert [first.name, second.name, third.name] == [
        "20261129-080000-compare-tiny", "20261129-080000-compare-tiny-2",
        "20261129-080000-compare-tiny-3"]


def test_a_bad_out_is_a_config_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        run_cmd._batch_dir(tmp_path / "f", "compare", "tiny")
