"""Reference solution of lab 6: the reference policy, and the answers from a work folder's runs.

    python instructor/labs/06-your-own-policy/solve.py WORK_FOLDER
    python instructor/labs/06-your-own-policy/solve.py --policy WORK_FOLDER

The first fills WORK_FOLDER/answers.yaml from the batches runs/flood and runs/spoof
(``compare --policies ./mypolicy.py --repeat 5``, made with the work folder's
mypolicy.py): counts of runs, medians over the runs that reached a verdict, and each
claim's conclusion from the exact one-sided binomial test on those runs. The second puts
the reference policy (reference_policy.py, here) in WORK_FOLDER/mypolicy.py, before the
runs (see README.md here).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from testbed import stats
from testbed.grading import BatchFolder, RunFolder, evidence, fill_answers
from testbed.mm.policy.loader import load_policy_file

REFERENCE = Path(__file__).resolve().parent / "reference_policy.py"
POLICY = "mypolicy.py"          # how the runs of a policy file name their policy


def storage_drops(run: RunFolder) -> int:
    return run.drops("memalloc") + run.tx_drops("memalloc")


def reserve_peak(run: RunFolder) -> int:
    return max(sum((s.get("reserve") or {}).values()) for s in run.all_samples)


def kept_storage(run: RunFolder) -> bool:
    return storage_drops(run) == 0


def gave_no_reserve(run: RunFolder) -> bool:
    return reserve_peak(run) == 0


def conclusion(runs: list[RunFolder], holds: Callable[[RunFolder], bool]) -> str:
    done = [r for r in runs if r.finished]
    return evidence.word(stats.rate_test(sum(holds(r) for r in done), len(done)).supported)


def median(runs: list[RunFolder], measure: Callable[[RunFolder], int]) -> float:
    return evidence.median([measure(r) for r in runs if r.finished]) or 0


def solve(work: Path) -> dict[str, Any]:
    policy = load_policy_file(work / POLICY)
    flood = BatchFolder.open(work / "runs/flood", work).policy_runs(POLICY)
    spoof = BatchFolder.open(work / "runs/spoof", work).policy_runs(POLICY)
    return {
        "policy_era": policy.era.kernel,
        "flood_completions": sum(r.verdict == "completed" for r in flood),
        "flood_completes": evidence.word(evidence.verdict_test(flood, "completed").supported),
        "flood_clean_runs": sum(map(kept_storage, flood)),
        "flood_keeps_storage": conclusion(flood, kept_storage),
        "flood_storage_drops": median(flood, storage_drops),
        "flood_other_drops": median(flood, lambda r: r.drops("other")),
        "spoof_clean_runs": sum(map(gave_no_reserve, spoof)),
        "spoof_reserve_peak": max(map(reserve_peak, spoof)),
        "spoof_no_reserve": conclusion(spoof, gave_no_reserve),
        "first_hook_with_the_socket": "c",
        "forged_storage_frames": "b",
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--policy"]:
        work = Path(args[1] if len(args) > 1 else ".")
        shutil.copyfile(REFERENCE, work / POLICY)
        print(f"wrote {work / POLICY} (the reference policy)")
    else:
        work = Path(args[0] if args else ".")
        fill_answers(work / "answers.yaml", solve(work))
        print(f"filled {work / 'answers.yaml'}")
