"""Frame and byte counters whose totals always add up.

Every frame the handler takes in is counted exactly once as *received* (per direction:
``rx`` = from the wire, ``tx`` = from the TAP, i.e. the stack) and, once its fate is
known, exactly once as *delivered* or *dropped* with one reason (a
``testbed.mm.DropReason``). Each count is kept per flow class: ``memalloc`` (a
registered flow whose socket is SOCK_MEMALLOC) and ``other``.

Only the finest cells are stored: per direction x class x outcome (received,
delivered, one per reason) x (frames, bytes). Every total is a sum of cells computed in
:meth:`Counters.snapshot`, so the totals cannot disagree with their parts, and
``in_flight = received - delivered - dropped`` is the frames still in the delay line
(zero whenever the handler is idle). Frames counted are whole Ethernet frames, without
the virtio header.

Cells live in plain lists of ints, one :class:`Tally` per worker thread (rx, tx, delay
line): each list has one writer, so no lock is needed on the hot path, and a snapshot
sums the tallies.
"""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

RX, TX = 0, 1
DIRECTIONS = ("rx", "tx")
MEMALLOC, OTHER = 0, 1
CLASSES = ("memalloc", "other")
RECEIVED, DELIVERED = 0, 1
FIRST_REASON = 2


class Tally(list):
    """One worker thread's cells: ``[frames, bytes]`` pairs, flat."""


class Counters:
    """The handler's counters. ``cell(direction, cls, outcome)`` gives the index of the
    frames cell (bytes is the next one) in every :class:`Tally`."""

    def __init__(self, reasons: Sequence) -> None:
        self.reasons = list(reasons)
        self.reason_slot = {r: FIRST_REASON + i for i, r in enumerate(self.reasons)}
        self.outcomes = FIRST_REASON + len(self.reasons)
        self.size = 2 * len(DIRECTIONS) * len(CLASSES) * self.outcomes
        self._tallies: list[Tally] = []
        self._lock = threading.Lock()
        self._extra = {d: {"csum_partial": 0, "gso": 0} for d in DIRECTIONS}

    def cell(self, direction: int, cls: int, outcome: int) -> int:
        return 2 * ((direction * len(CLASSES) + cls) * self.outcomes + outcome)

    def tally(self) -> Tally:
        """A new set of cells for one worker thread."""
        t = Tally([0] * self.size)
        with self._lock:
            self._tallies.append(t)
        return t

    def note(self, direction: int, what: str) -> None:
        """Count a frame property (``csum_partial``, ``gso``); rare, so locked."""
        with self._lock:
            self._extra[DIRECTIONS[direction]][what] += 1

    def _sum(self) -> list[int]:
        with self._lock:
            tallies = list(self._tallies)
        total = [0] * self.size
        for t in tallies:
            for i, v in enumerate(t):
                if v:
                    total[i] += v
        return total

    def snapshot(self) -> dict:
        """Nested, JSON-serialisable counters (see the module docstring)."""
        cells = self._sum()
        out: dict = {}
        for d, dname in enumerate(DIRECTIONS):
            per_class = {}
            for c, cname in enumerate(CLASSES):
                def pair(outcome: int) -> dict:
                    i = self.cell(d, c, outcome)
                    return {"frames": cells[i], "bytes": cells[i + 1]}
                reasons = {r.name: pair(self.reason_slot[r]) for r in self.reasons}
                per_class[cname] = _block(pair(RECEIVED), pair(DELIVERED), reasons)
            reasons = {r.name: _add(per_class[c]["reasons"][r.name] for c in CLASSES)
                       for r in self.reasons}
            block = _block(_add(per_class[c]["received"] for c in CLASSES),
                           _add(per_class[c]["delivered"] for c in CLASSES), reasons)
            block["classes"] = per_class
            with self._lock:
                block.update(self._extra[dname])
            out[dname] = block
        return out


def _add(pairs: Iterable[dict]) -> dict:
    frames = bytes_ = 0
    for p in pairs:
        frames += p["frames"]
        bytes_ += p["bytes"]
    return {"frames": frames, "bytes": bytes_}


def _block(received: dict, delivered: dict, reasons: dict) -> dict:
    dropped = _add(reasons.values())
    in_flight = {k: received[k] - delivered[k] - dropped[k] for k in ("frames", "bytes")}
    return {"received": received, "delivered": delivered, "dropped": dropped,
            "in_flight": in_flight, "reasons": reasons}
