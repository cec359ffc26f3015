"""Metrics: one JSON object per line (NDJSON) every ``interval_s``.

Each sample has ``t`` (seconds since the machine started) and the memory
state in pages - ``free``, ``dirty``, ``writeback``, ``reclaimable``, ``file``,
``skb``, ``pdu``, ``kernel``, ``rmem`` (socket receive queues), the watermarks
``wmark_min/low/high`` - then ``reserve`` (``rx_reserve_used`` per device),
``alloc_fail`` (per class), the throttled tasks (``nr_throttled_dirty``,
``nr_throttled_reclaim``, ``nr_alloc_stalled``), ``writeback_bytes`` and the
counters in kernel names (``PFMemallocDrop``, ``pgscan_direct_throttle``,
``kswapd_failures``, ``allocstall``, ...), ``drops`` per reason.

Callers add their own fields with :meth:`Metrics.add_source`: a function
returning a dict merged into every sample (the packet handler's counters, the
dirty limits, the lockup state). A source that raises is reported in the
sample's ``source_errors`` instead of stopping the stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .manager import MemoryManager

MetricSource = Callable[[], dict[str, Any]]


class Metrics(threading.Thread):
    """Samples the memory manager and writes NDJSON to ``path`` or ``stream``."""

    def __init__(self, mm: "MemoryManager", interval_s: float = 0.1, *, path: Optional[str] = None,
                 stream: Optional[IO[str]] = None, started: Optional[float] = None,
                 keep: int = 36000) -> None:
        super().__init__(name="metrics", daemon=True)
        self.mm = mm
        self.interval_s = interval_s
        self.path = path
        self.stream = stream
        self.started = time.monotonic() if started is None else started
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep)
        self.sources: list[MetricSource] = []

    def add_source(self, source: MetricSource) -> None:
        self.sources.append(source)

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(time.monotonic() - self.started, 3)}
        out.update(self.mm.snapshot())
        errors = []
        for source in self.sources:
            try:
                out.update(source())
            except Exception as exc:
                errors.append(f"{getattr(source, '__qualname__', source)}: {exc}")
        if errors:
            out["source_errors"] = errors
        self.samples.append(out)
        return out

    def run(self) -> None:
        own = open(self.path, "w", encoding="utf-8") if self.path else None
        out = own or self.stream
        try:
            next_t = time.monotonic()
            while True:
                line = json.dumps(self.sample(), separators=(",", ":"))
                if out is not None:
                    out.write(line + "\n")
                    out.flush()
                next_t += self.interval_s
                if self.mm.wait_stopping(max(0.0, next_t - time.monotonic())):
                    break
            if out is not None:         # a last sample: the state at stop
                out.write(json.dumps(self.sample(), separators=(",", ":")) + "\n")
                out.flush()
        finally:
            if own is not None:
                own.close()
