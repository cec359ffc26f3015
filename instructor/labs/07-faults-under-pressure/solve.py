"""Reference solution of lab 7: the answers, computed from a work folder's runs.

    python instructor/labs/07-faults-under-pressure/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/pressure and runs/calm (see README.md here).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from testbed import stats
from testbed.grading import BatchFolder, RunFolder, evidence, fill_answers

POLICIES = ("phillips-2005", "gorman-3.6")


def reinstate_s(run: RunFolder) -> Optional[float]:
    episodes = run.summary.get("recoveries") or []
    if not episodes or episodes[0].get("reinstated_t") is None:
        return None
    return round(episodes[0]["reinstated_t"] - episodes[0]["lost_t"], 3)


def tx_storage_drops(run: RunFolder) -> int:
    return run.outcome.tx_drops("memalloc") or 0


def integrity(run: RunFolder, key: str) -> int:
    return (run.summary.get("integrity") or {}).get(key) or 0


def gorman_why(gorman: list[RunFolder], times: list[float]) -> str:
    """The sentence of prediction_vs_result on gorman-3.6's runs of step 1."""
    if len(times) == len(gorman):
        return ("Every new socket got its SYN out: free memory was above the GFP_ATOMIC "
                "floor when it was sent.")
    lost = [r for r in gorman if reinstate_s(r) is None]
    other_nomem = evidence.median([r.tx_drops("other", "NOMEM") for r in lost])
    return (f"3.6 marks the new socket only once it is connected, so its SYN goes out as "
            f"any other socket's at the GFP_ATOMIC floor (sent NOMEM in the other class: "
            f"median {other_nomem} frames in the runs that stayed lost), while no storage "
            f"frame of the old connection was dropped on transmit.")


def solve(work: Path) -> dict[str, Any]:
    pressure = BatchFolder.open(work / "runs/pressure", work)
    calm = BatchFolder.open(work / "runs/calm", work)
    runs = {p: pressure.policy_runs(p) for p in POLICIES}
    calm_runs = {p: calm.policy_runs(p)[0] for p in POLICIES}
    gorman = runs["gorman-3.6"]
    times = [t for t in map(reinstate_s, gorman) if t is not None]
    first = next((r for r in gorman if reinstate_s(r) is not None), None)
    phillips_done = [r for r in runs["phillips-2005"] if r.finished]
    every = [r for rs in runs.values() for r in rs] + list(calm_runs.values())
    reinstated = {p: sum(reinstate_s(r) is not None for r in rs) for p, rs in runs.items()}
    median_p = evidence.median(times)
    calm_s = {p: reinstate_s(r) if reinstate_s(r) is not None else "none"
              for p, r in calm_runs.items()}
    return {
        "completions": {p: sum(r.verdict == "completed" for r in rs) for p, rs in runs.items()},
        "phillips_locks_up": evidence.word(
            evidence.verdict_test(runs["phillips-2005"], "lockup").supported),
        "gorman_recovers": evidence.word(stats.rate_test(
            sum(reinstate_s(r) is not None for r in gorman if r.finished),
            sum(r.finished for r in gorman)).supported),
        "reinstated_runs": reinstated,
        "pressure_reinstate_s": round(median_p, 3) if median_p is not None else "none",
        "calm_reinstate_s": calm_s,
        "reissued": ((first.summary["recoveries"][0].get("reissued", 0)) if first else "none"),
        "tx_storage_drops": evidence.median([tx_storage_drops(r) for r in phillips_done]),
        "pages_checked": integrity(calm_runs["gorman-3.6"], "pages_checked"),
        "mismatches": sum(integrity(r, "mismatches") for r in every),
        "why_no_reinstatement": "b",
        "why_gorman_not_reinstated": "a",
        # the short answers (a TA grades them with rubric.yaml); the predictions are the
        # student's own, recorded before the runs: a solution does not make them
        "prediction_vs_result": (
            f"Under phillips-2005 the session was reinstated in {reinstated['phillips-2005']} "
            f"of {len(runs['phillips-2005'])} runs of step 1: the storage frames dropped on "
            f"transmit (median {evidence.median([tx_storage_drops(r) for r in phillips_done])}, "
            f"NOMEM) are the new connection's SYNs, which found no skb at the GFP_ATOMIC "
            f"floor. Under gorman-3.6 it was reinstated in {reinstated['gorman-3.6']} of "
            f"{len(gorman)}" + (f", after {median_p} s (median)," if times else "") +
            f" against {calm_s['gorman-3.6']} s without pressure. " + gorman_why(gorman, times)),
        "recovery_needs_memory": (
            "A reinstatement allocates skbs to send the SYN and the login request and to "
            "receive the SYN-ACK and the login response, then for the re-issued commands. "
            "Under pressure only writeback frees memory, and writeback waits for the "
            "reinstatement: with no reserve for a socket not yet marked the cycle closes. "
            "In step 2 free memory stayed far above min, every allocation succeeded, and "
            "both policies were back after DefaultTime2Wait. A local disk's writeback and "
            "recovery need no packet buffers, so they do not compete with the downloads "
            "for memory."),
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
