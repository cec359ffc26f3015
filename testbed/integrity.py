"""Integrity: every page the target acknowledged, checked on the LUN by its checksum.

The storage client knows which pages of which files were acknowledged (written back
and completed) and what each should contain. At the end of a run it writes that down
as a :class:`Manifest`: runs of contiguous device pages, each page with the number of
valid bytes and their CRC-32. Anyone with the manifest and a way to read the LUN can
check it; the orchestrator does so from the target host, through the project's own
initiator in a fresh session, so the check is neither slowed by the client's shaped
link nor fooled by the client's own state.

A page whose bytes on the LUN have another checksum is a *mismatch*: lost, torn,
misplaced, stale or zeroed. Reads are issued several at a time, in large chunks.

A client that was killed and started again (the ``client_restart`` fault) leaves no
manifest of what it had acknowledged before; its writes are in the run's write journal
(:mod:`testbed.journal`) instead. :func:`verify_journal` checks every journalled page
with the same read-back, a page accepting more than one checksum where a write was in
flight at the crash (the journal's module docstring says why that is allowed).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .blockdev import BlockDevice
from .errors import TimeoutExpired

if TYPE_CHECKING:
    from .journal import PageExpectation

PAGE_SIZE = 4096
CHUNK_PAGES = 64           # pages per read request (256 KiB)
DEPTH = 8                  # read requests in flight


@dataclass
class Extent:
    """Pages ``first``.. of file ``name``, contiguous on the device from ``offset``.

    ``pages`` holds, per page, the number of valid bytes and their CRC-32 (or, from a
    journal, the set of CRC-32s the page may have: see :func:`verify_journal`).
    """

    name: str
    first: int
    offset: int
    pages: list[tuple[int, int | frozenset[int]]]


@dataclass
class Manifest:
    extents: list[Extent] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return sum(len(e.pages) for e in self.extents)

    def save(self, path: Path | str) -> None:
        data = {"page_size": PAGE_SIZE,
                "extents": [[e.name, e.first, e.offset, [list(p) for p in e.pages]]
                            for e in self.extents]}
        Path(path).write_text(json.dumps(data, separators=(",", ":")))

    @classmethod
    def load(cls, path: Path | str) -> "Manifest":
        data = json.loads(Path(path).read_text())
        if data.get("page_size") != PAGE_SIZE:
            raise ValueError(f"{path}: page_size {data.get('page_size')} is not {PAGE_SIZE}")
        return cls([Extent(str(name), int(first), int(off), [(int(n), int(c)) for n, c in pages])
                    for name, first, off, pages in data["extents"]])


@dataclass
class VerifyResult:
    """What a read-back of the acknowledged pages found."""

    bytes_checked: int = 0
    pages_checked: int = 0
    mismatches: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def to_dict(self) -> dict:
        return {"bytes_checked": self.bytes_checked, "pages_checked": self.pages_checked,
                "mismatches": self.mismatches, "examples": self.examples}


def _matches(got: int, want: int | frozenset[int]) -> bool:
    return got == want if isinstance(want, int) else got in want


def _requests(manifest: Manifest) -> list[Extent]:
    """The extents cut into read-sized pieces."""
    return [Extent(e.name, e.first + k, e.offset + k * PAGE_SIZE, e.pages[k:k + CHUNK_PAGES])
            for e in manifest.extents for k in range(0, len(e.pages), CHUNK_PAGES)]


def verify(device: BlockDevice, manifest: Manifest, timeout: float = 60.0) -> VerifyResult:
    """Read every page of ``manifest`` from ``device`` and compare checksums."""
    result = VerifyResult()
    lock = threading.Condition()
    errors: list[BaseException] = []
    pending = _requests(manifest)[::-1]    # popped from the end: in device order
    inflight = 0

    def check(piece: Extent, data: Optional[bytes], exc: Optional[BaseException]) -> None:
        nonlocal inflight
        with lock:
            inflight -= 1
            if exc is not None:
                errors.append(exc)
            else:
                for i, (n, crc) in enumerate(piece.pages):
                    result.pages_checked += 1
                    result.bytes_checked += n
                    if not _matches(zlib.crc32(data[i * PAGE_SIZE:i * PAGE_SIZE + n]), crc):
                        result.mismatches += 1
                        if len(result.examples) < 10:
                            result.examples.append(f"{piece.name} page {piece.first + i}")
            lock.notify()

    deadline = time.monotonic() + timeout
    with lock:
        while pending or inflight:
            if errors:
                raise errors[0]
            if pending and inflight < DEPTH:
                piece = pending.pop()
                inflight += 1
                lock.release()
                try:
                    device.submit_read(piece.offset, len(piece.pages) * PAGE_SIZE,
                                       lambda d, e, p=piece: check(p, d, e))
                finally:
                    lock.acquire()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutExpired(f"integrity check: {result.pages_checked} of "
                                     f"{manifest.pages} pages read after {timeout:g}s")
            lock.wait(min(left, 1.0))
        if errors:
            raise errors[0]
    return result


def journal_manifest(pages: dict[int, "PageExpectation"]) -> Manifest:
    """The journal's expected pages as extents of contiguous device pages (named
    ``lba`` and numbered by device page), each page with the CRC-32s it may have."""
    extents: list[Extent] = []
    for page in sorted(pages):
        want = pages[page]
        accepted = want.acked if not want.in_flight else want.accepted
        last = extents[-1] if extents else None
        if last is not None and last.first + len(last.pages) == page:
            last.pages.append((want.length, accepted))
        else:
            extents.append(Extent("lba", page, page * PAGE_SIZE, [(want.length, accepted)]))
    return Manifest(extents)


def verify_journal(device: BlockDevice, path: Path | str, timeout: float = 60.0) -> dict:
    """Check every page of a write journal on ``device``: the read-back's figures, the
    client incarnations the journal saw (``restarts``: one fewer), the pages that were
    allowed a write in flight, and the journal's notes (a torn last record)."""
    from .journal import expected_pages, read_journal
    read = read_journal(path)
    pages = expected_pages(read.records)
    result = verify(device, journal_manifest(pages), timeout)
    incs = read.incarnations
    return {**result.to_dict(), "restarts": max(0, len(incs) - 1),
            "acked_writes": sum(1 for r in read.records if r.op == "ack"),
            "acked_after_restart": read.acked_after(incs[0]) if incs else 0,
            "pages_with_write_in_flight": sum(1 for p in pages.values() if p.in_flight),
            "notes": read.notes}
