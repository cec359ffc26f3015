"""Reference solution of lab 4: the answers, computed from a work folder's runs.

    python instructor/labs/04-sharing-the-reserve/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/threshold/stats.json (see README.md here): the
medians and values per threshold, and the two one-sided Mann-Whitney U tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from testbed.grading import evidence, fill_answers

KEY = "client.threshold"


def solve(work: Path) -> dict:
    doc = json.loads((work / "runs/threshold/stats.json").read_text())
    groups = {float(g["params"][KEY]): g for g in doc["groups"]}

    def median(t: float, fig: str):
        return groups[t]["figures"][fig]["median"]

    def values(t: float, fig: str) -> list[float]:
        return groups[t]["figures"][fig]["values"]

    def smaller_at_1(fig: str) -> str:
        return evidence.word(evidence.less_test(values(1.0, fig), values(0.0, fig)).supported)

    clean = [t for t, g in groups.items() if g["verdicts"].get("completed", 0) == g["runs"]
             and not any(values(t, "rx_storage_drops"))]
    chosen = (min(clean, key=lambda t: (median(t, "rx_other_drops"), -t)) if clean
              else "none")
    def fig(t: float, name: str) -> str:          # a median as written; none finished: n/a
        m = median(t, name)
        return "n/a" if m is None else f"{m:g}"

    most = max(groups, key=lambda t: median(t, "rx_other_drops") or 0)
    at_1 = groups[1.0]
    locked = at_1["verdicts"].get("lockup", 0)
    return {
        "other_drops": {t: median(t, "rx_other_drops") for t in groups},
        "completion_s": {t: round(median(t, "time_s"), 2) for t in groups},
        "lowest_free_pages": {t: median(t, "lowest_free_pages") for t in groups},
        "fewer_other_drops": smaller_at_1("rx_other_drops"),
        "less_headroom": smaller_at_1("lowest_free_pages"),
        "storage_drops_total": sum(sum(values(t, "rx_storage_drops")) for t in groups),
        "chosen_threshold": chosen,
        # the short answers (a TA grades them with rubric.yaml); the predictions are the
        # student's own, recorded before the runs: a solution does not make them
        "prediction_vs_result": (
            f"The downloads lost the most frames at threshold {most:g} (median "
            f"rx_other_drops {fig(most, 'rx_other_drops')}, against "
            f"{fig(1.0, 'rx_other_drops')} at 1), and at threshold 1 {locked} of "
            f"{at_1['runs']} runs locked up, with the lowest free memory at "
            f"{fig(1.0, 'lowest_free_pages')} pages (median) against "
            f"{fig(0.0, 'lowest_free_pages')} at 0: the downloads' frames kept the "
            f"reserve pages they were let into"
            f"{', and drained the reserve as under reserve-only in lab 3' if locked else ''}."),
        "why_free_memory_falls": (
            "When GFP_ATOMIC fails, the driver takes the frame's buffer from the reserve "
            "(__GFP_MEMALLOC); below the threshold the filter delivers it to the download's "
            "socket, where it waits in the receive queue until the program reads it. The "
            "downloaders are blocked in balance_dirty_pages() by the dirty limits, waiting "
            "for writeback, so the page stays taken; the storage flow's frames (the target's "
            "R2Ts, responses and ACKs) then find less of the reserve, or none, and are "
            "dropped, which stalls the writeback the downloaders wait for."),
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
