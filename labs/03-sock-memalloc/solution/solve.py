"""Reference solution of lab 3: the answers, computed from a work folder's runs.

    python labs/03-sock-memalloc/solution/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/compare and runs/spoof (see README.md here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from testbed.grading import BatchFolder, fill_answers


def storage_frames(run, direction: str) -> int:
    net = json.loads((run.path / "client-outcome.json").read_text())["net"]
    return net[direction]["classes"]["memalloc"]["received"]["frames"]


def solve(work: Path) -> dict:
    compare = BatchFolder.open(work / "runs/compare", work)
    ro, ph = compare.by_policy("reserve-only"), compare.by_policy("phillips-2005")
    spoof = BatchFolder.open(work / "runs/spoof", work)
    by_hosts = {int(r.params["topology.bulk_hosts"]): r.run for r in spoof.runs}
    clean, attacked = by_hosts[0], by_hosts[max(by_hosts)]
    rx = storage_frames(attacked, "rx") - storage_frames(clean, "rx")
    tx = storage_frames(attacked, "tx") - storage_frames(clean, "tx")
    return {
        "verdicts": {"reserve-only": ro.verdict, "phillips-2005": ph.verdict},
        "reserve_skbs_at_lockup": sum(((ro.summary.get("lockup") or {}).get("reserve")
                                       or {}).values()),
        "filter_drops": ph.drops("other", "NOT_MEMALLOC"),
        "storage_drops": {"reserve-only": ro.drops("memalloc"),
                          "phillips-2005": ph.drops("memalloc")},
        "forged_frames_received": rx,
        "forged_run_filter_drops": attacked.drops("other", "NOT_MEMALLOC"),
        "replies_per_forged_frame": round(tx / rx, 3) if rx else None,
        "filter_against_forgery": "b",
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
