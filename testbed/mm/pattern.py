"""Deterministic file contents: what a writer wrote, recomputed for verification.

Every page of every file a writer workload writes is a function of
``(seed, file id, page index)``: a 24-byte header naming them, then 4072 bytes
cut from a 8 KiB random block (fixed by the seed) at an offset that depends on
the file and the page. A misplaced, torn, stale or zeroed page fails the
comparison; nothing needs to be kept to check it later. Building a page is two
slices and a join, so writers are not slowed by it.
"""

from __future__ import annotations

import random
import struct
import zlib
from functools import lru_cache

from .zone import PAGE_SIZE

_HEADER = struct.Struct("<8sQII")       # magic, seed, file id, page index
_MAGIC = b"TBPAGE01"
_BODY = PAGE_SIZE - _HEADER.size


@lru_cache(maxsize=64)
def _base(seed: int) -> bytes:
    return random.Random(seed).randbytes(2 * PAGE_SIZE)


def file_id(name: str) -> int:
    """A 32-bit id for a file name (the header names the file by it)."""
    return zlib.crc32(name.encode())


def page_pattern(seed: int, fid: int, index: int) -> bytes:
    """The 4096 bytes of page ``index`` of file ``fid`` under ``seed``."""
    start = (index * 2654435761 + fid * 40503) % PAGE_SIZE
    return _HEADER.pack(_MAGIC, seed & 0xFFFFFFFFFFFFFFFF, fid, index & 0xFFFFFFFF) + \
        _base(seed)[start:start + _BODY]


def pattern_bytes(seed: int, fid: int, offset: int, length: int) -> bytes:
    """The bytes at ``[offset, offset + length)`` of the file (any alignment)."""
    first, skip = divmod(offset, PAGE_SIZE)
    last = (offset + length + PAGE_SIZE - 1) // PAGE_SIZE
    data = b"".join(page_pattern(seed, fid, i) for i in range(first, last))
    return data[skip:skip + length]
