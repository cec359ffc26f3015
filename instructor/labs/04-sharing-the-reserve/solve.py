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
    return {
        "other_drops": {t: median(t, "rx_other_drops") for t in groups},
        "completion_s": {t: round(median(t, "time_s"), 2) for t in groups},
        "lowest_free_pages": {t: median(t, "lowest_free_pages") for t in groups},
        "fewer_other_drops": smaller_at_1("rx_other_drops"),
        "less_headroom": smaller_at_1("lowest_free_pages"),
        "storage_drops_total": sum(sum(values(t, "rx_storage_drops")) for t in groups),
        "chosen_threshold": chosen,
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
