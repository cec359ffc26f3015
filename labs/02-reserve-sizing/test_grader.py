"""Grader of lab 2 (sizing the reserve): one test per check, run by `testbed lab check 2`.

Part A is arithmetic: it is checked against the testbed's own estimate_skb_pages() and
the link of the student's runs. Part B is read from the student's sweep, runs/sweep,
which runs every grid point twice (``--repeat 2``): a reserve is clean for a bulk-host
count when every one of its runs completed and lost no storage frame, received or sent
(on the era models Phillips' receive buffers may take memory to zero, so what a small
reserve costs the storage flow is its ACKs, sent with GFP_ATOMIC). The
predictions (the smallest clean reserve, and whether more bulk hosts need more) earn
their point for having been recorded before the sweep's first run, whatever they say;
the short answers are only checked to be written: a TA grades them with the instructor's
rubric.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, Tally, agrees, evidence,
                             expect, expect_finished, predictions, same, shortanswers)
from testbed.mm.skbuff import NET_IP_ALIGN, estimate_skb_pages, rx_buffer_len

SWEEP = "runs/sweep"
RESERVE = "client.reserve_pages"
HOSTS = "topology.bulk_hosts"
MTU = 1500
PREDICTIONS = ("predict_smallest_clean_reserve", "predict_more_hosts_need_more")
SHORT_ANSWERS = ("prediction_vs_result", "why_more_than_the_estimate")


@pytest.fixture(scope="module")
def sweep(batch_folder) -> BatchFolder:
    b = batch_folder(SWEEP)
    for r in b.runs:
        expect(r.run.policy == "phillips-2005",
               f"{r.run.name} is a run of policy {r.run.policy}: lab 2 sweeps phillips-2005 "
               f"(reserve.yaml as given)")
        expect_finished(r.run, "step 2")
    for key in (RESERVE, HOSTS):
        expect(len(b.values(key)) >= 2, f"{b.name} does not vary {key}: run step 2 as "
               f"written (--param {RESERVE}=... --param {HOSTS}=...)")
    expect(any(float(v) == 0 for v in b.values(RESERVE)),
           f"{b.name} has no run with {RESERVE}=0: keep 0 in the sweep (question 6)")
    return b


def storage_drops(run) -> int:
    """Frames of the storage flow dropped, received and sent (``drops.memalloc`` and
    ``drops.tx.memalloc``)."""
    return run.drops("memalloc") + run.tx_drops("memalloc")


def clean(run) -> bool:
    return run.verdict == "completed" and storage_drops(run) == 0


NONE = math.inf      # "none": not even the sweep's largest reserve completed cleanly


def smallest_clean(b: BatchFolder) -> dict[int, float]:
    """Per bulk-host count: the smallest reserve from which every larger one ran clean,
    each in all of its runs (:data:`NONE` when the largest did not)."""
    out = {}
    for hosts in b.values(HOSTS):
        by_reserve: dict[float, list] = {}
        for r in b.select(HOSTS, hosts):
            by_reserve.setdefault(float(r.params[RESERVE]), []).append(r.run)
        best = NONE
        for reserve in sorted(by_reserve, reverse=True):
            if not all(clean(run) for run in by_reserve[reserve]):
                break
            best = reserve
        out[int(float(hosts))] = best
    return out


def stated_mapping(answers: Answers, key: str) -> dict[int, float]:
    got = {}
    for k, v in answers.mapping(key).items():
        try:
            got[int(float(k))] = NONE if str(v).strip().lower() == "none" else float(v)
        except (TypeError, ValueError):
            raise CheckFailed(f"{key}: an entry is not 'bulk hosts: number' (or none)")
    return got


@pytest.mark.points(1)
def test_buffer_size_and_default_reserve(answers: Answers) -> None:
    """The receive buffer size and Phillips' default reserve are what the testbed computes."""
    size = rx_buffer_len(MTU) + NET_IP_ALIGN
    same(answers.integer("rx_buffer_bytes"), size, f"rx_buffer_bytes: not rx_buffer_len("
         f"{MTU}) + NET_IP_ALIGN (exactly; step 1 prints it)")
    same(answers.integer("default_reserve_pages"), estimate_skb_pages(50, size),
         "default_reserve_pages: not estimate_skb_pages(50, rx_buffer_bytes) (exactly; "
         "step 1 prints it)")


