"""``make fuzz``: 10,000 broken scenario files, frames and iSCSI PDUs, with the counts.

The same cases as ``tests/core/test_scenario_fuzz.py``, ``tests/netdev/test_frame_fuzz.py``
and ``tests/iscsi/test_pdu_codec.py`` (``tests/support/malformed.py``,
``tests/support/frames.py``, ``tests/support/pdus.py``), many more of them, and
counted rather than stopped at the first failure: Hypothesis only generates here (no
shrinking), each outcome is tallied, and the first few failures are printed in full.

Scenario files: cases, typed errors (by class), accepted (a mistake the checker missed),
misplaced (a typed error not naming file, line or the broken key), crashes (any other
exception) and started (a process or a socket opened while loading; expected 0).
Frames: frames, each outcome (delivered per class, dropped per reason; MALFORMED per
header that is wrong), crashes, contract breaks (counted not exactly once, parse past
the end, explain disagreeing, a handler error), whether the storage flow was still
delivered afterwards, and what was left charged.
PDUs (random bytes, or valid PDUs mangled, given to the decoder with and without
digests): decoded, refused with a typed error (by class), crashes (any other exception)
and misread (a decoded PDU whose opcode is not the first byte's).

Usage: ``python -m tests.support.fuzz [--cases 10000] [--frames 10000] [--pdus 10000]``
(no root needed).
Exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hypothesis import HealthCheck, Phase, given, settings

from tests.support import frames as frame_cases
from tests.support import malformed
from tests.support.pdus import decode_outcome, decoder_input

SHOWN = 3       # failures printed in full


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))


@contextmanager
def _nothing_may_start(started: Counter) -> Iterator[None]:
    """Count (and refuse) every process or socket opened inside."""
    popen, sock = subprocess.Popen.__init__, socket.socket.__init__

    def refuse(what: str) -> Callable[..., Any]:
        def _refuse(*args: Any, **kwargs: Any) -> None:
            started[what] += 1
            raise RuntimeError(f"loading a scenario opened a {what}")
        return _refuse
    subprocess.Popen.__init__ = refuse("process")       # type: ignore[method-assign]
    socket.socket.__init__ = refuse("socket")           # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = popen               # type: ignore[method-assign]
        socket.socket.__init__ = sock                   # type: ignore[method-assign]


def fuzz_scenarios(n: int) -> bool:
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    started: Counter[str] = Counter()
    failures: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tb-fuzz-") as tmp:
        path = Path(tmp) / "case.yaml"

        @_settings(n)
        @given(case=malformed.broken_scenarios())
        def one(case: malformed.Case) -> None:
            outcome = malformed.load_case(path, case)
            counts[outcome.kind] += 1
            counts["text" if case.text_broken else "data"] += 1
            if outcome.kind == "typed":
                errors[outcome.detail.split(":")[0] if outcome.detail.startswith("ConfigError")
                       else "SchemaError"] += 1
            elif len(failures) < SHOWN:
                failures.append(f"{outcome.kind}: {outcome.detail}\n{case!r}")

        with _nothing_may_start(started):
            one()
    cases = counts["text"] + counts["data"]
    by_class = ", ".join(f"{k} {v}" for k, v in errors.most_common())
    print(f"scenario files: {cases} cases ({counts['data']} broken in the data, "
          f"{counts['text']} in the text), {counts['typed']} typed errors ({by_class}), "
          f"{counts['accepted']} accepted, {counts['misplaced']} misplaced, "
          f"{counts['crash']} crashes, {sum(started.values())} started; "
          f"{time.monotonic() - t0:.1f} s")
    for f in failures:
        print("  " + f.replace("\n", "\n  "))
    return counts["typed"] == cases and not started


def fuzz_frames(n: int) -> bool:
    rx = frame_cases.RxPath()
    failures: list[str] = []
    t0 = time.monotonic()
    try:
        @_settings(n)
        @given(case=frame_cases.frames())
        def one(case: tuple[bytes, bool]) -> None:
            verdict = rx.check(*case)
            if (verdict.outcome == "crash" or verdict.problem) and len(failures) < SHOWN:
                failures.append(f"{verdict.outcome}: {verdict.problem}")

        one()
        outcomes = dict(rx.outcomes)
        storage = rx.storage_still_flows()
        left = rx.leftovers()
    finally:
        rx.close()
    total = sum(outcomes.values())
    crashes, broken = outcomes.get("crash", 0), outcomes.get("contract broken", 0)
    print(f"frames: {total} frames, {crashes} crashes, {broken} contract breaks, "
          f"{rx.h.errors} handler errors; storage flow afterwards: "
          f"{'delivered as memalloc' if storage is None else storage}; "
          f"left behind: {', '.join(left) if left else 'nothing'}; {time.monotonic() - t0:.1f} s")
    for name, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {name}")
    for f in failures:
        print("  " + f.replace("\n", "\n  "))
    return crashes == 0 and broken == 0 and storage is None and not left and rx.h.errors == 0


def fuzz_pdus(n: int) -> bool:
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    failures: list[str] = []
    t0 = time.monotonic()

    @_settings(n)
    @given(case=decoder_input())
    def one(case: tuple[bytes, bool, bool]) -> None:
        raw, hd, dd = case
        try:
            kind, what = decode_outcome(raw, hd, dd)
        except Exception as exc:            # what the decoder must never raise
            kind, what = "crash", repr(exc)
        counts[kind] += 1
        if kind == "typed":
            errors[what] += 1
        elif kind != "decoded" and len(failures) < SHOWN:
            failures.append(f"{kind}: {what} from {raw.hex()} (digests {hd}, {dd})")

    one()
    by_class = ", ".join(f"{k} {v}" for k, v in errors.most_common())
    print(f"PDUs: {sum(counts.values())} cases, {counts['decoded']} decoded, "
          f"{counts['typed']} typed errors ({by_class}), {counts['crash']} crashes, "
          f"{counts['misread']} misread; {time.monotonic() - t0:.1f} s")
    for f in failures:
        print("  " + f)
    return counts["crash"] == 0 and counts["misread"] == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="scenario files (0: none)")
    ap.add_argument("--frames", type=int, default=10_000, help="frames (0: none)")
    ap.add_argument("--pdus", type=int, default=10_000, help="iSCSI PDUs (0: none)")
    args = ap.parse_args(argv)
    ok = True
    if args.cases:
        ok = fuzz_scenarios(args.cases) and ok
    if args.frames:
        ok = fuzz_frames(args.frames) and ok
    if args.pdus:
        ok = fuzz_pdus(args.pdus) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
