"""Reference solution of lab 6: the reference policy, and the answers from a work folder's runs.

    python instructor/labs/06-your-own-policy/solve.py WORK_FOLDER
    python instructor/labs/06-your-own-policy/solve.py --policy WORK_FOLDER

The first fills WORK_FOLDER/answers.yaml from runs/flood and runs/spoof (made with the
work folder's mypolicy.py); the second puts the reference policy (reference_policy.py,
here) in WORK_FOLDER/mypolicy.py, before the runs (see README.md here).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from testbed.grading import RunFolder, fill_answers
from testbed.mm.policy.loader import load_policy_file

REFERENCE = Path(__file__).resolve().parent / "reference_policy.py"


def reserve_peak(run: RunFolder) -> int:
    return max(sum((s.get("reserve") or {}).values()) for s in run.samples)


def solve(work: Path) -> dict:
    policy = load_policy_file(work / "mypolicy.py")
    flood = RunFolder.open(work / "runs/flood", work)
    spoof = RunFolder.open(work / "runs/spoof", work)
    return {
        "policy_era": policy.era.kernel,
        "flood_storage_drops": flood.drops("memalloc") + flood.tx_drops("memalloc"),
        "flood_other_drops": flood.drops("other"),
        "spoof_reserve_peak": reserve_peak(spoof),
        "first_hook_with_the_socket": "c",
        "forged_storage_frames": "b",
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--policy"]:
        work = Path(args[1] if len(args) > 1 else ".")
        shutil.copyfile(REFERENCE, work / "mypolicy.py")
        print(f"wrote {work / 'mypolicy.py'} (the reference policy)")
    else:
        work = Path(args[0] if args else ".")
        fill_answers(work / "answers.yaml", solve(work))
        print(f"filled {work / 'answers.yaml'}")
