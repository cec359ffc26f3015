"""The one reader of run, compare and sweep folders (testbed.results), and what renders it.

Small real folders are written in tmp_path as ``testbed run | compare | sweep`` leave
them: summary.json in each run folder, runs.json in a batch folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

from testbed import grading, results
from testbed.cli import main
from testbed.commands.run import _print_table
from testbed.report import build_compare_report


def summary(verdict: Optional[str] = "completed", policy: str = "gorman-3.6",
            lockup_t: Optional[float] = None, wb_time: float = 12.34,
            wb_bytes: int = 8 * 2**20, storage: int = 0, other: int = 5,
            mismatches: int = 0, expected: str = "completed") -> dict[str, Any]:
    """A summary.json with the keys report.summary.summarize writes."""
    lockup = None
    if lockup_t is not None:
        lockup = {"t": lockup_t, "stalled_for_s": 5.0, "dirty": 900, "writeback": 40,
                  "free": 60, "wmark_min": 128, "reserve": {}}
    return {"scenario": "tiny", "policy": policy, "expected": expected, "verdict": verdict,
            "status": "finished" if verdict else "interrupted", "reasons": [], "detail": "",
            "duration_s": 20.0, "lockup": lockup,
            "integrity": {"checked": True, "bytes_checked": wb_bytes, "mismatches": mismatches},
            "writeback": {"bytes": wb_bytes, "mb_s": 0.65, "bytes_written": wb_bytes,
                          "longest_stall_s": 1.0, "time_s": wb_time},
            "drops": {"memalloc": {"total": storage},
                      "other": {"total": other, "PFMemallocDrop": other}, "tx": {"total": 0}},
            "goodput": {}, "client_verdict": verdict, "end_t": wb_time}


def run_folder(path: Path, s: Optional[dict[str, Any]]) -> Path:
    """A run folder: summary.json (unless None: a run that never started), an empty
    client.ndjson, hosts.json and scenario.yaml."""
    path.mkdir(parents=True)
    if s is not None:
        (path / "summary.json").write_text(json.dumps(s))
    (path / "client.ndjson").write_text("")
    (path / "hosts.json").write_text(json.dumps({"client": "10.0.0.1"}))
    (path / "scenario.yaml").write_text("name: tiny\n")
    return path


def batch_folder(path: Path, runs: list[tuple[str, dict[str, str], Optional[dict[str, Any]]]],
                 title: str = "tiny: policies compared") -> Path:
    """A compare/sweep folder: one run folder per (label, params, summary), runs.json."""
    entries = []
    for i, (label, params, s) in enumerate(runs):
        run_folder(path / f"run{i}", s)
        entries.append(results.BatchEntry(label, f"run{i}", params))
    results.write_index(path, title, entries)
    return path


# -- one run -------------------------------------------------------------------------------

def test_time_is_the_lockup_for_a_lockup_and_the_end_of_writeback_otherwise(tmp_path):
    locked = results.read_run(run_folder(tmp_path / "a", summary("lockup", "none",
                                                                 lockup_t=5.7, wb_time=9.0)))
    done = results.read_run(run_folder(tmp_path / "b", summary("completed", wb_time=31.4)))
    never = results.read_run(run_folder(tmp_path / "c", summary(None, wb_time=0.0)))
    assert locked is not None and done is not None and never is not None
    assert locked.time_s == 5.7 and locked.lockup_t == 5.7
    assert done.time_s == 31.4 and done.lockup_t is None
    assert never.time_s is None
    # the graders' RunFolder gives the same figure (0 when there is none)
    assert grading.RunFolder(tmp_path / "a").time_s == 5.7
    assert grading.RunFolder(tmp_path / "b").time_s == 31.4
    assert grading.RunFolder(tmp_path / "c").time_s == 0.0


def test_a_run_outcome_is_typed(tmp_path):
    run = results.read_run(run_folder(tmp_path / "r", summary(
        "degraded", "phillips-2005", wb_bytes=3 * 2**20, storage=2, other=7, mismatches=1)))
    assert run is not None
    assert (run.verdict, run.expected, run.policy, run.label) == (
        "degraded", "completed", "phillips-2005", "tiny")
    assert run.written_back_bytes == 3 * 2**20 and run.mismatches == 1
    assert run.drops("memalloc") == 2 and run.drops("other") == 7
    assert run.drops("other", "PFMemallocDrop") == 7 and run.drops("other", "nosuch") == 0
    assert run.finished and run.params == {} and run.samples() == []
    assert results.read_run(run_folder(tmp_path / "empty", None)) is None


# -- batch folders ---------------------------------------------------------------------------

def test_params_come_from_runs_json_not_from_the_label(tmp_path):
    base = batch_folder(tmp_path / "sweep", [
        ("small", {"client.memory_mb": "32"}, summary("lockup", lockup_t=4.0)),
        ("client.memory_mb=99", {"client.memory_mb": "48"}, summary("completed")),
    ], title="tiny: sweep over client.memory_mb")
    batch = results.read_batch(base)
    assert batch is not None and batch.is_sweep
    assert batch.title == "tiny: sweep over client.memory_mb"
    assert batch.param_keys == ["client.memory_mb"]
    runs = batch.runs()
    assert [r.label for r in runs] == ["small", "client.memory_mb=99"]
    assert [r.params for r in runs] == [{"client.memory_mb": "32"}, {"client.memory_mb": "48"}]
    assert results.param_values(runs, "client.memory_mb") == ["32", "48"]
    # the graders see the same parameters
    folder = grading.BatchFolder.open(base)
    assert folder.values("client.memory_mb") == ["32", "48"]
    assert [r.label for r in folder.runs] == ["small", "client.memory_mb=99"]
    assert [r.params for r in folder.select("client.memory_mb", 48)] == [{"client.memory_mb": "48"}]


def test_a_compare_folder_has_no_params_and_skips_runs_without_a_summary(tmp_path):
    base = batch_folder(tmp_path / "cmp", [
        ("none", {}, summary("lockup", "none", lockup_t=5.7)),
        ("gorman-3.6", {}, None),          # listed, but never finished
    ])
    batch = results.read_batch(base)
    assert batch is not None and not batch.is_sweep
    assert [e.label for e in batch.entries] == ["none", "gorman-3.6"]
    assert [r.label for r in batch.runs()] == ["none"]
    # the graders keep their sentences for what is missing
    with pytest.raises(grading.CheckFailed, match="is not a finished run folder"):
        grading.BatchFolder.open(base)
    assert results.read_batch(tmp_path) is None


def test_verdict_counts_per_policy_and_per_grid_point(tmp_path):
    base = batch_folder(tmp_path / "cmp", [
        ("none#1", {}, summary("lockup", "none", lockup_t=5.0)),
        ("gorman-3.6#1", {}, summary("completed")),
        ("none#2", {}, summary("lockup", "none", lockup_t=6.0)),
        ("gorman-3.6#2", {}, summary("degraded")),
        ("none#3", {}, summary(None, "none")),
    ])
    batch = results.read_batch(base)
    assert batch is not None
    counts = results.verdict_counts(batch.runs())
    assert counts == {"none": Counter({"lockup": 2, None: 1}),
                      "gorman-3.6": Counter({"completed": 1, "degraded": 1})}
    assert list(counts) == ["none", "gorman-3.6"]      # in order of the first run

    grid = batch_folder(tmp_path / "sweep", [
        ("a", {"k": "1", "j": "x"}, summary("lockup", lockup_t=3.0)),
        ("b", {"k": "1", "j": "x"}, summary("completed")),
        ("c", {"k": "2", "j": "x"}, summary("completed")),
    ])
    sweep = results.read_batch(grid)
    assert sweep is not None
    assert results.verdict_counts(sweep.runs(), results.by_point) == {
        (("k", "1"), ("j", "x")): Counter({"lockup": 1, "completed": 1}),
        (("k", "2"), ("j", "x")): Counter({"completed": 1})}


# -- the table and its renderers ----------------------------------------------------------------

def compare_folder(tmp_path: Path, label: str = "none") -> Path:
    return batch_folder(tmp_path / "cmp", [
        (label, {}, summary("lockup", "none", lockup_t=5.73, wb_time=9.0, wb_bytes=3 * 2**20,
                            storage=32, other=125)),
        ("gorman-3.6", {}, summary("completed", wb_time=31.44, other=1720)),
        ("cut", {}, summary(None, "none", wb_time=0.0, other=0, wb_bytes=0)),
    ])


def test_the_table_is_plain_data(tmp_path):
    batch = results.read_batch(compare_folder(tmp_path))
    assert batch is not None
    table = results.table(batch.runs())
    assert table.header == ["run", "policy", "verdict", "expected",
                            "time to lockup / completion (s)", "written back (MiB)",
                            "storage drops", "other drops", "mismatches"]
    assert table.header[table.verdict_column] == "verdict"
    assert table.rows == [
        ["none", "none", "lockup", "completed", "5.7", "3.0", "32", "125", "0"],
        ["gorman-3.6", "gorman-3.6", "completed", "completed", "31.4", "8.0", "0", "1720", "0"],
        ["cut", "none", "None", "completed", "-", "0.0", "0", "0", "0"],
    ]


def test_the_cli_prints_plain_columns(tmp_path, capsys):
    base = compare_folder(tmp_path)
    _print_table(base)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("  ")[0] == "run" and "<" not in "".join(lines)
    assert lines[1].split() == ["none", "none", "lockup", "completed", "5.7", "3.0", "32",
                                "125", "0"]
    # columns line up: every row's policy starts where the header's does
    col = lines[0].index("policy")
    assert all(line[col:].startswith(("policy", "none", "gorman-3.6")) for line in lines)


def test_the_html_report_escapes_labels_and_colours_the_verdict(tmp_path):
    base = compare_folder(tmp_path, label="<script>x</script>")
    report = build_compare_report(base)
    page = report.read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b class='lockup'>lockup</b>" in page and "<b class='completed'>completed</b>" in page
    assert (base / "compare.png").exists() and not (base / "sweep.png").exists()
    written = json.loads((base / "summaries.json").read_text())
    assert [s["label"] for s in written] == ["<script>x</script>", "gorman-3.6", "cut"]


def test_report_of_a_sweep_folder_draws_the_sweep_from_runs_json(tmp_path, capsys):
    base = batch_folder(tmp_path / "sweep", [
        ("one", {"client.memory_mb": "32", "topology.bulk_hosts": "1"}, summary("lockup", lockup_t=4.0)),
        ("two", {"client.memory_mb": "48", "topology.bulk_hosts": "1"}, summary("completed")),
        ("three", {"client.memory_mb": "32", "topology.bulk_hosts": "3"}, summary("lockup", lockup_t=2.0)),
        ("four", {"client.memory_mb": "48", "topology.bulk_hosts": "3"}, summary("degraded")),
    ], title="tiny: sweep")
    assert main(["report", str(base)]) == 0
    assert (base / "sweep.png").exists() and (base / "compare.png").exists()
    assert all((base / f"run{i}" / "report.html").exists() for i in range(4))
    assert "sweep.png" in (base / "report.html").read_text()
    assert capsys.readouterr().out.strip() == f"report: {base / 'report.html'}"
