"""The write journal: every write the storage client sent and the target acknowledged,
kept outside the emulated machine, so that an unclean restart can be checked.

The manifest (:mod:`testbed.integrity`) is written by the storage client when it ends;
a client killed with SIGKILL (the ``client_restart`` fault) writes none, and its
page cache - what it would have known - is gone with it. The journal is therefore an
append-only file in the run folder, written as the writes happen: the client's block
device is wrapped in a :class:`JournalingDevice`, which appends one record when a
write is submitted (``sub``) and one when the target acknowledged it (``ack``), each
naming the device offset and the CRC-32 of every 4 KiB page of the write. Each record
is one ``write(2)`` on an ``O_APPEND`` descriptor: once the call returns, the record is
in the host kernel's page cache and survives the process's death (the host does not
crash: only the emulated machine does). A record the SIGKILL cut in half can only be
the file's last line; :func:`read_journal` ignores it and says so in a note.

**What each page must hold** (:func:`expected_pages`). A page's contents on the LUN
must be those of the last write to it that the target acknowledged - or of a write to
it submitted after that one and never acknowledged: a write in flight at the crash
(or at the end of the run) may have reached the target and been done there, its
acknowledgement lost with the connection; the target owes the initiator nothing about
it, and a real disk after a crash equally holds either the old or the new data of a
write in flight. Writes are matched to their page by device offset, not by file: a
restarted client that lays its files out again may put other data on the same pages,
and the journal's last acknowledged write of the page is then that data.
A write acknowledged after a later-submitted one is not reordered by this: the page
cache never submits a page again while it is under writeback (``PG_writeback``), so
writes to one page are acknowledged in the order they were submitted.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

PAGE_SIZE = 4096


@dataclass
class Record:
    """One journal line: ``op`` ``sub`` or ``ack`` of write ``wid`` of incarnation ``inc``."""

    inc: int
    op: str
    wid: int
    offset: int
    crcs: list[int]
    tail: int = PAGE_SIZE          # bytes of the write's last page (a short write)

    def to_line(self) -> bytes:
        d = {"inc": self.inc, "op": self.op, "id": self.wid, "off": self.offset,
             "crcs": self.crcs}
        if self.tail != PAGE_SIZE:
            d["tail"] = self.tail
        return (json.dumps(d, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        rec = cls(int(d["inc"]), str(d["op"]), int(d["id"]), int(d["off"]),
                  [int(c) for c in d["crcs"]], int(d.get("tail", PAGE_SIZE)))
        if rec.op not in ("sub", "ack") or rec.offset % PAGE_SIZE or not rec.crcs:
            raise ValueError(f"not a journal record: {d}")
        return rec

    def pages(self) -> Iterable[tuple[int, int, int]]:
        """(page number on the device, valid bytes, CRC-32) of each page of the write."""
        first = self.offset // PAGE_SIZE
        last = len(self.crcs) - 1
        for i, crc in enumerate(self.crcs):
            yield first + i, self.tail if i == last else PAGE_SIZE, crc


def page_crcs(data: bytes | memoryview) -> tuple[list[int], int]:
    """CRC-32 of each 4 KiB page of ``data``, and the length of its last page."""
    view = memoryview(data)
    crcs = [zlib.crc32(view[k:k + PAGE_SIZE]) for k in range(0, len(view), PAGE_SIZE)]
    tail = len(view) - (len(crcs) - 1) * PAGE_SIZE if crcs else PAGE_SIZE
    return crcs, tail


class Journal:
    """The append-only journal file of one client incarnation (see the module docstring)."""

    def __init__(self, path: Path | str, incarnation: int):
        self.path = Path(path)
        self.incarnation = incarnation
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._next = 0

    def submitted(self, offset: int, data: bytes | memoryview) -> Record:
        crcs, tail = page_crcs(data)
        with self._lock:
            rec = Record(self.incarnation, "sub", self._next, offset, crcs, tail)
            self._next += 1
            self._append(rec)
        return rec

    def acknowledged(self, sub: Record) -> None:
        with self._lock:
            self._append(Record(sub.inc, "ack", sub.wid, sub.offset, sub.crcs, sub.tail))

    def _append(self, rec: Record) -> None:
        # one write(2) per record: in the host's page cache when it returns, whatever
        # happens to this process next (a record is a few hundred bytes: written whole)
        if self._fd >= 0:
            os.write(self._fd, rec.to_line())

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class JournalingDevice:
    """A BlockDevice that journals each write before it is sent and when it is acknowledged.

    Everything else is the wrapped device's (``session`` included)."""

    def __init__(self, device: Any, journal: Journal):
        self.device = device
        self.journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)

    @property
    def block_size(self) -> int:
        return self.device.block_size

    @property
    def capacity(self) -> int:
        return self.device.capacity

    def submit_write(self, offset: int, data: Any,
                     callback: Callable[[Optional[BaseException]], None]) -> None:
        rec = self.journal.submitted(offset, data)

        def done(exc: Optional[BaseException]) -> None:
            if exc is None:
                self.journal.acknowledged(rec)
            callback(exc)
        self.device.submit_write(offset, data, done)

    def submit_read(self, offset: int, length: int, callback: Callable[..., None]) -> None:
        self.device.submit_read(offset, length, callback)

    def flush(self, timeout: Optional[float] = None) -> None:
        self.device.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.device.close(timeout)
        finally:
            self.journal.close()


