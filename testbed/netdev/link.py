"""Link effects in user space: delay, random loss, and fault hooks for tests.

This kernel has no ``sch_netem``, so the client link's delay and loss are made here.

*Delay* (:class:`DelayLine`): a frame due at ``t`` goes into a heap ordered by due
time; one dedicated thread sleeps until the earliest due time (a condition variable
with a timeout, woken early only when a new frame becomes the earliest) and then
finishes every due frame. A timed wait in Python wakes 50-150 us late here; the line
learns that lateness and wakes as much earlier, so a 1 ms delay stays within 10 %. No thread sleeps per frame, so the line holds thousands of
frames at once. A frame waiting in the line keeps its skb, as a frame sitting in a
device queue keeps its buffer: delay costs memory, as it does in a real stack.

*Loss* (:class:`Loss`): each frame is lost with probability ``p`` (per direction),
before it reaches the NIC, so a lost frame never gets an skb (reason ``LINK_LOSS``).

*Faults* (:class:`Faults`, ``handler.faults``): drop the next N frames of one flow, or
everything for T seconds (reason ``FAULT``), to provoke retransmissions and
reconnects in tests. ``armed`` is a plain attribute the hot path reads once per frame.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from typing import Callable, Optional

from .errors import HandlerConfigError
from .flows import FlowKey

DIRS = ("rx", "tx", "both")
# Never release a frame more than 0.2 ms early: the typical wake-up lateness here is
# 50-150 us; a loaded machine wakes later still, and then frames are late, never early.
MAX_SLACK = 0.0002


def _check_pct(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise HandlerConfigError(f"{name}={value!r}: not a number") from None
    if not 0.0 <= v <= 100.0:
        raise HandlerConfigError(f"{name}={value!r}: not within 0..100 %")
    return v


def per_direction(value, name: str, check: Callable[[float, str], float]) -> tuple[float, float]:
    """``x`` or ``(rx, tx)`` -> ``(rx, tx)``, each checked."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise HandlerConfigError(f"{name}={value!r}: give one value or (rx, tx)")
        return check(value[0], f"{name}[rx]"), check(value[1], f"{name}[tx]")
    v = check(value, name)
    return v, v


def check_delay_ms(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise HandlerConfigError(f"{name}={value!r}: not a number") from None
    if not 0.0 <= v <= 10_000.0:
        raise HandlerConfigError(f"{name}={value!r}: not within 0..10000 ms")
    return v


class Loss:
    """Independent random loss with probability ``pct`` % per frame."""

    def __init__(self, pct: float, seed: Optional[int] = None, name: str = "loss_pct"):
        self.pct = _check_pct(pct, name)
        self._p = self.pct / 100.0
        self._random = random.Random(seed).random

    def __bool__(self) -> bool:
        return self._p > 0.0

    def lost(self) -> bool:
        return self._random() < self._p


class DelayLine:
    """A timer heap with one thread: ``put(due, fn, *args)`` calls ``fn(*args)`` at ``due``
    (``time.monotonic()`` seconds)."""

    def __init__(self, name: str):
        self._heap: list = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0
        # How late a timed wait wakes up (thread wake-up and GIL hand-off), learnt as a
        # moving average; the line wakes that much early so frames leave on time.
        self.slack = 0.0

    def start(self) -> None:
        self._thread.start()

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, due: float, fn: Callable, *args) -> None:
        item = (due, next(self._seq), fn, args)
        with self._cond:
            heapq.heappush(self._heap, item)
            if self._heap[0] is item:
                self._cond.notify()

    def _run(self) -> None:
        heap, cond, monotonic = self._heap, self._cond, time.monotonic
        while True:
            with cond:
                while not self._stopping:
                    if not heap:
                        cond.wait(0.5)
                        continue
                    target = heap[0][0] - self.slack
                    wait = target - monotonic()
                    if wait <= 0:
                        break
                    if not cond.wait(wait):            # timed out: learn the oversleep
                        over = min(monotonic() - target, 2 * MAX_SLACK)   # clip outliers
                        self.slack = min(MAX_SLACK, max(0.0, 0.9 * self.slack + 0.1 * over))
                if self._stopping:
                    return
                horizon = monotonic() + self.slack
                due = []
                while heap and heap[0][0] <= horizon:
                    due.append(heapq.heappop(heap))
            for _, _, fn, args in due:
                try:
                    fn(*args)
                except Exception:   # a finishing step must not kill the line
                    self.errors += 1

    def stop(self, timeout: float = 2.0) -> list:
        """Stop the thread; return the (fn, args) that were still waiting."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left = [(fn, args) for _, _, fn, args in sorted(self._heap)]
            self._heap.clear()
        return left


class Faults:
    """Fault hooks: ``drop_next(key, n)`` and ``blackhole(seconds)``."""

    def __init__(self, lookup_key: Callable[[FlowKey, bool], tuple]) -> None:
        self._lock = threading.Lock()
        self._raw = lookup_key
        self._drop: dict[tuple[int, tuple], int] = {}   # (direction, raw key) -> frames left
        self._until = 0.0
        self.armed = False          # read by the hot path: any fault pending?

    def drop_next(self, key: FlowKey, n: int, direction: str = "both") -> None:
        """Drop the next ``n`` frames of flow ``key`` in ``direction`` (rx, tx, both;
        with both, ``n`` counts frames of either direction)."""
        if not isinstance(key, FlowKey):
            raise HandlerConfigError(f"faults.drop_next: key must be a FlowKey, not {type(key).__name__}")
        if not isinstance(n, int) or n < 0:
            raise HandlerConfigError(f"faults.drop_next: n={n!r} is not a count")
        if direction not in DIRS:
            raise HandlerConfigError(f"faults.drop_next: direction={direction!r} not in {DIRS}")
        with self._lock:
            counter = [n]       # shared by both directions when direction == "both"
            for d, inbound in ((0, True), (1, False)):
                if direction in (("rx", "tx")[d], "both"):
                    slot = (d, self._raw(key, inbound))
                    if n:
                        self._drop[slot] = counter
                    else:                   # n = 0 cancels an earlier drop_next
                        self._drop.pop(slot, None)
            self._rearm()

    def blackhole(self, seconds: float) -> None:
        """Drop every frame, both directions, for ``seconds`` from now."""
        try:
            s = float(seconds)
        except (TypeError, ValueError):
            raise HandlerConfigError(f"faults.blackhole: seconds={seconds!r} is not a number") from None
        if not 0 <= s <= 3600:
            raise HandlerConfigError(f"faults.blackhole: seconds={seconds!r} not within 0..3600")
        with self._lock:
            self._until = time.monotonic() + s
            self._rearm()

    def clear(self) -> None:
        with self._lock:
            self._drop.clear()
            self._until = 0.0
            self._rearm()

    def _rearm(self) -> None:
        self.armed = bool(self._drop) or self._until > time.monotonic()

    def hit(self, direction: int, key: Optional[tuple]) -> bool:
        """Whether this frame is to be dropped by a fault (consumes a drop_next count)."""
        with self._lock:
            if self._until > time.monotonic():
                return True
            if key is not None:
                counter = self._drop.get((direction, key))
                if counter is not None and counter[0] > 0:
                    counter[0] -= 1
                    if counter[0] == 0:
                        for k in [k for k, c in self._drop.items() if c is counter]:
                            del self._drop[k]
                    self._rearm()
                    return True
            self._rearm()
            return False
