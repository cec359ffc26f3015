"""Grader of lab 8 (modern Linux): one test per check, run by `testbed lab check 8`.

Step 1 makes five runs of the 2005 model (``runs/2005``: ``compare --clients
emulated:none --repeat 5``); step 2 five runs each of the model of 3.6's design and of
the kernel client, Debian's Linux 6.1 in a guest (``runs/modern``: ``compare --clients
emulated:gorman-3.6,kernel --repeat 5``). A run's client is read from its summary (the
kernel's runs are ``client.kind: kernel``, whose policy is recorded as gorman-3.6 too,
so runs are told apart by kind first). The two verdict claims are judged with the exact
one-sided binomial test on the student's own runs (the right answer is what they support
at 95 %, whichever it is); the kernel's counters are the rise of its own cumulative
counters over the load (a guest counts from its boot), summed or counted over the
student's kernel runs; the medians, ratios and intervals are those of the validation
table (:mod:`testbed.validation`), which the compare printed and the student can print
again. Fixed are only the clients and the number of runs. The predictions earn their
point for having been recorded before the first run, not for being right; the short
answers are only checked to be written: a TA grades them with the rubric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from testbed import results, validation
from testbed.grading import (Answers, BatchFolder, CheckFailed, Key, RunFolder, Tally,
                             agrees, evidence, expect, keyed_choice, predictions, same,
                             shortanswers)

OLD, MODERN = "runs/2005", "runs/modern"
RUNS = 5
KERNEL = "kernel"                       # the kernel client's entry in the answers
MODEL = "gorman-3.6"                    # the model of 3.6's design, emulated
CLIENTS = ("none", MODEL, KERNEL)       # the entries of completions
PREDICTIONS = ("predict_kernel_lockups", "predict_free_reaches_min")
SHORT_ANSWERS = ("prediction_vs_result", "model_vs_kernel")
# Q11's rows, by the validation table's labels (testbed/validation.py)
INTERVAL_ROWS = {"allocstall": "direct reclaim stalls (allocstall)",
                 "lowest_free": "lowest free memory (pages)",
                 "writeback_goodput": "writeback goodput (MiB/s)"}
TIME_ROW = "time to lockup / completion (s)"


def runs_of(batch: BatchFolder, client: str, step: str) -> list[RunFolder]:
    """The batch's runs of ``client``; fewer than :data:`RUNS` is a sentence."""
    got = [r.run for r in batch.runs if r.run.client == client]
    have = ", ".join(sorted({r.run.client for r in batch.runs})) or "none"
    expect(len(got) >= RUNS, f"{batch.name} has fewer than {RUNS} runs of {client} (it has: "
           f"{have}): {step} asks for {RUNS} of each before you look at any of them")
    return got


@pytest.fixture(scope="module")
def old(batch_folder) -> list[RunFolder]:
    return runs_of(batch_folder(OLD), "none", "step 1 (--clients emulated:none --repeat 5)")


@pytest.fixture(scope="module")
def modern_batch(batch_folder) -> BatchFolder:
    return batch_folder(MODERN)


@pytest.fixture(scope="module")
def modern(modern_batch: BatchFolder) -> dict[str, list[RunFolder]]:
    step = "step 2 (--clients emulated:gorman-3.6,kernel --repeat 5)"
    return {c: runs_of(modern_batch, c, step) for c in (MODEL, KERNEL)}


def step2_runs(batch: BatchFolder) -> list[results.RunOutcome]:
    return batch.batch.runs()


@pytest.fixture(scope="module")
def table(modern_batch: BatchFolder, modern: dict[str, list[RunFolder]]) -> dict[str, list[str]]:
    """The validation table of step 2, row label -> cells (model, kernel, difference)."""
    v = validation.validation(step2_runs(modern_batch))
    return {row[0].split(" [")[0]: row[1:] for row in v.table.rows}


@pytest.fixture(scope="module")
def groups(modern_batch: BatchFolder, modern: dict[str, list[RunFolder]]
           ) -> dict[str, results.GroupStats]:
    """The statistics behind the validation table, per client (model, kernel): over the
    runs that reached a verdict, less any run past a fidelity bound, as the table has them."""
    runs = step2_runs(modern_batch)
    got = results.group_stats(runs, results.by_client,
                              [row.figure for row in validation.rows(runs)])
    return {KERNEL if g.label == KERNEL else g.label.split(":")[-1]: g for g in got}


def finished(runs: list[RunFolder]) -> list[RunFolder]:
    """The runs that reached a verdict: one that did not (a failed login, say) has no
    load to count, and step 3 shows its verdict as None."""
    return [r for r in runs if r.finished]


