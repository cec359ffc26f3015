"""Seeded loads drawn from the ranges.

Plain :class:`random.Random` with the campaign's seed: the same seed and ranges give
the same loads, in the same order, on any machine (``random.Random`` is specified to be
reproducible across platforms for a given seed). Hypothesis was considered: its
strategies and shrinking are built for many cheap test cases inside a test run, not for
a few hundred runs of a minute each that must be logged, resumed and shrunk one
confirmed run at a time, so the shrinker is written plainly (:mod:`.shrink`).

Every key is drawn independently and uniformly: a choice from ``choices``, an integer
from ``min..max`` when both bounds are integers, a point of the ``step`` grid from
``min`` when a step is given, else a number rounded to :data:`DIGITS` decimals (a load
is read by people and written into a scenario file) and kept inside the range.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .ranges import Load, Range, Ranges

DIGITS = 2


def sample(ranges: Ranges, rng: random.Random) -> Load:
    """One load: a value for every key of ``ranges``, in the file's order."""
    return {key: draw(r, rng) for key, r in ranges.items}


def draw(r: Range, rng: random.Random) -> Any:
    """One value of one range."""
    if r.choices is not None:
        return rng.choice(r.choices)
    if r.step:
        n = math.floor((r.max - r.min) / r.step + 1e-9)
        return snap(r.min + r.step * rng.randint(0, n), r)
    if r.integer:
        return rng.randint(r.min, r.max)
    return min(max(round(rng.uniform(r.min, r.max), DIGITS), r.min), r.max)


def snap(value: float, r: Range) -> Any:
    """``value`` as the range writes its numbers: an int for an integer range, else
    rounded (to the step's grid when it has one, so that 0.1 steps give 0.3, not
    0.30000000000000004)."""
    if r.integer:
        return int(round(value))
    if r.step:
        k = round((value - r.min) / r.step)
        decimals = max(0, -math.floor(math.log10(r.step))) + DIGITS
        return round(r.min + k * r.step, decimals)
    return round(value, DIGITS)
