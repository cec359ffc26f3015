"""Reference solution of lab 5: the answers, computed from a work folder's runs.

    python labs/05-linux-3.6/solution/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/compare (see README.md here).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.grading import BatchFolder, fill_answers

POLICIES = ("phillips-2005", "gorman-3.6")
FILTER_REASON = {"phillips-2005": "NOT_MEMALLOC", "gorman-3.6": "PFMEMALLOC"}


def solve(work: Path) -> dict:
    compare = BatchFolder.open(work / "runs/compare", work)
    runs = {p: compare.by_policy(p) for p in POLICIES}
    gorman = runs["gorman-3.6"]
    first = next((s for s in gorman.all_samples if s["pgscan_direct_throttle"]), None)
    return {
        "min_watermark": {p: r.samples[0]["wmark_min"] for p, r in runs.items()},
        "added_reserve_pages": {p: sum(r.samples[-1]["reserve_pages"].values())
                                for p, r in runs.items()},
        "filter_drops": {p: r.drops("other", FILTER_REASON[p]) for p, r in runs.items()},
        "completion_s": {p: round(r.time_s, 2) for p, r in runs.items()},
        "throttle_events": {p: r.all_samples[-1]["pgscan_direct_throttle"]
                            for p, r in runs.items()},
        "first_throttle_s": first["t"] if first else None,
        "throttle_limit_pages": gorman.samples[0]["wmark_min"] // 2,
        "who_is_throttled": "c",
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
