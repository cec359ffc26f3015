"""Reference solution of lab 2: the answers, computed from a work folder's runs.

    python instructor/labs/02-reserve-sizing/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/sweep (see README.md here for the reasoning).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from testbed.grading import BatchFolder, fill_answers
from testbed.mm.skbuff import NET_IP_ALIGN, estimate_skb_pages, rx_buffer_len

RESERVE, HOSTS = "client.reserve_pages", "topology.bulk_hosts"


def clean(run) -> bool:
    return run.verdict == "completed" and run.drops("memalloc") == 0


def solve(work: Path) -> dict:
    sweep = BatchFolder.open(work / "runs/sweep", work)
    size = rx_buffer_len(1500) + NET_IP_ALIGN
    first = sweep.runs[0].run
    bw = first.setting("topology.client_bw_mbit")
    delay = first.setting("topology.delay_ms")
    frames = math.ceil(bw * 1e6 * delay / 1000 / (1500 * 8))     # 40 Mbit/s x 20 ms: 67
    smallest, at_zero = {}, {}
    for hosts in sweep.values(HOSTS):
        runs = sorted(sweep.select(HOSTS, hosts),
                      key=lambda r: float(r.params[RESERVE]))
        best = None
        for r in reversed(runs):                 # from the largest reserve down
            if not clean(r.run):
                break
            best = int(float(r.params[RESERVE]))
        smallest[int(hosts)] = best if best is not None else "none"   # not reached
        at_zero[int(hosts)] = next(r.run.drops("memalloc") for r in runs
                                   if float(r.params[RESERVE]) == 0)
    counts = sorted(smallest)
    need = {h: math.inf if v == "none" else v for h, v in smallest.items()}
    return {
        "rx_buffer_bytes": size,
        "default_reserve_pages": estimate_skb_pages(50, size),
        "frames_in_flight": frames,
        "link_reserve_pages": estimate_skb_pages(frames, size),
        "smallest_clean_reserve": smallest,
        "storage_drops_without_reserve": at_zero,
        "more_hosts_need_more": "yes" if need[counts[-1]] > need[counts[0]] else "no",
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
