"""Shrinking a counterexample toward the scenario's defaults, one key at a time.

A counterexample is a load under which the policy's claim failed. Most of its keys
usually have nothing to do with the failure; the load worth reading is the one closest
to the scenario as shipped that still fails. The shrinker finds it as delta debugging
does, one parameter at a time, with the predicate ``fails(load)`` (a run, in a campaign;
any function, in a test) deciding each candidate:

1. for each key whose value differs from the default, try the load with that key set
   back to its default; if it still fails, keep it;
2. otherwise, for a number, bisect between the default (passes) and the current value
   (fails), at most ``tries_per_key`` candidates in all for the key, keeping each
   midpoint that still fails: the smallest departure from the default that fails;
3. repeat the passes until one changes nothing (then no single key can go back to its
   default and still fail: the load is 1-minimal) or ``stop()`` says the time is up.

Only loads for which ``fails`` returned True are ever kept, and the first is the
counterexample itself, so the result always failed when it was run: a candidate that
passed, or gave no answer (a run without a verdict), is simply not taken. Each distinct
candidate is tried once (``known`` shares that between shrinks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .ranges import Load, Range
from .sampling import DIGITS, snap


@dataclass(frozen=True)
class Attempt:
    """One candidate tried: which key it moved, the load, and whether it still failed."""

    key: str
    load: Load
    failed: bool


@dataclass
class Shrunk:
    """The smallest failing load found, every attempt, and whether the passes converged
    (False: stopped by ``stop()`` with keys left to try)."""

    load: Load
    attempts: list[Attempt] = field(default_factory=list)
    converged: bool = False

    def changed(self, defaults: Mapping[str, Any]) -> Load:
        """The keys of the result that still differ from the defaults."""
        return {k: v for k, v in self.load.items() if defaults.get(k) != v}


def shrink(load: Load, defaults: Mapping[str, Any], fails: Callable[[Load], Optional[bool]],
           ranges: Optional[Mapping[str, Range]] = None, tries_per_key: int = 4,
           stop: Callable[[], bool] = lambda: False,
           known: Optional[dict[tuple, bool]] = None) -> Shrunk:
    """Shrink the failing ``load`` toward ``defaults``; see the module docstring.
    ``fails`` answers True, False, or None when it could not try (then nothing is
    learnt); ``ranges`` say how each key's numbers are written (integers, a step grid).
    ``known``: answers already had (:func:`mark` -> failed), shared between the shrinks
    of one campaign so that a candidate is run once however many counterexamples lead
    to it; it is updated with the new ones."""
    state = _State(dict(load), fails, stop, seen=known if known is not None else {})
    while not stop():
        before = dict(state.current)
        for key in list(load):
            if stop():
                break
            if state.current[key] != defaults.get(key):
                _shrink_key(state, key, defaults.get(key), (ranges or {}).get(key),
                            tries_per_key)
        if state.current == before and not stop():    # a whole pass, and nothing moved
            return Shrunk(state.current, state.attempts, converged=True)
    return Shrunk(state.current, state.attempts, converged=False)


@dataclass
class _State:
    current: Load
    fails: Callable[[Load], Optional[bool]]
    stop: Callable[[], bool]
    attempts: list[Attempt] = field(default_factory=list)
    seen: dict[tuple, bool] = field(default_factory=dict)

    def still_fails(self, key: str, value: Any) -> bool:
        """Try the current load with ``key`` = ``value``; keep it if it fails. A
        candidate is not tried once ``stop()`` is true, and one ``fails`` could not
        try (None: out of time) is neither recorded nor taken."""
        cand = {**self.current, key: value}
        mark = load_mark(cand)
        if mark not in self.seen:
            got = None if self.stop() else self.fails(cand)
            if got is None:
                return False
            self.seen[mark] = bool(got)
            self.attempts.append(Attempt(key, cand, self.seen[mark]))
        if self.seen[mark]:
            self.current = cand
        return self.seen[mark]


def load_mark(load: Load) -> tuple:
    """A load as a key of ``known`` (values by their repr: 1 and 1.0 differ, as they do
    in a scenario file)."""
    return tuple(sorted((k, repr(v)) for k, v in load.items()))


def _shrink_key(state: _State, key: str, default: Any, rng: Optional[Range],
                tries: int) -> None:
    """Step 1 and 2 of the module docstring for one key."""
    if state.still_fails(key, default) or not (_is_number(default) and
                                               _is_number(state.current[key])):
        return
    lo, hi = default, state.current[key]       # lo passes, hi fails
    for _ in range(tries - 1):
        if state.stop():
            return
        mid = _write(lo + (hi - lo) / 2, rng, lo, hi)
        if mid == lo or mid == hi:
            return                              # nothing left between them
        if state.still_fails(key, mid):
            hi = mid
        else:
            lo = mid


def _write(value: float, rng: Optional[Range], lo: Any, hi: Any) -> Any:
    """A midpoint as the key's values are written (see :func:`.sampling.snap`)."""
    if rng is not None and rng.numeric:
        return snap(value, rng)
    if isinstance(lo, int) and isinstance(hi, int):
        return int(round(value))
    return round(value, DIGITS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
