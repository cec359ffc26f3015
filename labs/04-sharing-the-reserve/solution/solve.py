"""Reference solution of lab 4: the answers, computed from a work folder's runs.

    python labs/04-sharing-the-reserve/solution/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/threshold (see README.md here).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.grading import BatchFolder, fill_answers

KEY = "client.threshold"


def lowest_free(run) -> int:
    return min(s["free"] for s in run.all_samples)      # what step 2 prints


def trend(low: float, high: float) -> str:
    return "down" if high < low else "up" if high > low else "flat"


def solve(work: Path) -> dict:
    sweep = BatchFolder.open(work / "runs/threshold", work)
    by_t = {float(r.params[KEY]): r.run for r in sweep.runs}
    key = lambda t: int(t) if t == int(t) else t          # noqa: E731  (0 and 1, not 0.0)
    clean = [t for t, run in by_t.items()
             if run.verdict == "completed" and run.drops("memalloc") == 0]
    chosen = min(clean, key=lambda t: (by_t[t].drops("other"), -t))
    r0, r1 = by_t[0.0], by_t[1.0]
    return {
        "other_drops": {key(t): run.drops("other") for t, run in by_t.items()},
        "completion_s": {key(t): round(run.time_s, 2) for t, run in by_t.items()},
        "lowest_free_pages": {key(t): lowest_free(run) for t, run in by_t.items()},
        "other_drops_trend": trend(r0.drops("other"), r1.drops("other")),
        "lowest_free_trend": trend(lowest_free(r0), lowest_free(r1)),
        "storage_drops_total": sum(run.drops("memalloc") for run in by_t.values()),
        "chosen_threshold": key(chosen),
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
