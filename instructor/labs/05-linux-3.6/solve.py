"""Reference solution of lab 5: the answers, computed from a work folder's runs.

    python instructor/labs/05-linux-3.6/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/compare (see README.md here).
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.grading import BatchFolder, evidence, fill_answers

POLICIES = ("phillips-2005", "gorman-3.6")
FILTER_REASON = {"phillips-2005": "NOT_MEMALLOC", "gorman-3.6": "PFMEMALLOC"}


def solve(work: Path) -> dict:
    compare = BatchFolder.open(work / "runs/compare", work)
    runs = {p: compare.policy_runs(p) for p in POLICIES}
    done = {p: [r for r in rs if r.finished] for p, rs in runs.items()}
    median = evidence.median

    def throttled(r) -> bool:
        return bool(r.all_samples[-1]["pgscan_direct_throttle"])

    gorman = next((r for r in done["gorman-3.6"] if throttled(r)), None)
    first = (next(s["t"] for s in gorman.all_samples if s["pgscan_direct_throttle"])
             if gorman else "none")
    drops = {p: median([r.drops("other", FILTER_REASON[p]) for r in rs])
             for p, rs in done.items()}
    throttles = {p: sum(throttled(r) for r in rs) for p, rs in done.items()}
    more = max(POLICIES, key=lambda p: drops[p] or 0)
    fewer = POLICIES[0] if more == POLICIES[1] else POLICIES[1]
    when = ("free memory fell to half the min watermark as a task was about to enter "
            "direct reclaim" if throttles["gorman-3.6"] else "free memory never sank to half "
            "the min watermark when a task was about to enter direct reclaim")
    why_more = ("Phillips' per-device rule drops only while a reserve buffer is out, which "
                "the credit-back keeps short, and gorman-3.6 has no 53 extra pages, so more "
                "of its frames land in pfmemalloc memory" if more == "gorman-3.6" else
                "Phillips drops every frame not for the storage socket while any reserve "
                "buffer of the device is out, Gorman only the frames whose buffer came from "
                "the reserve")
    return {
        "completions": {p: sum(r.verdict == "completed" for r in rs) for p, rs in runs.items()},
        "gorman_completes": evidence.word(
            evidence.verdict_test(runs["gorman-3.6"], "completed").supported),
        "min_watermark": {p: rs[0].samples[0]["wmark_min"] for p, rs in runs.items()},
        "added_reserve_pages": {p: sum(rs[0].samples[-1]["reserve_pages"].values())
                                for p, rs in runs.items()},
        "filter_drops": drops,
        "completion_s": {p: round(median([r.time_s for r in rs if r.verdict == "completed"])
                                  or 0.0, 2) for p, rs in runs.items()},
        "throttled_runs": throttles,
        "first_throttle_s": first,
        "throttle_limit_pages": runs["gorman-3.6"][0].samples[0]["wmark_min"] // 2,
        "who_is_throttled": "c",
        # the short answers (a TA grades them with rubric.yaml); the predictions are the
        # student's own, recorded before the runs: a solution does not make them
        "prediction_vs_result": (
            f"Direct reclaim was throttled in {throttles['gorman-3.6']} of "
            f"{len(done['gorman-3.6'])} gorman-3.6 runs (pgscan_direct_throttle above 0): "
            f"{when}. {more} dropped more frames of "
            f"other traffic (median {drops[more]} against {drops[fewer]} for {fewer}): "
            f"{why_more}."),
        "what_the_throttle_protects": (
            "A task in direct reclaim runs with PF_MEMALLOC and may allocate below the "
            "watermarks, and in 3.6 the memory under the min watermark is the network's only "
            "reserve. throttle_direct_reclaim() makes such a task wait on pfmemalloc_wait "
            "while free memory is at most half of min, until kswapd has freed memory, so that "
            "the pfmemalloc skbs of the SOCK_MEMALLOC iSCSI socket still find pages. The "
            "writer pays with the wait: its dirtying pauses (pgscan_direct_throttle counts "
            "each wait)."),
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
