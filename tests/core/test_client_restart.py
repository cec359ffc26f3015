"""The client_restart fault's parts without Mininet: the write journal (append, a record
torn by SIGKILL, what each page must hold, the read-back on a real file-backed disk), the
fault's schema and the injector's kill and restart of a real process, the restarted
client's time axis, and the summary's figures."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from nodes.storage_client.restart import RunClockStream
from testbed import faults, scenario
from testbed.blockdev import write_sync
from testbed.blockdev.local import LocalDisk
from testbed.integrity import verify_journal
from testbed.journal import (PAGE_SIZE, Journal, JournalingDevice, Record, expected_pages,
                             read_journal)
from testbed.report import summary as summ
from testbed.runctx import RunContext
from testbed.schema import SchemaError

HEAD = ("name: f\ndeadline_s: 60\ntopology: {bulk_hosts: 2}\n"
        "client:\n  workloads: [{kind: writer}]\n")


def page(byte: int) -> bytes:
    return bytes([byte]) * PAGE_SIZE


@pytest.fixture
def disk(tmp_path):
    d = LocalDisk(str(tmp_path / "disk.img"), 64 * PAGE_SIZE)
    yield d
    d.close()


# -- the journal --------------------------------------------------------------------------

def test_each_write_is_journalled_when_sent_and_when_acknowledged(tmp_path, disk):
    dev = JournalingDevice(disk, Journal(tmp_path / "j.ndjson", incarnation=1))
    write_sync(dev, 2 * PAGE_SIZE, page(1) + page(2))
    write_sync(dev, 0, page(3))
    got = read_journal(tmp_path / "j.ndjson")
    assert got.notes == []
    assert [(r.op, r.wid, r.offset) for r in got.records] == [
        ("sub", 0, 2 * PAGE_SIZE), ("ack", 0, 2 * PAGE_SIZE), ("sub", 1, 0), ("ack", 1, 0)]
    assert got.records[1].crcs == [zlib.crc32(page(1)), zlib.crc32(page(2))]
    assert dev.block_size == disk.block_size and dev.capacity == disk.capacity
    # one line per record, each complete: what a reader in another process sees
    lines = (tmp_path / "j.ndjson").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5


def test_a_failed_write_is_not_acknowledged(tmp_path):
    class Failing:
        block_size, capacity = 4096, 1 << 20

        def submit_write(self, offset, data, cb):
            cb(OSError("target gone"))
    dev = JournalingDevice(Failing(), Journal(tmp_path / "j.ndjson", 1))
    errors = []
    dev.submit_write(0, page(1), errors.append)
    assert [r.op for r in read_journal(tmp_path / "j.ndjson").records] == ["sub"]
    assert isinstance(errors[0], OSError)


WRITER = """
import sys
from testbed.journal import Journal
j = Journal(sys.argv[1], 1)
print("go", flush=True)
while True:
    rec = j.submitted(0, bytes(4096 * 64))
    j.acknowledged(rec)
