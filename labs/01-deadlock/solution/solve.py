"""Reference solution of lab 1: the answers, computed from a work folder's runs.

    python labs/01-deadlock/solution/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml the way a careful student would read the run folder
runs/none (see README.md here for the reasoning behind each answer).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.grading import RunFolder, fill_answers


def solve(work: Path) -> dict:
    run = RunFolder.open(work / "runs/none", work)
    lk = run.summary["lockup"]
    fails = lk["alloc_fail"]
    reasons = {k: v for k, v in run.summary["drops"]["memalloc"].items() if k != "total"}
    first = [s for s in run.all_samples if s["t"] <= lk["t"]][-1]     # step 3's last line
    return {
        # the middle panel of memory.png: the last time written-back bytes grew
        "writeback_stopped_s": round(run.last_progress_t(), 1),
        "lockup_s": round(lk["t"], 1),
        "free_pages_at_lockup": lk["free"],
        "min_watermark_pages": lk["wmark_min"],
        "free_vs_min": "below" if lk["free"] < lk["wmark_min"] else "above",
        "failed_allocation": max(fails, key=fails.get),
        "storage_frames_dropped": run.drops("memalloc"),
        "storage_drop_reason": max(reasons, key=reasons.get) if reasons else "none",
        "skb_mib_at_lockup": round(first["skb"] / 256, 2),
        "dirty_mib_at_lockup": round(first["dirty"] / 256, 2),
        "why_no_progress": "b",
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