def table_median(groups: dict[str, results.GroupStats], client: str, figure: str) -> float:
    """One client's median of a figure of the validation table."""
    g = groups.get(client)
    got = g.estimates[figure].median if g is not None else None
    expect(got is not None, f"the validation table of {MODERN} has no {client} figure in "
           f"this row (no valid run of {client} recorded it); ask your TA")
    return float(got)


def per_client(clients: tuple[str, ...], answers: Answers, key: str,
               measure: Callable[[str], float], what: str, where: Callable[[str], str],
               rel: float = 0.0, abs_: float = 0.0) -> None:
    """One entry per client, within the tolerance of ``measure(client)``; partial credit.
    A figure that cannot be measured fails its entry only."""
    said = answers.mapping(key)
    tally = Tally(key)
    for c in clients:
        def one(c: str = c) -> None:
            expect(c in said, f"{key} has no entry for {c}: write one per client, e.g. "
                   f"{{{', '.join(f'{x}: ...' for x in clients)}}}")
            measured = measure(c)
            try:
                value = float(said[c])
            except (TypeError, ValueError):
                raise CheckFailed(f"{key} for {c} must be a number")
            agrees(value, measured, f"{what} of {c} ({key})", where(c), rel=rel, abs_=abs_)
        tally.entry(one)
    tally.close()


@pytest.mark.points(1)
def test_the_runs_of_both_steps(old: list[RunFolder], modern: dict[str, list[RunFolder]]) -> None:
    """runs/2005 holds five runs of none and runs/modern five of the model and of the kernel."""


@pytest.mark.points(1)
def test_completion_counts(old: list[RunFolder], modern: dict[str, list[RunFolder]],
                           answers: Answers) -> None:
    """The number of completed runs per client is your runs' count."""
    runs = {"none": old, **modern}
    per_client(CLIENTS, answers, "completions",
               lambda c: sum(r.verdict == "completed" for r in runs[c]),
               "the number of completed runs",
               lambda c: f"your {c} runs of step {1 if c == 'none' else 2}")


@pytest.mark.points(2)
def test_model_2005_locks_up(old: list[RunFolder], answers: Answers) -> None:
    """Your conclusion on the 2005 model is what your runs support at 95 % (binomial test)."""
    evidence.check_verdict_conclusion(answers, "model_2005_locks_up", old, "lockup", "none")


@pytest.mark.points(2)
def test_kernel_completes(modern: dict[str, list[RunFolder]], answers: Answers) -> None:
    """Your conclusion on Linux 6.1 is what your runs support at 95 % (binomial test)."""
    evidence.check_verdict_conclusion(answers, "kernel_completes", modern[KERNEL],
                                      "completed", "kernel")


