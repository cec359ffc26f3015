"""Lecture mode's server (testbed.report.live) on a real folder whose client.ndjson grows:
the page, the JSON rows as lines are appended (a torn line waits for its end), the
verdict once summary.json appears, 127.0.0.1 only, a port in use refused by name, and
the port free again after the server stops (also when the block is left by Ctrl-C)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from testbed.errors import ConfigError, EnvironmentProblem
from testbed.report import live


def sample(t: float, free: int, storage: int = 0, other: int = 0,
           reserve: int = 0) -> dict[str, Any]:
    """A client sample with the keys the page reads (as nodes/ writes them)."""
    cls = lambda n: {"dropped": {"frames": n, "bytes": 1500 * n}}   # noqa: E731
    return {"t": t, "free": free, "total": 8192, "wmark_min": 181, "wmark_low": 226,
            "wmark_high": 271, "dirty": 1024, "writeback": 256, "reserve": {"client-eth0": reserve},
            "lockup": False,
            "net": {"rx": {"classes": {"memalloc": cls(storage), "other": cls(other)}}}}


def append(folder: Path, text: str) -> None:
    with open(folder / "client.ndjson", "a") as f:
        f.write(text)


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read()


def data(srv: live.LiveServer, run: str = "", since: int = 0) -> dict[str, Any]:
    return json.loads(get(f"{srv.url}data?run={run}&since={since}")[2])


def port_free(port: int) -> bool:
    """Can a new server listen on the port? (SO_REUSEADDR as every server sets it: the
    closed connections' TIME_WAIT does not hold the port, a listener still would.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((live.HOST, port))
            s.listen()
        except OSError:
            return False
    return True


SUMMARY = {"scenario": "contention", "policy": "gorman-3.6", "expected": "completed",
           "verdict": "completed", "status": "finished",
           "integrity": {"bytes_checked": 2**20, "mismatches": 0},
           "writeback": {"time_s": 12.5, "bytes": 40 * 2**20, "mb_s": 3.2},
           "drops": {"memalloc": {"total": 0}, "other": {"total": 7, "PFMEMALLOC": 7}}}


def test_rows_grow_with_the_stream_and_the_verdict_follows_the_summary(tmp_path: Path) -> None:
    run = tmp_path / "20261129-run-contention-abc"
    run.mkdir()
    srv = live.LiveServer(lambda: run, port=0)
    try:
        assert srv.url == f"http://127.0.0.1:{srv.port}/"
        assert not port_free(srv.port)                          # (the check can fail)
        status, ctype, body = get(srv.url)
        assert status == 200 and ctype.startswith("text/html") and b"<canvas" in body
        assert b"http" not in body.split(b"<script>")[1]        # nothing fetched from outside

        got = data(srv)                                         # no stream yet
        assert got["run"] == run.name and got["rows"] == [] and got["outcome"] is None

        append(run, json.dumps(sample(0.5, 8000)) + "\n"
               + json.dumps(sample(1.0, 6000, 1, 4, 3)) + "\n")
        got = data(srv, run.name)
        cols = {c: i for i, c in enumerate(got["columns"])}
        assert [r[cols["t"]] for r in got["rows"]] == [0.5, 1.0]
        last = got["rows"][-1]
        assert last[cols["free"]] == pytest.approx(6000 * 4096 / 2**20, abs=1e-3)
        assert last[cols["wmark_min"]] == pytest.approx(181 * 4096 / 2**20, abs=1e-3)
        assert [last[cols[k]] for k in ("reserve", "drops_storage", "drops_other")] == [3, 1, 4]

        line = json.dumps(sample(1.5, 5000, 2, 9))
        append(run, line[:40])                                  # the writer is mid-line
        got = data(srv, run.name, since=2)
        assert got["rows"] == [] and got["next"] == 2
        append(run, line[40:] + "\n")
        got = data(srv, run.name, since=2)
        assert [r[cols["free"]] for r in got["rows"]] == [
            pytest.approx(5000 * 4096 / 2**20, abs=1e-3)]
        assert data(srv, "another-run", since=3)["since"] == 0   # a page of another run: all rows

        (run / "summary.json").write_text(json.dumps(SUMMARY))
        got = data(srv, run.name, since=3)
        assert got["title"] == "contention (gorman-3.6)"
        o = got["outcome"]
        assert (o["verdict"], o["expected"]) == ("completed", "completed")
        assert o["lines"][0].startswith("completed in 12.5s")
    finally:
        srv.stop()
    assert port_free(srv.port)


def test_unknown_path_is_404(tmp_path: Path) -> None:
    srv = live.LiveServer(lambda: tmp_path, port=0)
    try:
        with pytest.raises(urllib.request.HTTPError) as exc:
            get(srv.url + "etc/passwd")
        assert exc.value.code == 404
    finally:
        srv.stop()


def test_listens_on_loopback_only(tmp_path: Path) -> None:
    srv = live.LiveServer(lambda: tmp_path, port=0)
    try:
        assert srv._httpd.server_address[0] == "127.0.0.1"
    finally:
        srv.stop()


def test_a_port_in_use_is_refused_by_name(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind((live.HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EnvironmentProblem,
                           match=f"--live-port {port}: port {port} on 127.0.0.1 is in use"):
            live.LiveServer(lambda: tmp_path, port=port)


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_port_out_of_range_is_a_config_error(tmp_path: Path, port: int) -> None:
    with pytest.raises(ConfigError, match=f"--live-port {port}: a port is 1 to 65535"):
        live.LiveServer(lambda: tmp_path, port=port)


def test_serve_stops_and_frees_the_port_on_ctrl_c(tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with live.serve(lambda: tmp_path, port=0, say=said.append) as srv:
            data(srv)                                           # a page is watching
            t0 = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - t0 < live.LINGER_S               # Ctrl-C does not linger
    assert said == [f"live: {srv.url} (open it in a browser on this machine; it stops with "
                    f"the run)"]
    assert port_free(srv.port)
    with pytest.raises(OSError):
        get(srv.url)


def test_a_watching_page_gets_the_verdict_before_the_server_stops(tmp_path: Path) -> None:
    """At the end of a run the server waits (LINGER_S at most) for a page that is
    polling to fetch the verdict; with nobody watching it stops at once."""
    srv = live.LiveServer(lambda: tmp_path, port=0)
    data(srv)                                                   # watching, no verdict yet
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 >= live.LINGER_S * 0.9         # it waited for the page

    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    srv = live.LiveServer(lambda: tmp_path, port=0)
    assert data(srv)["outcome"]["verdict"] == "completed"
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.0                          # the page has it: no wait


def test_the_linger_waits_for_the_last_runs_verdict_not_an_earlier_one(tmp_path: Path) -> None:
    """In a compare, a page that had the first run's verdict has not seen the last one's."""
    first, last = tmp_path / "none", tmp_path / "gorman-3.6"
    for d in (first, last):
        d.mkdir()
    (first / "summary.json").write_text(json.dumps(SUMMARY))
    current = [first]
    srv = live.LiveServer(lambda: current[0], port=0)
    assert data(srv)["outcome"] is not None                     # the first run's verdict
    current[0] = last
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 >= live.LINGER_S * 0.9


def test_a_compare_follows_its_newest_run(tmp_path: Path) -> None:
    pick = live.newest_run(tmp_path)
    assert pick() is None
    for name in ("none", "gorman-3.6"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scenario.yaml").write_text("name: x\n")
        time.sleep(0.02)
    assert pick() == tmp_path / "gorman-3.6"
    feed = live.LiveFeed(pick)
    append(tmp_path / "gorman-3.6", json.dumps(sample(0.5, 8000)) + "\n")
    assert feed.data()["run"] == "gorman-3.6" and len(feed.data()["rows"]) == 1


def test_rows_after_the_outcome_are_cut_as_in_the_report(tmp_path: Path) -> None:
    """The client's last samples (it shuts down after the outcome) are not drawn once the
    summary says when the outcome was; a page that already has them starts again."""
    feed = live.LiveFeed(lambda: tmp_path)
    append(tmp_path, "".join(json.dumps(sample(t, 100)) + "\n" for t in (0.5, 1.0, 1.5)))
    assert feed.data(tmp_path.name)["next"] == 3
    (tmp_path / "summary.json").write_text(json.dumps({**SUMMARY, "end_t": 1.0}))
    got = feed.data(tmp_path.name, since=3)
    assert got["since"] == 0 and [r[0] for r in got["rows"]] == [0.5, 1.0]
    assert feed.data(tmp_path.name, since=2)["rows"] == []


def test_a_kernel_clients_drops_are_not_figures_but_n_a() -> None:
    """A kernel client's samples carry no packet handler's counters: the row says so
    (None, shown as n/a), where it used to give 0 frames dropped."""
    emulated = live.row(sample(1.0, 500, storage=3, other=7))
    kernel = {k: v for k, v in sample(1.0, 500).items() if k != "net"}
    by = dict(zip(live.COLUMNS, live.row(kernel)))
    assert dict(zip(live.COLUMNS, emulated))["drops_other"] == 7
    assert by["drops_storage"] is None and by["drops_other"] is None
    assert by["free"] == dict(zip(live.COLUMNS, emulated))["free"]
    page = resources.files("testbed.report").joinpath("live.html").read_text()
    assert '?? "n/a (no packet handler)"' in page and "!== null" in page