@dataclass
class JournalRead:
    """A journal file as read back: its records and what was wrong with it."""

    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def incarnations(self) -> list[int]:
        return sorted({r.inc for r in self.records})

    def acked_after(self, inc: int) -> int:
        """Writes acknowledged to incarnations after ``inc`` (a restarted client's)."""
        return sum(1 for r in self.records if r.op == "ack" and r.inc > inc)


def read_journal(path: Path | str) -> JournalRead:
    """The records of a journal file. A last line without its newline is a record the
    SIGKILL cut off: ignored, with a note. A bad line elsewhere is not expected (each
    record is one write); it is skipped with a note too, so the check still runs and
    says what it could not read."""
    out = JournalRead()
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()          # after the last newline: empty, or a torn record
    if torn:
        out.notes.append(f"{Path(path).name}: the last record ({len(torn)} bytes, no newline) "
                         f"was cut off when the client was killed; ignored")
    for n, line in enumerate(lines, 1):
        try:
            out.records.append(Record.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            out.notes.append(f"{Path(path).name} line {n}: unreadable record ignored ({exc})")
    return out


@dataclass
class PageExpectation:
    """What one device page may hold: the last acknowledged write's CRC-32, or one of
    a later write's that was in flight when its incarnation ended."""

    length: int
    acked: int
    in_flight: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> frozenset[int]:
        return frozenset([self.acked, *self.in_flight])


def expected_pages(records: list[Record]) -> dict[int, PageExpectation]:
    """Per device page number, what it must hold (see the module docstring).

    Pages never acknowledged are not checked: nothing was promised about them."""
    acked: dict[int, tuple[int, int]] = {}          # page -> (length, crc)
    # page -> (incarnation, write id) -> (length, crc), in the order they were sent
    pending: dict[int, dict[tuple[int, int], tuple[int, int]]] = {}
    for rec in records:
        key = (rec.inc, rec.wid)
        for page, length, crc in rec.pages():
            if rec.op == "sub":
                pending.setdefault(page, {})[key] = (length, crc)
            else:
                # acknowledged: this is the page's contents now; writes submitted before
                # it are done (in order, see the docstring), later ones stay in flight
                waiting = pending.get(page, {})
                order = list(waiting)
                later = order[order.index(key) + 1:] if key in waiting else order
                pending[page] = {k: waiting[k] for k in later}
                acked[page] = (length, crc)
    out = {}
    for page, (length, crc) in acked.items():
        out[page] = PageExpectation(length, crc, [c for _, c in pending.get(page, {}).values()
                                                  if c != crc])
    return out
