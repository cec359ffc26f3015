"""A small load generator: keep ``qd`` commands in flight for a while, count them.

Used by ``testbed iscsi bench`` and ``bench/bench_iscsi.py``. Like libiscsi's
``iscsi-perf``, each completion submits the next command from the receiver thread,
walking the LUN sequentially in ``size`` steps, so the figure is what one session
sustains with ``qd`` outstanding commands.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

from . import scsi
from .errors import IscsiTimeout
from .session import Session, Task


@dataclass
class PerfResult:
    rw: str
    size: int
    qd: int
    ios: int
    seconds: float
    errors: int
    first_error: Optional[str] = None

    @property
    def iops(self) -> float:
        return self.ios / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.ios * self.size / self.seconds / 1e6 if self.seconds else 0.0

    def __str__(self) -> str:
        text = (f"{self.rw:5s} {self.size // 1024:>4d} KiB qd {self.qd:<3d} "
                f"{self.iops:9.0f} IOPS {self.mb_per_s:8.1f} MB/s ({self.ios} I/Os in {self.seconds:.1f}s)")
        if self.errors:
            text += f", {self.errors} errors (first: {self.first_error})"
        return text


def run_load(session: Session, lun: int, size: int, qd: int, seconds: float, rw: str,
             capacity: int, block_size: int) -> PerfResult:
    """Sequential ``rw`` ('read' or 'write') of ``size``-byte commands, ``qd`` deep."""
    if size % block_size or size <= 0:
        raise ValueError(f"I/O size {size} is not a multiple of the {block_size}-byte block")
    blocks = size // block_size
    span = capacity // block_size - blocks
    if span <= 0:
        raise ValueError(f"I/O size {size} does not fit in the LUN ({capacity} bytes)")
    payload = os.urandom(size) if rw == "write" else None
    lock = threading.Lock()
    state = {"lba": 0, "ios": 0, "errors": 0, "inflight": 0, "stop": False, "first": None}
    drained = threading.Event()

    def next_cdb() -> scsi.Cdb:
        with lock:
            lba = state["lba"]
            state["lba"] = (lba + blocks) % span
        return scsi.read16(lba, blocks) if rw == "read" else scsi.write16(lba, blocks)

    def issue() -> None:
        if rw == "read":
            session.submit(next_cdb(), lun, read_length=size, callback=done)
        else:
            session.submit(next_cdb(), lun, data=payload, callback=done)

    def done(task: Task) -> None:
        with lock:
            if task.error is None:
                state["ios"] += 1
            else:
                state["errors"] += 1
                state["first"] = state["first"] or str(task.error)
            stop = state["stop"] or state["errors"] > 0
            if stop:
                state["inflight"] -= 1
                if state["inflight"] == 0:
                    drained.set()
        if not stop:
            issue()

    start = time.monotonic()
    for _ in range(qd):
        with lock:
            state["inflight"] += 1
        issue()
    time.sleep(seconds)
    with lock:
        state["stop"] = True
    ios_at_stop, end = state["ios"], time.monotonic()
    if not drained.wait(session.longest_wait()):
        raise IscsiTimeout(f"benchmark: {state['inflight']} commands never completed")
    return PerfResult(rw, size, qd, ios_at_stop, end - start, state["errors"], state["first"])
