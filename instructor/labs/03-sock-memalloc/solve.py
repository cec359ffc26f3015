"""Reference solution of lab 3: the answers, computed from a work folder's runs.

    python instructor/labs/03-sock-memalloc/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/compare and runs/spoof (see README.md here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from testbed.grading import BatchFolder, evidence, fill_answers


def storage_frames(run, direction: str) -> int:
    net = json.loads((run.path / "client-outcome.json").read_text())["net"]
    return net[direction]["classes"]["memalloc"]["received"]["frames"]


def median(values: list[float]) -> float | None:
    return evidence.median(values)


def solve(work: Path) -> dict:
    compare = BatchFolder.open(work / "runs/compare", work)
    ro = compare.policy_runs("reserve-only")
    ph = compare.policy_runs("phillips-2005")
    done = {p: [r for r in rs if r.finished] for p, rs in (("reserve-only", ro),
                                                           ("phillips-2005", ph))}
    locked = [r for r in done["reserve-only"] if r.verdict == "lockup"]
    spoof = BatchFolder.open(work / "runs/spoof", work)
    by_hosts = {int(r.params["topology.bulk_hosts"]): r.run for r in spoof.runs}
    clean, attacked = by_hosts[0], by_hosts[max(by_hosts)]
    rx = storage_frames(attacked, "rx") - storage_frames(clean, "rx")
    tx = storage_frames(attacked, "tx") - storage_frames(clean, "tx")
    return {
        "lockups": {p: sum(r.verdict == "lockup" for r in rs)
                    for p, rs in (("reserve-only", ro), ("phillips-2005", ph))},
        "reserve_only_locks_up": evidence.word(evidence.verdict_test(ro, "lockup").supported),
        "phillips_completes": evidence.word(evidence.verdict_test(ph, "completed").supported),
        # not graded when no reserve-only run locked up; 0 keeps the key answered
        "reserve_skbs_at_lockup": median([sum(((r.summary.get("lockup") or {}).get("reserve")
                                               or {}).values()) for r in locked]) or 0,
        "filter_drops": median([r.drops("other", "NOT_MEMALLOC") for r in done["phillips-2005"]]),
        "storage_drops": {p: median([r.drops("memalloc") for r in rs]) for p, rs in done.items()},
        "forged_frames_received": rx,
        "forged_run_filter_drops": attacked.drops("other", "NOT_MEMALLOC"),
        "replies_per_forged_frame": round(tx / rx, 3) if rx else None,
        "filter_against_forgery": "b",
        # the short answers (a TA grades them with rubric.yaml); the predictions are the
        # student's own, recorded before the runs: a solution does not make them
        "prediction_vs_result": (
            f"reserve-only locked up in {sum(r.verdict == 'lockup' for r in ro)} of {len(ro)} "
            f"runs: without the filter the downloads' frames take the reserve. The filter "
            f"dropped {attacked.drops('other', 'NOT_MEMALLOC')} frames in the spoofed run "
            f"while {rx} forged frames were taken for the storage flow: it judges by the "
            f"socket a frame names, and the forged frames name the iSCSI socket."),
        "what_forged_frames_cost": (
            "Each forged frame takes a receive buffer, from the reserve when memory is "
            "short, while it is in flight, and the client sends a duplicate ACK back for "
            "each (about one reply per forged frame), so the reserve and the cap are shared "
            "with an attacker and genuine acknowledgements can be dropped with them."),
    }

if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