"""


def test_sigkill_leaves_readable_records_and_a_torn_last_one_is_ignored(tmp_path):
    path = tmp_path / "j.ndjson"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                         cwd=Path(__file__).parents[2])
    try:
        assert p.stdout.readline() == b"go\n"
        # Killed once it has written some records, however slow a loaded machine makes it.
        deadline = time.monotonic() + 30
        while path.read_bytes().count(b"\n") <= 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
    got = read_journal(path)
    assert len(got.records) > 10
    whole = len(got.records)
    # A SIGKILL between the bytes of one write(2) is rare (the call copies the record
    # whole); the tear it can leave is made here: the start of a record, no newline.
    with open(path, "ab") as f:
        f.write(Record(1, "sub", 10**6, 0, [1, 2, 3]).to_line()[:17])
    got = read_journal(path)
    assert len(got.records) == whole
    assert len(got.notes) == 1 and "cut off when the client was killed; ignored" in got.notes[0]
    assert "(17 bytes, no newline)" in got.notes[0]


def test_a_bad_line_inside_is_named_and_skipped(tmp_path):
    path = tmp_path / "j.ndjson"
    path.write_bytes(Record(1, "ack", 0, 0, [5]).to_line() + b'{"op":"x"}\n'
                     + Record(1, "ack", 1, PAGE_SIZE, [6]).to_line())
    got = read_journal(path)
    assert [r.wid for r in got.records] == [0, 1]
    assert got.notes[0].startswith("j.ndjson line 2: unreadable record ignored")


# -- what each page must hold -------------------------------------------------------------

def rec(inc: int, op: str, wid: int, pg: int, *crcs: int) -> Record:
    return Record(inc, op, wid, pg * PAGE_SIZE, list(crcs))


def test_the_last_acknowledged_write_or_a_later_one_in_flight_at_the_crash():
    pages = expected_pages([
        rec(1, "sub", 0, 0, 10, 11), rec(1, "ack", 0, 0, 10, 11),
        rec(1, "sub", 1, 0, 20),                      # page 0 again: in flight at the crash
        rec(1, "sub", 2, 5, 50),                      # never acknowledged: nothing promised
    ])
    assert set(pages) == {0, 1}
    assert pages[0].acked == 10 and pages[0].accepted == {10, 20}
    assert pages[1].accepted == {11}


def test_a_write_acknowledged_after_the_restart_supersedes_the_one_in_flight():
    pages = expected_pages([
        rec(1, "sub", 0, 0, 10), rec(1, "ack", 0, 0, 10), rec(1, "sub", 1, 0, 20),
        rec(2, "sub", 0, 0, 30), rec(2, "ack", 0, 0, 30)])
    assert pages[0].accepted == {30}


def test_acknowledged_writes_end_the_in_flight_ones_submitted_before_them():
    pages = expected_pages([
        rec(1, "sub", 0, 3, 1), rec(1, "sub", 1, 3, 2), rec(1, "ack", 0, 3, 1),
        rec(1, "ack", 1, 3, 2), rec(1, "sub", 2, 3, 4)])
    assert pages[3].acked == 2 and pages[3].accepted == {2, 4}


def test_verify_journal_on_a_disk(tmp_path, disk):
    path = tmp_path / "j.ndjson"
    dev = JournalingDevice(disk, Journal(path, 1))
    write_sync(dev, 0, page(1) + page(2) + page(3))
    journal = Journal(path, 1)
    journal.submitted(PAGE_SIZE, page(9))            # in flight when the client died ...
    write_sync(disk, PAGE_SIZE, page(9))             # ... and the target did it after all
    dev2 = JournalingDevice(disk, Journal(path, 2))  # the restarted client
    write_sync(dev2, 10 * PAGE_SIZE, page(4))
    got = verify_journal(disk, path)
    assert (got["pages_checked"], got["bytes_checked"], got["mismatches"]) == (4, 4 * PAGE_SIZE, 0)
    assert (got["restarts"], got["acked_writes"], got["acked_after_restart"]) == (1, 2, 1)
    assert got["pages_with_write_in_flight"] == 1
    write_sync(disk, 2 * PAGE_SIZE, page(7))         # a lost write: stale bytes on the LUN
    got = verify_journal(disk, path)
    assert got["mismatches"] == 1 and got["examples"] == ["lba page 2"]


# -- the fault ----------------------------------------------------------------------------

def load(tmp_path: Path, text: str) -> scenario.Scenario:
    p = tmp_path / "s.yaml"
    p.write_text(HEAD + text)
    return scenario.load(p)


def test_client_restart_in_a_scenario(tmp_path):
    [f] = load(tmp_path, "faults: [{kind: client_restart, at_s: 4}]\n").faults
    assert isinstance(f, faults.ClientRestart) and f.params() == {"pause_s": 1.0}
    with pytest.raises(SchemaError) as e:
        load(tmp_path, "storage: local\nfaults:\n  - {kind: client_restart, pause_s: -1}\n")
    got = sorted((p.line, p.key, p.message) for p in e.value.problems)
    assert [(line, key) for line, key, _ in got] == [
        (8, "faults[0].at_s"), (8, "faults[0].kind"), (8, "faults[0].pause_s")]
    assert all(p.file.endswith("s.yaml") for p in e.value.problems)
    assert "client_restart needs storage: iscsi" in got[1][2]


def test_the_built_in_scenario():
    s = scenario.load("faults-client-restart")
    assert s.client.policy == "gorman-3.6" and s.expected == "completed"
    [f] = s.faults
    assert (f.kind, f.at_s, f.pause_s) == ("client_restart", 15.0, 2.0)
    assert s.client.workloads == scenario.load("contention").client.workloads


@pytest.mark.root
def test_the_injector_kills_the_client_by_pid_and_starts_the_next(tmp_path):
    run = RunContext.create(base_dir=tmp_path, name="faults", clean_stale=False)
    try:
        first = subprocess.Popen(["sleep", "60"])
        procs = {"client": first}
        origins = []

        def start_client(origin: float) -> int:
            origins.append(origin)
            procs["client"] = subprocess.Popen(["sleep", "60"])
            return 2
        inj = faults.Injector([faults.ClientRestart(at_s=0.2, pause_s=0.3)], faults.Plant(
            run_dir=run.dir, network=None, procs=procs, start_target=lambda: None,
            register=run.register, unregister=run.unregister, start_client=start_client))
        start = time.monotonic()
        (run.dir / "client.ndjson").write_text(json.dumps(
            {"t": 0.0, "events": [{"event": "load_started", "monotonic": start}]}) + "\n")
        deadline = start + 5
        while not inj.faults[0].ended and time.monotonic() < deadline:
            inj.poll()
            time.sleep(0.05)
        assert first.returncode == -signal.SIGKILL
        assert origins == [start] and procs["client"].poll() is None
        lines = [json.loads(x) for x in (run.dir / "faults.ndjson").read_text().splitlines()]
        assert [x["phase"] for x in lines] == ["start", "end"]
        assert lines[0]["outcome"] == f"ok: storage client pid {first.pid} killed (SIGKILL)"
        assert lines[1]["outcome"].startswith("ok: storage client started again (incarnation 2")
        procs["client"].kill()
        procs["client"].wait(5)
    finally:
        run.close()


def test_a_restarted_clients_samples_are_on_the_runs_axis():
    out = io.StringIO()
    stream = RunClockStream(out, lambda: 17.25)
    stream.write(json.dumps({"t": 0.5, "free": 3}) + "\n")
    assert json.loads(out.getvalue()) == {"t": 17.75, "free": 3}


def test_journal_mismatches_degrade_the_run_and_are_shown():
    j = {"bytes_checked": 8192, "pages_checked": 2, "mismatches": 1, "restarts": 1,
         "acked_writes": 3, "acked_after_restart": 1, "pages_with_write_in_flight": 0,
         "notes": ["j.ndjson: the last record ... ignored"]}
    line = summ.journal_line(j)
    assert line.startswith("write journal: 1 client restarts, 3 writes acknowledged (1 after")
    assert "2 pages (0.0 MiB) checked on the LUN, 1 mismatches" in line
    assert line.endswith("; j.ndjson: the last record ... ignored")
    assert summ.fault_lines({"integrity": {"journal": j}}) == [line]


def test_a_journal_mismatch_makes_the_run_degraded(tmp_path):
    s = load(tmp_path, "faults: [{kind: client_restart, at_s: 4}]\n")
    (tmp_path / "client-outcome.json").write_text(json.dumps({"verdict": "completed", "t": 1.0}))
    j = {"bytes_checked": 4096, "pages_checked": 1, "mismatches": 1, "restarts": 1}
    (tmp_path / "integrity.json").write_text(json.dumps(
        {"bytes_checked": 4096, "pages_checked": 1, "mismatches": 0, "journal": j}))
    got = summ.summarize(tmp_path, s, duration_s=1.0)
    assert got["verdict"] == "degraded" and got["integrity"]["journal"] == j
    assert got["reasons"] == ["read-back of the write journal found 1 mismatched pages"]


@pytest.mark.root
def test_a_client_still_down_when_the_load_ends_is_not_started_again(tmp_path):
    run = RunContext.create(base_dir=tmp_path, name="faults", clean_stale=False)
    try:
        procs = {"client": subprocess.Popen(["sleep", "60"])}
        started = []
        inj = faults.Injector([faults.ClientRestart(at_s=0, pause_s=30)], faults.Plant(
            run_dir=run.dir, network=None, procs=procs, start_target=lambda: None,
            register=run.register, unregister=run.unregister,
            start_client=lambda origin: started.append(origin) or 2))
        (run.dir / "client.ndjson").write_text(json.dumps(
            {"t": 0.0, "events": [{"event": "load_started", "monotonic": time.monotonic()}]})
            + "\n")
        inj.poll()
        inj.finish()
        assert started == [] and "client" not in procs
        end = json.loads((run.dir / "faults.ndjson").read_text().splitlines()[-1])
        assert end["phase"] == "end" and end["outcome"].startswith("not started again")
    finally:
        run.close()


def test_bytes_written_back_before_and_after_a_restart(tmp_path):
    (tmp_path / "faults.ndjson").write_text(json.dumps(
        {"t": 2.0, "event": "fault", "index": 0, "kind": "client_restart", "phase": "start",
         "at_s": 2.0, "when": None, "params": {"pause_s": 1.0}, "outcome": "ok"}) + "\n")
    samples = [{"t": 1.0, "writeback_bytes": 30}, {"t": 2.0, "writeback_bytes": 40},
               {"t": 3.5, "writeback_bytes": 5}, {"t": 5.0, "writeback_bytes": 50}]
    [f] = summ.faults(tmp_path, samples)
    assert (f["written_back_before_bytes"], f["written_back_after_bytes"]) == (40, 50)
