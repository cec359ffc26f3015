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
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .blockdev import BlockDevice
from .errors import TimeoutExpired

PAGE_SIZE = 4096
CHUNK_PAGES = 64           # pages per read request (256 KiB)
DEPTH = 8                  # read requests in flight


@dataclass
class Extent:
    """Pages ``first``.. of file ``name``, contiguous on the device from ``offset``.

    ``pages`` holds, per page, the number of valid bytes and their CRC-32.
    """

    name: str
    first: int
    offset: int
    pages: list[tuple[int, int]]


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
                    if zlib.crc32(data[i * PAGE_SIZE:i * PAGE_SIZE + n]) != crc:
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