@pytest.mark.points(1)
def test_kernel_runs_at_min(modern: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The kernel runs whose free memory went down to min are your runs' count."""
    agrees(answers.integer("kernel_runs_at_min"),
           sum(r.reached_min() for r in finished(modern[KERNEL])),
           "the kernel runs whose free memory went down to the min watermark "
           "(kernel_runs_at_min)", "free and wmark_min in the samples of your kernel runs",
           unit=" runs")


@pytest.mark.points(1)
def test_pfmemalloc_drops(modern: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The frames Linux 6.1 counted in PFMemallocDrop are those of your kernel runs."""
    agrees(answers.number("pfmemalloc_drops"),
           sum(r.counter_rise("PFMemallocDrop") for r in finished(modern[KERNEL])),
           "the frames counted in PFMemallocDrop (pfmemalloc_drops)",
           "the rise of PFMemallocDrop in the samples of your kernel runs, summed",
           unit=" frames")


@pytest.mark.points(1)
def test_throttled_reclaim(modern: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The pages counted in pgscan_direct_throttle agree with your kernel runs (within 2 %)."""
    agrees(answers.number("throttled_reclaim"),
           sum(r.counter_rise("pgscan_direct_throttle") for r in finished(modern[KERNEL])),
           "the pages counted in pgscan_direct_throttle (throttled_reclaim)",
           "the rise of pgscan_direct_throttle in the samples of your kernel runs, summed",
           rel=0.02, abs_=2, unit=" pages")


@pytest.mark.points(1)
def test_direct_reclaim_stalls(groups: dict[str, results.GroupStats], answers: Answers) -> None:
    """The median direct reclaim stalls of each client agree with your runs (within 2 %)."""
    per_client((MODEL, KERNEL), answers, "allocstall",
               lambda c: table_median(groups, c, "allocstall"),
               "the median of allocstall",
               lambda c: f"the validation table of {MODERN}, row of allocstall, for {c}",
               rel=0.02, abs_=2)


@pytest.mark.points(1)
def test_hung_task_warnings(modern: dict[str, list[RunFolder]], answers: Answers) -> None:
    """The hung-task warnings are those your kernel runs counted."""
    agrees(answers.number("hung_task_warnings"),
           sum(r.hung_tasks for r in finished(modern[KERNEL])),
           "the hung-task warnings (hung_task_warnings)",
           "hung_tasks of the last sample of each of your kernel runs, summed",
           unit=" warnings")


@pytest.mark.points(1)
def test_memory_for_the_load(groups: dict[str, results.GroupStats], answers: Answers) -> None:
    """The memory each client's load had at its start agrees with your runs (within 2 %)."""
    per_client((MODEL, KERNEL), answers, "load_memory",
               lambda c: table_median(groups, c, "load_memory_pages"),
               "the median memory for the load at its start",
               lambda c: f"the validation table of {MODERN}, row of the memory for the load, "
                         f"for {c}", rel=0.02, abs_=2)


def ratio(table: dict[str, list[str]], row: str) -> float:
    """The ``x1.32`` of a row's difference cell (``+11.7 (x1.32), apart``)."""
    cell = table.get(row, ["", "", ""])[-1]
    if "(x" not in cell:
        raise CheckFailed(f"the validation table of {MODERN} has no ratio in the row "
                          f"'{row}' (a client has no figure there); ask your TA")
    return float(cell.split("(x", 1)[1].split(")", 1)[0])


@pytest.mark.points(1)
def test_time_ratio(table: dict[str, list[str]], answers: Answers) -> None:
    """The kernel's time over the model's is the validation table's ratio (within 0.02)."""
    agrees(answers.number("time_ratio"), ratio(table, TIME_ROW),
           "the kernel's time to completion over the model's (time_ratio)",
           f"the ratio in the last column of the validation table of {MODERN}", abs_=0.02)


@pytest.mark.points(1)
def test_intervals(table: dict[str, list[str]], answers: Answers) -> None:
    """Whether each row's intervals are apart is what your validation table says."""
    said = answers.mapping("intervals")
    tally = Tally("intervals")
    for key, row in INTERVAL_ROWS.items():
        def one(key: str = key, row: str = row) -> None:
            expect(key in said, f"intervals has no entry for {key}: write one per row, "
                   f"e.g. {{{', '.join(f'{k}: ...' for k in INTERVAL_ROWS)}}}")
            word = str(said[key]).strip().lower()
            expect(word in ("apart", "overlap"), f"intervals for {key} must be apart or "
                   f"overlap")
            cell = table.get(row, [""])[-1]
            right = "apart" if "apart" in cell else "overlap"
            same(word, right, f"intervals for {key}: not what the last column of the "
                 f"validation table of {MODERN} says")
        tally.entry(one)
    tally.close()


@pytest.mark.points(2)
def test_socket_marked(answers: Answers, key: Key) -> None:
    """Where Linux 6.1 marks the iSCSI socket is the statement of the Background."""
    keyed_choice(answers, key, "socket_marked", ("a", "b", "c", "d"),
                 "read the Background again: which code hands the socket to the kernel, "
                 "and which function calls sk_set_memalloc()?")


@pytest.mark.points(3)
def test_what_kept_writeback_going(answers: Answers, key: Key) -> None:
    """What kept Linux 6.1's writeback going is the statement your kernel's counters support."""
    keyed_choice(answers, key, "what_kept_writeback_going", ("a", "b", "c", "d"),
                 "look at the kernel's counters of step 3: PFMemallocDrop, "
                 "pgscan_direct_throttle, allocstall, the OOM kills, and dirty against "
                 "thresh in the samples")


@pytest.mark.points(2)
def test_why_22_mib(answers: Answers, key: Key) -> None:
    """Why the model runs at 22 MiB is what the validation table's memory row shows."""
    keyed_choice(answers, key, "why_22_mib", ("a", "b", "c", "d"),
                 "compare the row 'memory for the load at its start' with the guest's "
                 "memory_mb, and read the Background's 'The same machine'")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers, old: list[RunFolder],
                                          modern: dict[str, list[RunFolder]]) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    runs = old + [r for rs in modern.values() for r in rs]
    predictions.check_on_time(work, answers, PREDICTIONS, runs, 8)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
