"""Reference solution of lab 1: the answers, computed from a work folder's runs.

    python instructor/labs/01-deadlock/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml the way a careful student would read the runs of
runs/none (see README.md here for the reasoning behind each answer).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.grading import BatchFolder, evidence, fill_answers


def solve(work: Path) -> dict:
    runs = BatchFolder.open(work / "runs/none", work).policy_runs("none")
    lockups = sum(r.verdict == "lockup" for r in runs)
    out = {"lockups": lockups,
           "none_locks_up": evidence.word(evidence.verdict_test(runs, "lockup").supported),
           "why_no_progress": "b",
           # the short answers (a TA grades them with rubric.yaml); the predictions are the
           # student's own, recorded before the runs: a solution does not make them
           "prediction_vs_result": (
               f"{lockups} of my {len(runs)} runs locked up, and the allocations that failed "
               f"were atomic ones, as the chain predicts: a received frame needs an skb "
               f"allocated with GFP_ATOMIC, which fails at the atomic floor (3/8 of min), so "
               f"the target's answers were dropped (NOMEM) and writeback could not complete."),
           "why_downloads_hold_memory": (
               "The downloaders are blocked in balance_dirty_pages() by the dirty limits, "
               "waiting for writeback, so they do not read their sockets: the received data "
               "stays in the receive queues until writeback progresses, which needs the "
               "target's answers that cannot get memory."),
           }
    run = next((r for r in runs if r.finished and r.verdict == "lockup"), None)
    if run is None:                        # nothing to read: the figures stay blank
        return {**out, "lockup_run": "none"}
    lk = run.summary["lockup"]
    fails = lk["alloc_fail"]
    reasons = {k: v for k, v in run.summary["drops"]["memalloc"].items() if k != "total"}
    last = [s for s in run.all_samples if s["t"] <= lk["t"]][-1]     # step 3's last line
    return {
        **out,
        "lockup_run": run.path.name,
        # the middle panel of memory.png: the last time written-back bytes grew
        "writeback_stopped_s": round(run.last_progress_t(), 1),
        "lockup_s": round(lk["t"], 1),
        "free_pages_at_lockup": lk["free"],
        "min_watermark_pages": lk["wmark_min"],
        "free_vs_min": "below" if lk["free"] < lk["wmark_min"] else "above",
        "failed_allocation": max(fails, key=fails.get),
        "storage_frames_dropped": run.drops("memalloc"),
        "storage_drop_reason": max(reasons, key=reasons.get) if any(reasons.values()) else "none",
        "skb_pages_at_lockup": last["skb"],
        "dirty_pages_at_lockup": last["dirty"],
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