@pytest.mark.points(1)
def test_frames_in_flight(sweep: BatchFolder, answers: Answers) -> None:
    """The frames in flight one way agree with the link's rate and delay (within 1)."""
    run = sweep.runs[0].run
    bw, delay = run.setting("topology.client_bw_mbit"), run.setting("topology.delay_ms")
    frames = math.ceil(bw * 1e6 * delay / 1000 / (MTU * 8))
    agrees(answers.number("frames_in_flight"), frames, "frames in flight (frames_in_flight)",
           f"the link of your runs (rate x one-way delay / {MTU * 8} bits, rounded up)",
           abs_=1)


@pytest.mark.points(1)
def test_link_reserve(sweep: BatchFolder, answers: Answers) -> None:
    """The estimate for the link is estimate_skb_pages() of the frames in flight."""
    size = rx_buffer_len(MTU) + NET_IP_ALIGN
    n = answers.integer("frames_in_flight")
    said = answers.integer("link_reserve_pages")
    same(said, estimate_skb_pages(max(n, 0), size), "link_reserve_pages: not "
         "estimate_skb_pages(frames_in_flight, rx_buffer_bytes) of your own "
         "frames_in_flight (exactly)")
    run = sweep.runs[0].run
    bw, delay = run.setting("topology.client_bw_mbit"), run.setting("topology.delay_ms")
    right = estimate_skb_pages(math.ceil(bw * 1e6 * delay / 1000 / (MTU * 8)), size)
    agrees(said, right, "link_reserve_pages", "estimate_skb_pages() of the frames the link "
           "really holds", abs_=2, unit=" pages")


@pytest.mark.points(3)
def test_smallest_clean_reserve(sweep: BatchFolder, answers: Answers) -> None:
    """The smallest clean reserve per number of bulk hosts is what your sweep shows."""
    truth = smallest_clean(sweep)
    said = stated_mapping(answers, "smallest_clean_reserve")
    tally = Tally("smallest_clean_reserve")
    for hosts, best in truth.items():
        def one(hosts: int = hosts, best: float = best) -> None:
            expect(hosts in said, f"smallest_clean_reserve has no entry for {hosts} bulk "
                   f"host(s): write one per bulk-host count of your sweep")
            same(said[hosts], best, f"smallest_clean_reserve for {hosts} bulk host(s): not "
                 f"the smallest reserve_pages from which every run with {hosts} host(s) "
                 f"completed cleanly (verdict completed, 0 storage drops received or sent, in "
                 f"every run), or none")
        tally.entry(one)
    tally.close()


@pytest.mark.points(2)
def test_storage_drops_without_reserve(sweep: BatchFolder, answers: Answers) -> None:
    """The storage drops with no added reserve agree with your runs (the median, within 2 %)."""
    said = stated_mapping(answers, "storage_drops_without_reserve")
    tally = Tally("storage_drops_without_reserve")
    for hosts in sorted({int(float(v)) for v in sweep.values(HOSTS)}):
        runs = [r.run for r in sweep.select(HOSTS, hosts) if float(r.params[RESERVE]) == 0]

        def one(hosts: int = hosts, runs=runs) -> None:
            expect(hosts in said, f"storage_drops_without_reserve has no entry for {hosts} "
                   f"bulk host(s)")
            agrees(said[hosts], evidence.median([storage_drops(r) for r in runs]),
                   f"storage drops with reserve_pages 0 and {hosts} bulk host(s)",
                   f"the median over your runs with reserve_pages 0 and {hosts} bulk host(s) "
                   f"of drops.memalloc.total + drops.tx.memalloc.total", rel=0.02, abs_=2)
        tally.entry(one)
    tally.close()


@pytest.mark.points(1)
def test_more_hosts_need_more(sweep: BatchFolder, answers: Answers) -> None:
    """Whether more bulk hosts needed a larger reserve agrees with your sweep."""
    truth = smallest_clean(sweep)
    hosts = sorted(truth)
    grows = truth[hosts[-1]] > truth[hosts[0]]
    said = answers.choice("more_hosts_need_more", ("yes", "no"))
    same(said, "yes" if grows else "no", "more_hosts_need_more: not what the smallest clean "
         "reserves of your sweep say (none counts as more than any reserve)")


@pytest.mark.points(1)
def test_predictions_made_before_the_runs(work: Path, answers: Answers,
                                          sweep: BatchFolder) -> None:
    """Your predictions were recorded before your first run (a point for that, not for being right)."""
    predictions.check_on_time(work, answers, PREDICTIONS, [r.run for r in sweep.runs], 2)


@pytest.mark.points(0)
def test_short_answers_for_your_ta(answers: Answers) -> None:
    """Your short answers are written; your TA grades them with the course's rubric."""
    shortanswers.check_answered(answers, SHORT_ANSWERS)
