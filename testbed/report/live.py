"""Lecture mode: a page on 127.0.0.1 that draws a run as it goes (``run --live``).

The design is two small parts and no dependency beyond the standard library:

- :class:`LiveFeed` follows a run folder. It reads ``client.ndjson`` as the storage
  client appends to it (only the bytes added since the last read, a torn last line kept
  for the next read), turns each sample into one row of the figures the page draws (free
  memory and the three watermarks, dirty and writeback pages, the reserve in use,
  received frames dropped per flow class), and, once ``summary.json`` is there, the
  verdict with its evidence, and the rows cut at the outcome as the report's plots are
  (:func:`testbed.results.until_end`: later samples show the client shutting down).
  Which folder it follows is asked each time (a function): the orchestrator names the
  run's folder only once the run has started, and a compare runs one folder after
  another. A new folder starts a new series.
- :class:`LiveServer` serves that on 127.0.0.1 only: ``/`` is one HTML page whose small
  script polls ``/data?run=NAME&since=N`` (the rows after the N it already has) and draws
  on ``<canvas>``; nothing is fetched from anywhere else. It runs in a thread of the
  ``testbed`` process for as long as the run (a context manager: stopped and its port
  released on any exit, Ctrl-C too). When the run ends it waits a moment for a watching
  page to fetch the verdict (``LINGER_S``); the page then says the run is over and stops
  polling.

A port in use is an :class:`~testbed.errors.EnvironmentProblem` naming it, one out of range
a :class:`~testbed.errors.ConfigError` (port 0 picks a free one, printed with the URL). The
server is started before the run creates anything, so either leaves nothing behind.

Figures come from the same functions as the report's plots (:mod:`testbed.report.plots`,
:func:`testbed.report.summary.rx_drops`), the verdict's lines from
:func:`~testbed.report.summary.evidence`, the summary through :mod:`testbed.results`.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlparse

from .. import results
from ..errors import ConfigError, EnvironmentProblem
from .plots import PAGE_MIB, reserve_used
from .summary import cycle_lines, evidence, rx_drops

HOST = "127.0.0.1"          # never another interface: the page is for the lecturer's screen
DEFAULT_PORT = 8765
LINGER_S = 3.0              # after the run, for a watching page to fetch the verdict
WATCHING_S = 5.0            # a page that polled this recently is watching
MAX_ROWS = 2000             # per response: a page that joins late catches up in a few polls

# one row of the page's series, in this order (the page reads the names from /data)
COLUMNS = ("t", "free", "wmark_min", "wmark_low", "wmark_high", "dirty", "writeback",
           "reserve", "drops_storage", "drops_other", "lockup")

FolderSource = Callable[[], Optional[Path]]


def row(sample: dict[str, Any]) -> list[Any]:
    """One client sample as the page's row: memory in MiB, reserve in pages, drops in
    frames received (the report's drops.png counts the same). A kernel client's sample
    has no packet handler's counters: its drops per class are None (the page shows n/a,
    as the summary does), not zeros."""
    net = sample.get("net")
    drops: dict[str, Optional[int]] = rx_drops(net) if net else {"memalloc": None, "other": None}
    mib = lambda key: round(sample.get(key, 0) * PAGE_MIB, 3)   # noqa: E731
    return [sample.get("t", 0.0), mib("free"), mib("wmark_min"), mib("wmark_low"),
            mib("wmark_high"), mib("dirty"), mib("writeback"), reserve_used(sample),
            drops["memalloc"], drops["other"], bool(sample.get("lockup"))]


class LiveFeed:
    """The rows and the verdict of whichever run folder ``folder()`` names now."""

    def __init__(self, folder: FolderSource):
        self.folder = folder
        self.lock = threading.Lock()
        self._dir: Optional[Path] = None
        self._pos = 0
        self._buf = b""
        self._rows: list[list[Any]] = []

    def _follow(self) -> Optional[Path]:
        """Read what was appended to the current folder's client.ndjson."""
        d = self.folder()
        if d != self._dir:                        # a new run: a new series
            self._dir, self._pos, self._buf, self._rows = d, 0, b"", []
        if d is None:
            return None
        try:
            with open(d / "client.ndjson", "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return d
        self._pos += len(chunk)
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        for line in lines:
            try:
                sample = json.loads(line)
            except ValueError:                    # not a sample (a blank line)
                continue
            if isinstance(sample, dict) and "free" in sample:
                self._rows.append(row(sample))
        return d

    def data(self, run: str = "", since: int = 0) -> dict[str, Any]:
        """What the page asked for: the rows after ``since`` of run ``run`` (all of
        them when the run is another one), and the verdict once there is one."""
        with self.lock:
            d = self._follow()
            name = d.name if d is not None else ""
            summary = results.read_json(d / results.SUMMARY) if d is not None else None
            upto = len(self._rows)
            if summary is not None:               # the samples up to the outcome, as the report
                upto = len(results.until_end([{"t": r[0]} for r in self._rows], summary))
            # a page that has more (the client's last samples, shutting down) starts again
            start = since if run == name and 0 <= since <= upto else 0
            rows = self._rows[start:min(upto, start + MAX_ROWS)]
        return {"run": name, "columns": COLUMNS, "since": start, "rows": rows,
                "next": start + len(rows), **_describe(d, summary)}


def _describe(d: Optional[Path], summary: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The run's title and, once its summary.json is there, its verdict."""
    if d is None:
        return {"title": "waiting for the run to start", "outcome": None}
    if summary is None:
        return {"title": d.name, "outcome": None}
    try:
        lines = evidence(summary) + cycle_lines(summary)
    except (KeyError, TypeError, ValueError):     # a summary of another version: the verdict alone
        lines = []
    return {"title": f"{summary.get('scenario')} ({summary.get('policy')})",
            "outcome": {"verdict": summary.get("verdict"), "expected": summary.get("expected"),
                        "status": summary.get("status"), "lines": lines}}


def page() -> bytes:
    """The page: HTML, style and script in one file of this package."""
    return resources.files(__package__).joinpath("live.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:                     # noqa: N802 (the http.server name)
        url = urlparse(self.path)
        if url.path == "/":
            self._send(200, "text/html; charset=utf-8", page())
        elif url.path == "/data":
            q = parse_qs(url.query)
            try:
                since = int(q.get("since", ["0"])[0])
            except ValueError:
                since = 0
            got = self.server.feed.data(q.get("run", [""])[0], since)
            self.server.polled = time.monotonic()
            if got["outcome"] is not None:
                self.server.verdict_served = got["run"]
            self._send(200, "application/json", json.dumps(got).encode())
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002
        pass                                      # the run's progress line is the output


class _Server(ThreadingHTTPServer):
    daemon_threads = True                         # a hung page never holds the process

    def __init__(self, port: int, feed: LiveFeed):
        super().__init__((HOST, port), _Handler)
        self.feed = feed
        self.polled = float("-inf")
        self.verdict_served = ""                  # the run folder whose verdict a page has


class LiveServer:
    """The page's server on ``127.0.0.1:port``, in a thread; see the module docstring."""

    def __init__(self, folder: FolderSource, port: int = DEFAULT_PORT):
        if not 0 <= port <= 65535:
            raise ConfigError(f"--live-port {port}: a port is 1 to 65535 (0: a free one)")
        try:
            self._httpd = _Server(port, LiveFeed(folder))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EnvironmentProblem(
                    f"--live-port {port}: port {port} on {HOST} is in use: give another "
                    f"port, or --live-port 0 for a free one") from None
            raise EnvironmentProblem(f"--live-port {port}: cannot serve on {HOST}: "
                                     f"{exc.strerror}") from None
        self.port = self._httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="live-page", daemon=True)
        self._thread.start()

    def stop(self, linger: bool = True) -> None:
        """Stop serving and release the port; with ``linger``, first give a page that is
        watching up to LINGER_S to fetch the verdict."""
        h = self._httpd
        if linger and time.monotonic() - h.polled < WATCHING_S:
            # the last run's verdict, not an earlier one of the same compare
            last = h.feed.data()["run"]
            deadline = time.monotonic() + LINGER_S
            while h.verdict_served != last and time.monotonic() < deadline:
                time.sleep(0.1)
        h.shutdown()
        h.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serve(folder: FolderSource, port: int = DEFAULT_PORT,
          say: Callable[[str], None] = print) -> Iterator[LiveServer]:
    """Serve the live page for the duration of the ``with`` block (printing its URL)."""
    srv = LiveServer(folder, port)
    say(f"live: {srv.url} (open it in a browser on this machine; it stops with the run)")
    finished = False
    try:
        yield srv
        finished = True
    finally:
        srv.stop(linger=finished)               # Ctrl-C: stop at once


def newest_run(batch: Path) -> FolderSource:
    """For a compare: the run folder of the batch that started last (each run writes its
    scenario.yaml first)."""
    def pick() -> Optional[Path]:
        got = [(p.stat().st_mtime, p.parent) for p in batch.glob("*/scenario.yaml")]
        return max(got)[1] if got else None
    return pick
