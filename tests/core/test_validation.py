"""The model against the kernel (testbed.validation, ``compare --clients``) and the
summary of a kernel client's run (report.summary): real small run folders, summarised
by ``summarize`` from what the nodes write (client-outcome.json, client.ndjson,
integrity.json), in a compare folder as ``testbed compare --clients`` leaves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest

from testbed import results, scenario, validation
from testbed.commands.run import client_jobs, client_sets, print_stats
from testbed.errors import ConfigError
from testbed.report import build_compare_report
from testbed.report.summary import cycle_lines, evidence, summarize

SCENARIO = "validation-contention"


def samples(free: list[int], pfmemalloc: list[int], throttle: list[int],
            backlog: Optional[list[int]], flows: bool = False,
            sockets: Optional[dict[str, list[int]]] = None) -> list[dict[str, Any]]:
    """client.ndjson's samples, 100 ms apart (the metrics interval), with the counters
    both clients keep (the kernel's from its boot: they do not start at 0),
    TCPBacklogDrop where given, and ``sockets``: per sample field (``rmem``, or the
    kernel's ``tcp_mem_pages`` and ``TCPMemoryPressures``) its values."""
    out: list[dict[str, Any]] = [{"t": 0.0, "events": [{"t": 0.0, "event": "load_started"}]}]
    for i, f in enumerate(free):
        s: dict[str, Any] = {"t": round(0.1 * (i + 1), 1), "free": f, "wmark_min": 200,
                             "dirty": 100, "writeback": 10, "writeback_bytes": (i + 1) * 2**20,
                             "workload_bytes": (i + 1) * 2**20,
                             "PFMemallocDrop": pfmemalloc[i],
                             "pgscan_direct_throttle": throttle[i], "allocstall": 10 * i}
        if backlog is not None:
            s["TCPBacklogDrop"] = backlog[i]
        s.update({k: v[i] for k, v in (sockets or {}).items()})
        out.append(s)
    return out


def write_run(path: Path, kind: str, outcome: dict[str, Any],
              stream: list[dict[str, Any]], policy: Optional[str] = None) -> Path:
    path.mkdir(parents=True)
    (path / "client-outcome.json").write_text(json.dumps(outcome))
    (path / "client.ndjson").write_text("".join(json.dumps(s) + "\n" for s in stream))
    (path / "hosts.json").write_text(json.dumps({"client": "10.0.0.1"}))
    if outcome["verdict"] == "completed":
        (path / "integrity.json").write_text(json.dumps(
            {"bytes_checked": outcome["bytes_written_back"], "mismatches": 0}))
    sc = scenario.load(SCENARIO, [f"client.kind={kind}"]
                       + ([f"client.policy={policy}"] if policy else []))
    (path / "summary.json").write_text(json.dumps(summarize(path, sc, 60.0)))
    return path


def completed(t: float, mib: int) -> dict[str, Any]:
    return {"verdict": "completed", "t": t, "bytes_written": mib * 2**20,
            "bytes_written_back": mib * 2**20, "longest_stall_s": 0.5}


def emulated_run(path: Path, k: int) -> Path:
    net = {"rx": {"classes": {"memalloc": {"dropped": {"frames": 0}, "reasons": {}},
                              "other": {"dropped": {"frames": 100 + k},
                                        "reasons": {"PFMEMALLOC": {"frames": 100 + k}}}}},
           "tx": {"dropped": {"frames": 0}, "classes": {}}}
    return write_run(path, "emulated", {**completed(30.0 + k, 60), "net": net},
                     samples([900, 300, 60 + k], [0, 50, 100 + k], [0, 3, 7], None,
                             sockets={"tcp_mem_pages": [10, 4000 + k, 300],
                                      "TCPMemoryPressures": [0, 1, 1]}))


def kernel_run(path: Path, k: int) -> Path:
    return write_run(path, "kernel", completed(45.0 + k, 60),
                     samples([2000, 900, 700 + k], [4, 4, 4], [1, 1, 1 + k], [2, 2, 5],
                             sockets={"tcp_mem_pages": [5, 900 + k, 40],
                                      "TCPMemoryPressures": [1, 3, 3 + k]}))


def locked_up_run(path: Path, k: int) -> Path:
    """The 2005 model's lockup: no writeback after 10 s, free memory at the floor."""
    outcome = {"verdict": "lockup", "t": 20.0 + k, "bytes_written": 40 * 2**20,
               "bytes_written_back": 10 * 2**20,
               "lockup": {"t": 20.0 + k, "stalled_for_s": 10.0, "dirty": 1, "writeback": 1,
                          "free": 1, "wmark_min": 2, "reserve": {},
                          "cycle": [{"who": "writeback", "waits_for": "an skb"},
                                    {"who": "an skb", "waits_for": "writeback"}]}}
    return write_run(path, "emulated", outcome,
                     samples([900, 100, 40 + k], [0, 0, 0], [0, 0, 0], None), policy="none")


CLIENTS = (("emulated:gorman-3.6", emulated_run), ("kernel", kernel_run))


def compare_folder(tmp_path: Path, n: int = 3, clients=CLIENTS) -> Path:
    """A compare --clients folder: n runs of each client, interleaved."""
    base = tmp_path / "batch"
    base.mkdir()
    entries = []
    for k in range(n):
        for label, make in clients:
            d = f"{label.replace(':', '_')}_{k}"
            make(base / d, k)
            entries.append(results.BatchEntry(f"{label}#{k + 1}", d))
    results.write_index(base, f"{SCENARIO}: the model against the kernel", entries)
    return base


# -- the kernel client's summary -----------------------------------------------------------

def test_a_kernel_runs_handler_drops_are_not_counted_and_not_zero(tmp_path):
    run = results.read_run(kernel_run(tmp_path / "k", 0))
    assert run is not None and run.client_kind == "kernel" and not run.handler_counted
    assert run.drops("memalloc") is None and run.drops("other") is None
    assert run.tx_drops("other") is None and run.other_drops is None
    row = results.table([run]).rows[0]
    assert row[6:8] == ["n/a", "n/a"]
    lines = evidence(run.summary)
    assert lines[-1].startswith("drops per flow class: n/a (no packet handler")
    # the emulated client's are counted as before
    model = results.read_run(emulated_run(tmp_path / "e", 0))
    assert model is not None and model.handler_counted and model.drops("other") == 100


def test_a_kernel_stall_is_degraded_and_says_what_the_guests_detector_saw(tmp_path):
    """A guest judged at a stall before the kernel's recovery horizon (a guest recorded
    before the horizon was waited out, or one judged from its console): no proven
    lockup."""
    lockup = {"t": 12.5, "stalled_for_s": 4.2, "dirty": 5000, "writeback": 300, "free": 180,
              "wmark_min": 200, "reserve": None, "hung_task_messages": [],
              "counters": {"PFMemallocDrop": 3, "allocstall": 900}}
    outcome = {"verdict": "lockup", "t": 12.5, "bytes_written": 2**20,
               "bytes_written_back": 2**19, "lockup": lockup}
    run = results.read_run(write_run(tmp_path / "k", "kernel", outcome,
                                     samples([500, 180], [3, 3], [0, 0], [0, 0])))
    assert run is not None and run.verdict == "degraded"
    assert run.summary["lockup"]["detector"] == "kernel"
    (line,) = [r for r in run.summary["reasons"] if "guest's detector" in r]
    assert line.startswith("stuck at t=12.5s, by the guest's detector: no writeback to the "
                           "LUN for 4.2s with 5000 dirty and 300 under-writeback pages, free "
                           "memory 180 pages at or below the min watermark 200")
    assert line.endswith("not a proven lockup: the guest was stopped there, before the "
                         "kernel's recovery horizon passed")
    assert any(line in e for e in evidence(run.summary))


HORIZON = {"seconds": 40.0, "detect_s": 10.0, "reinstatement_s": 30.0}
WAITING = [{"pid": 412, "comm": "kworker/u4:1+iscsi_q_2", "wchan": "sk_stream_wait_memory",
            "stack": ["sk_stream_wait_memory", "tcp_sendmsg_locked", "iscsi_sw_tcp_xmit"]},
           {"pid": 530, "comm": "python3", "wchan": "balance_dirty_pages",
            "stack": ["balance_dirty_pages", "balance_dirty_pages_ratelimited_flags"]},
           {"pid": 531, "comm": "python3", "wchan": "folio_wait_bit_common", "stack": []}]


def kernel_lockup(tmp_path: Path, name: str, **changes: Any) -> results.RunOutcome:
    lockup = {"t": 70.0, "stalled_for_s": 41.0, "dirty": 5000, "writeback": 300, "free": 180,
              "wmark_min": 200, "reserve": None, "hung_task_messages": [], "horizon": HORIZON,
              "tasks": WAITING, "iscsi": {"session1": "LOGGED_IN", "connection1:0": "up"},
              "counters": {}, **changes}
    outcome = {"verdict": "lockup", "t": 70.0, "bytes_written": 2**20,
               "bytes_written_back": 2**19, "lockup": lockup}
    run = results.read_run(write_run(tmp_path / name, "kernel", outcome,
                                     samples([500, 180], [3, 3], [0, 0], [0, 0])))
    assert run is not None
    return run


def test_a_kernel_stuck_past_its_horizon_with_the_three_waits_is_a_proven_lockup(tmp_path):
    """Past the kernel's recovery horizon, the kernel's stacks show the cycle: the
    connection's work in a memory wait, the writers in writeback waits, free at min."""
    run = kernel_lockup(tmp_path, "k")
    assert run.verdict == "lockup", run.summary["reasons"]
    lk = run.summary["lockup"]
    assert (lk["stuck_for_s"], lk["stuck_since"]) == (41.0, 29.0)
    text = lk["cycle"]["text"]
    assert text[0].startswith("writeback waits for the storage connection: 5000 dirty and "
                              "300 under-writeback pages, no sector written to the LUN for "
                              "41.0s (iSCSI: session1 LOGGED_IN, connection1:0 up)")
    assert "kworker/u4:1+iscsi_q_2 (412) in sk_stream_wait_memory (socket memory)" in text[1]
    assert "python3 (530) in balance_dirty_pages (the dirty limits)" in text[2]
    assert "531" not in text[2]          # folio_wait_bit_common: a lock as well, not counted
    assert cycle_lines(run.summary)[0].startswith("wait-for cycle (stuck 41.0s from t=29.0s, "
                                                  "recovery horizon 40s)")


@pytest.mark.parametrize("changes, why", [
    ({"stalled_for_s": 39.0}, "before the kernel's recovery horizon (40s) passed"),
    ({"tasks": WAITING[1:]}, "the kernel shows no cycle: no task waits for memory"),
    ({"tasks": WAITING[:1]}, "the kernel shows no cycle: no task waits for writeback"),
    ({"free": 900}, "free memory (900 pages) is above the min watermark (200)"),
])
def test_a_kernel_stall_without_one_of_the_waits_is_not_proven(tmp_path, changes, why):
    """A stuck kernel without one of the three waits is stuck on something else (a dead
    target holds writeback with memory to spare): degraded, naming what is missing."""
    run = kernel_lockup(tmp_path, "k", **changes)
    assert run.verdict == "degraded"
    (line,) = [r for r in run.summary["reasons"] if "guest's detector" in r]
    assert why in line, line


def test_a_drops_bound_on_a_kernel_client_is_not_checked_and_says_why(tmp_path):
    path = tmp_path / "k"
    path.mkdir()
    (path / "client-outcome.json").write_text(json.dumps(completed(40.0, 8)))
    (path / "integrity.json").write_text(json.dumps({"bytes_checked": 8 * 2**20,
                                                     "mismatches": 0}))
    sc = scenario.load(SCENARIO, ["client.kind=kernel", "bounds.max_other_drops=10"])
    s = summarize(path, sc, 50.0)
    assert s["verdict"] == "degraded"
    assert s["reasons"] == ["bounds.max_other_drops not checked: no packet handler: the "
                            "guest's NIC is the kernel's virtio-net, whose drops per flow "
                            "class nothing counts (the kernel's PFMemallocDrop is counted)"]


def test_the_same_lockup_from_the_emulated_client_without_a_cycle_is_not_proven(tmp_path):
    outcome = {"verdict": "lockup", "t": 12.5, "bytes_written": 2**20,
               "bytes_written_back": 2**19,
               "lockup": {"t": 12.5, "stalled_for_s": 4.2, "dirty": 1, "writeback": 1,
                          "free": 1, "wmark_min": 2, "reserve": {}}}
    run = results.read_run(write_run(tmp_path / "e", "emulated", outcome,
                                     samples([5], [0], [0], None)))
    assert run is not None and run.verdict == "degraded"
    assert "the client reported a lockup without a wait-for cycle: not proven" \
        in run.summary["reasons"]


# -- the validation table ------------------------------------------------------------------

def test_the_validation_table_has_both_clients_intervals_and_how_they_differ(tmp_path):
    runs = results.open_batch(compare_folder(tmp_path)).runs()
    assert validation.is_validation(runs)
    v = validation.validation(runs)
    assert v.table.header == ["figure", "emulated:gorman-3.6", "kernel", "kernel - model"]
    rows = {r[0]: r[1:] for r in v.table.rows}
    assert rows["runs"] == ["3", "3", ""]
    assert rows["verdicts"] == ["completed 3", "completed 3", "same"]
    # three runs: the range, marked * (below 95 %)
    # three runs: the ranges, so "apart" is marked * too
    assert rows["time to lockup / completion (s) [1]"] == ["31.0 [30.0, 32.0]*",
                                                           "46.0 [45.0, 47.0]*",
                                                           "+15.0 (x1.48), apart*"]
    # counters as their rise over the load: the kernel's count from its boot
    assert rows["PFMemallocDrop (frames)"] == ["101 [100, 102]*", "0 [0, 0]*",
                                               "-101 (x0.00), apart*"]
    assert rows["throttled reclaim (pgscan_direct_throttle)"] == ["7 [7, 7]*", "1 [0, 2]*",
                                                                  "-6 (x0.14), apart*"]
    assert rows["lowest free memory (pages)"][:2] == ["61 [60, 62]*", "701 [700, 702]*"]
    # the most pages TCP's sockets had charged against tcp_mem
    assert rows["socket memory, peak (pages) [2]"] == ["4001 [4000, 4002]*",
                                                       "901 [900, 902]*", "-3100 (x0.23), apart*"]
    assert rows["TCP memory pressure entered (TCPMemoryPressures)"] == [
        "1 [1, 1]*", "3 [2, 4]*", "+2 (x3.00), apart*"]
    # what a kind of client does not have is n/a with its footnote, never 0
    assert rows["storage frames dropped, received (handler)"] == ["0 [0, 0]*", "n/a [3]", "n/a"]
    assert rows["other frames dropped, rx + tx (handler)"][1:] == ["n/a [3]", "n/a"]
    assert rows["TCPBacklogDrop (frames)"] == ["n/a [4]", "3 [3, 3]*", "n/a"]
    # what each had for the load: free and clean page cache in its first sample
    assert rows["memory for the load at its start (pages) [5]"] == [
        "900 [900, 900]*", "2000 [2000, 2000]*", "+1100 (x2.22), apart*"]
    notes = validation.footnote_lines(v)
    assert notes[0].startswith("[1] each client's clock starts with the load")
    assert notes[1].startswith("[2] pages charged against tcp_mem")
    assert notes[2].startswith("[3] the kernel client has no packet handler")
    assert notes[3].startswith("[4] the model has no socket backlog")
    assert notes[4].startswith("[5] free pages and clean page cache")


def test_two_model_groups_get_a_difference_column_each_against_the_kernel(tmp_path):
    clients = (("emulated:none", locked_up_run),) + CLIENTS
    v = validation.validation(results.open_batch(compare_folder(tmp_path, 3, clients)).runs())
    assert v.table.header == ["figure", "emulated:none", "emulated:gorman-3.6", "kernel",
                              "kernel - emulated:none", "kernel - emulated:gorman-3.6"]
    rows = {r[0]: r[1:] for r in v.table.rows}
    assert rows["runs"] == ["3", "3", "3", "", ""]
    assert rows["verdicts"] == ["lockup 3", "completed 3", "completed 3", "differ", "same"]
    assert rows["time to lockup / completion (s) [1]"][3:] == ["+25.0 (x2.19), apart*",
                                                               "+15.0 (x1.48), apart*"]
    assert rows["lowest free memory (pages)"][3:] == ["+660 (x17.10), apart*",
                                                      "+640 (x11.49), apart*"]
    # a figure the kernel has not is n/a against each model
    assert rows["storage frames dropped, received (handler)"][3:] == ["n/a", "n/a"]


def test_a_batch_of_both_clients_groups_by_client_and_prints_the_table(tmp_path, capsys):
    base = compare_folder(tmp_path, n=2)
    batch = results.open_batch(base)
    groups = results.batch_groups(batch, batch.runs())
    assert [g.label for g in groups] == ["emulated:gorman-3.6", "kernel"]
    print_stats(base)
    out = capsys.readouterr().out
    assert "the model against the kernel" in out and "n/a [3]" in out
    assert "[3] the kernel client has no packet handler" in out
    page = build_compare_report(base).read_text()
    assert "The model against the kernel" in page and "n/a [4]" in page


def test_a_policy_compare_has_no_validation_table(tmp_path):
    base = tmp_path / "batch"
    base.mkdir()
    emulated_run(base / "a", 0)
    results.write_index(base, "t", [results.BatchEntry("gorman-3.6", "a")])
    runs = results.open_batch(base).runs()
    assert not validation.is_validation(runs)
    assert "The model against the kernel" not in build_compare_report(base).read_text()


# -- --clients -----------------------------------------------------------------------------

def test_clients_are_the_same_load_on_each_kind():
    jobs = client_jobs(SCENARIO, "emulated:gorman-3.6,kernel", [], 2)
    assert [j.label for j in jobs] == ["emulated:gorman-3.6#1", "kernel#1",
                                       "emulated:gorman-3.6#2", "kernel#2"]
    model, kernel = jobs[0].scenario, jobs[1].scenario
    assert (model.client.kind, kernel.client.kind) == ("emulated", "kernel")
    assert model.client.policy == kernel.client.policy == "gorman-3.6"
    assert model.client.workloads == kernel.client.workloads
    assert client_sets("emulated")[0] == ("emulated", ["client.kind=emulated"])


def test_set_model_sets_the_models_keys_and_leaves_the_kernels():
    jobs = client_jobs(SCENARIO, "emulated:gorman-3.6,kernel", [], 1,
                       ["client.memory_mb=24"])
    model, kernel = jobs[0].scenario, jobs[1].scenario
    assert model.client.memory_mb == 24
    assert kernel.client.memory_mb == scenario.load(SCENARIO).client.memory_mb


def test_set_model_without_clients_is_refused(capsys):
    from testbed.cli import main
    assert main(["compare", SCENARIO, "--policies", "none", "--set-model",
                 "client.memory_mb=24"]) == 1
    assert "--set-model: only with --clients" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("emulated:gorman-3.6,kernel:none", "the kernel client's policy is what its kernel "
                                        "(Linux 6.1) does"),
    ("qemu", "a client is emulated, emulated:POLICY or kernel"),
    (",", "give at least one client"),
    ("kernel,kernel", "a client is named twice"),
])
def test_bad_clients_are_refused_with_what_to_give(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        client_sets(spec)


def test_a_scenario_too_small_for_the_guest_names_file_line_and_key():
    with pytest.raises(ConfigError) as err:
        client_jobs("contention", "emulated:gorman-3.6,kernel", [], 1)
    assert "contention.yaml:" in str(err.value) and "client.memory_mb" in str(err.value)


def test_the_validation_set_runs_on_both_clients():
    for name in ("validation-contention", "validation-baseline", "validation-udp-flood"):
        for label, sets in client_sets("emulated:gorman-3.6,kernel"):
            assert scenario.load(name, sets).client.memory_mb >= 112, (name, label)
