"""Reference solution of lab 8: the answers, computed from a work folder's runs.

    python instructor/labs/08-modern-linux/solve.py WORK_FOLDER

fills WORK_FOLDER/answers.yaml from runs/2005 and runs/modern (see README.md here).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from testbed import results, validation
from testbed.grading import BatchFolder, RunFolder, evidence, fill_answers

KERNEL, MODEL = "kernel", "gorman-3.6"
ROWS = {"allocstall": "direct reclaim stalls (allocstall)",
        "lowest_free": "lowest free memory (pages)",
        "writeback_goodput": "writeback goodput (MiB/s)"}
TIME_ROW = "time to lockup / completion (s)"


def oom_kills(run: RunFolder) -> list[Any]:
    outcome = results.read_json(run.path / "client-outcome.json") or {}
    return list((outcome.get("kernel") or {}).get("oom_kills") or [])


def table_of(batch: BatchFolder) -> tuple[dict[str, list[str]], dict[str, results.GroupStats]]:
    """The validation table (row label -> cells) and its statistics per client."""
    runs = batch.batch.runs()
    v = validation.validation(runs)
    table = {row[0].split(" [")[0]: row[1:] for row in v.table.rows}
    got = results.group_stats(runs, results.by_client,
                              [row.figure for row in validation.rows(runs)])
    return table, {KERNEL if g.label == KERNEL else g.label.split(":")[-1]: g for g in got}


def median(groups: dict[str, results.GroupStats], client: str, figure: str) -> Optional[float]:
    got = groups[client].estimates[figure].median
    return None if got is None else round(float(got), 2)


def ratio(cell: str) -> float:
    return float(cell.split("(x", 1)[1].split(")", 1)[0])


def dirty_over_limit(run: RunFolder) -> int:
    """The most dirty pages above the dirty limit (thresh) in any sample: negative when
    balance_dirty_pages() held the writers under it throughout."""
    got = [s["dirty"] - s["thresh"] for s in run.samples
           if isinstance(s.get("dirty"), int) and isinstance(s.get("thresh"), int)]
    return max(got) if got else 0


def solve(work: Path) -> dict[str, Any]:
    old_batch = BatchFolder.open(work / "runs/2005", work)
    modern_batch = BatchFolder.open(work / "runs/modern", work)
    old = [r.run for r in old_batch.runs if r.run.client == "none"]
    runs = {c: [r.run for r in modern_batch.runs if r.run.client == c]
            for c in (MODEL, KERNEL)}
    kernel = runs[KERNEL]
    done = [r for r in kernel if r.finished]     # a run without a verdict counts nothing
    table, groups = table_of(modern_batch)
    completions = {c: sum(r.verdict == "completed" for r in rs)
                   for c, rs in {"none": old, **runs}.items()}
    at_min = sum(r.reached_min() for r in done)
    drops = sum(r.counter_rise("PFMemallocDrop") for r in done)
    throttled = sum(r.counter_rise("pgscan_direct_throttle") for r in done)
    stalls = {c: median(groups, c, "allocstall") for c in (MODEL, KERNEL)}
    memory = {c: median(groups, c, "load_memory_pages") for c in (MODEL, KERNEL)}
    hung = sum(r.hung_tasks for r in done)
    kills = sum(len(oom_kills(r)) for r in done)
    over = max((dirty_over_limit(r) for r in done), default=0)
    time_ratio = ratio(table[TIME_ROW][-1])
    intervals = {k: "apart" if "apart" in table[row][-1] else "overlap"
                 for k, row in ROWS.items()}
    locks = evidence.verdict_test(old, "lockup")
    return {
        "completions": completions,
        "model_2005_locks_up": evidence.word(locks.supported),
        "kernel_completes": evidence.word(evidence.verdict_test(kernel, "completed").supported),
        "kernel_runs_at_min": at_min,
        "pfmemalloc_drops": drops,
        "throttled_reclaim": throttled,
        "allocstall": stalls,
        "hung_task_warnings": hung,
        "load_memory": memory,
        "time_ratio": time_ratio,
        "intervals": intervals,
        "socket_marked": "c",
        # the kernel runs' dirty stays under thresh, no OOM kill, PFMemallocDrop and
        # pgscan_direct_throttle at or near 0, allocstall in the tens (README.md here)
        "what_kept_writeback_going": "b",
        "why_22_mib": "c",
        # the short answers (a TA grades them with rubric.yaml); the predictions are the
        # student's own, recorded before the runs: a solution does not make them
        "prediction_vs_result": (
            f"Linux 6.1 completed {completions[KERNEL]} of {len(kernel)} runs where the 2005 "
            f"model locked up in {sum(r.verdict == 'lockup' for r in old)} of {len(old)}. "
            f"Free memory went down to the (boosted) min watermark in {at_min} of "
            f"{len(kernel)} kernel runs; dirty pages stayed "
            f"{'under' if over < 0 else 'at or over'} the dirty limit (thresh) in every "
            f"sample, as balance_dirty_pages() held the mmap writer; PFMemallocDrop counted "
            f"{drops} frames, "
            f"pgscan_direct_throttle {throttled} pages, and the kernel stalled in direct "
            f"reclaim {stalls[KERNEL]} times (median) against {stalls[MODEL]} in the model; "
            f"{hung} hung-task warnings and {kills} OOM kills in all."),
        "model_vs_kernel": (
            f"Both complete the load, so the model's verdict holds on the real kernel. The "
            f"path differs: the kernel reclaims directly (allocstall {stalls[KERNEL]} "
            f"against {stalls[MODEL]}, intervals {intervals['allocstall']}) and its lowest "
            f"free memory and goodput differ ({intervals['lowest_free']}, "
            f"{intervals['writeback_goodput']}); it took x{time_ratio} the model's time "
            f"under TCG. The model's memory_mb is all for the load; the guest's load had "
            f"{memory[KERNEL]} pages against the model's {memory[MODEL]}. So the model of "
            f"3.6's verdict holds on this kernel for this load, while its counts of drops "
            f"and reclaim are the model's; the 2005 models' lockups (labs 1 to 4) are not "
            f"checked by it, as no 2.6.13 kernel ran here."),
    }


if __name__ == "__main__":
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    fill_answers(work / "answers.yaml", solve(work))
    print(f"filled {work / 'answers.yaml'}")
