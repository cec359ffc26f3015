"""Grader of lab 2 (sizing the reserve): one test per check, run by `testbed lab check 2`.

Part A is arithmetic: it is checked against the testbed's own estimate_skb_pages() and
the link of the student's runs. Part B is read from the student's sweep, runs/sweep.
"""

from __future__ import annotations

import math

import pytest

from testbed.grading import (Answers, BatchFolder, CheckFailed, agrees, expect,
                          expect_finished)
from testbed.mm.skbuff import NET_IP_ALIGN, estimate_skb_pages, rx_buffer_len

SWEEP = "runs/sweep"
RESERVE = "client.reserve_pages"
HOSTS = "topology.bulk_hosts"
MTU = 1500


@pytest.fixture(scope="module")
def sweep(batch_folder) -> BatchFolder:
    b = batch_folder(SWEEP)
    for r in b.runs:
        expect(r.run.policy == "phillips-2005",
               f"{r.run.name} is a run of policy {r.run.policy}: lab 2 sweeps phillips-2005 "
               f"(reserve.yaml as given)")
        expect_finished(r.run, "run the sweep again")
    for key in (RESERVE, HOSTS):
        expect(len(b.values(key)) >= 2, f"{b.name} does not vary {key}: run step 2 as "
               f"written (--param {RESERVE}=... --param {HOSTS}=...)")
    expect(any(float(v) == 0 for v in b.values(RESERVE)),
           f"{b.name} has no run with {RESERVE}=0: keep 0 in the sweep (question 6)")
    return b


def clean(run) -> bool:
    return run.verdict == "completed" and run.drops("memalloc") == 0


def smallest_clean(b: BatchFolder) -> dict[int, float]:
    """Per bulk-host count: the smallest reserve from which every larger one ran clean."""
    out = {}
    for hosts in b.values(HOSTS):
        runs = sorted(b.select(HOSTS, hosts),
                      key=lambda r: float(r.params[RESERVE]))
        best = None
        for r in reversed(runs):
            if not clean(r.run):
                break
            best = float(r.params[RESERVE])
        if best is None:
            top = runs[-1]
            raise CheckFailed(
                f"with {hosts} bulk host(s) not even your largest reserve ({top.params[RESERVE]} "
                f"pages, {top.run.name}) completed cleanly ({top.run.verdict}, "
                f"{top.run.drops('memalloc')} storage drops): extend the sweep with a larger "
                f"reserve (see 'What a correct result looks like')")
        out[int(float(hosts))] = best
    return out


def stated_mapping(answers: Answers, key: str) -> dict[int, float]:
    got = {}
    for k, v in answers.mapping(key).items():
        try:
            got[int(float(k))] = float(v)
        except (TypeError, ValueError):
            raise CheckFailed(f"{key}: '{k}: {v}' is not 'bulk hosts: number'")
    return got


def test_buffer_size_and_default_reserve(answers: Answers) -> None:
    """The receive buffer size and Phillips' default reserve are what the testbed computes."""
    size = rx_buffer_len(MTU) + NET_IP_ALIGN
    said = answers.integer("rx_buffer_bytes")
    expect(said == size, f"rx_buffer_bytes: you wrote {said}, but rx_buffer_len({MTU}) + "
           f"NET_IP_ALIGN is {size} (step 1 prints it)")
    default = estimate_skb_pages(50, size)
    said = answers.integer("default_reserve_pages")
    expect(said == default, f"default_reserve_pages: you wrote {said}, but "
           f"estimate_skb_pages(50, {size}) is {default}")


def test_frames_in_flight(sweep: BatchFolder, answers: Answers) -> None:
    """The frames in flight one way agree with the link's rate and delay (within 1)."""
    run = sweep.runs[0].run
    bw, delay = run.setting("topology.client_bw_mbit"), run.setting("topology.delay_ms")
    frames = math.ceil(bw * 1e6 * delay / 1000 / (MTU * 8))
    agrees(answers.number("frames_in_flight"), frames, "frames in flight (frames_in_flight)",
           f"a {bw:g} Mbit/s link with {delay:g} ms of delay (rate x delay / {MTU * 8} "
           f"bits, rounded up)", abs_=1)


def test_link_reserve(sweep: BatchFolder, answers: Answers) -> None:
    """The estimate for the link is estimate_skb_pages() of the frames in flight."""
    size = rx_buffer_len(MTU) + NET_IP_ALIGN
    n = answers.integer("frames_in_flight")
    said = answers.integer("link_reserve_pages")
    mine = estimate_skb_pages(max(n, 0), size)
    expect(said == mine, f"link_reserve_pages: you wrote {said}, but "
           f"estimate_skb_pages({n}, {size}) is {mine}")
    run = sweep.runs[0].run
    bw, delay = run.setting("topology.client_bw_mbit"), run.setting("topology.delay_ms")
    right = estimate_skb_pages(math.ceil(bw * 1e6 * delay / 1000 / (MTU * 8)), size)
    agrees(said, right, "link_reserve_pages", "estimate_skb_pages() of the frames the link "
           "really holds", abs_=2, unit=" pages")


def test_smallest_clean_reserve(sweep: BatchFolder, answers: Answers) -> None:
    """The smallest clean reserve per number of bulk hosts is what your sweep shows."""
    truth = smallest_clean(sweep)
    said = stated_mapping(answers, "smallest_clean_reserve")
    for hosts, best in truth.items():
        expect(hosts in said, f"smallest_clean_reserve has no entry for {hosts} bulk "
               f"host(s); your sweep has runs with {', '.join(map(str, truth))}")
        expect(said[hosts] == best,
               f"smallest_clean_reserve for {hosts} bulk host(s): you wrote {said[hosts]:g}, "
               f"but in {sweep.name} the runs with {hosts} host(s) completed cleanly (verdict "
               f"completed, 0 storage drops) from reserve_pages {best:g} up")


def test_storage_drops_without_reserve(sweep: BatchFolder, answers: Answers) -> None:
    """The storage drops with no added reserve agree with your runs (within 2 %)."""
    said = stated_mapping(answers, "storage_drops_without_reserve")
    for r in sweep.select(RESERVE, 0):
        hosts = int(float(r.params[HOSTS]))
        expect(hosts in said, f"storage_drops_without_reserve has no entry for {hosts} "
               f"bulk host(s)")
        agrees(said[hosts], r.run.drops("memalloc"),
               f"storage drops with reserve_pages 0 and {hosts} bulk host(s)",
               f"drops.memalloc.total of {r.run.name}", rel=0.02, abs_=2)


def test_more_hosts_need_more(sweep: BatchFolder, answers: Answers) -> None:
    """Whether more bulk hosts needed a larger reserve agrees with your sweep."""
    truth = smallest_clean(sweep)
    hosts = sorted(truth)
    grows = truth[hosts[-1]] > truth[hosts[0]]
    said = answers.choice("more_hosts_need_more", ("yes", "no"))
    expect(said == ("yes" if grows else "no"),
           f"more_hosts_need_more: you wrote {said}, but your sweep needed "
           f"{truth[hosts[0]]:g} pages with {hosts[0]} bulk host(s) and "
           f"{truth[hosts[-1]]:g} with {hosts[-1]}")
