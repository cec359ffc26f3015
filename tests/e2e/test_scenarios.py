"""End to end on real Mininet, real tgtd, real TCP: the seed's claims, tested as
``testbed claims`` tests them.

The contention load runs under each policy, and the baseline, in interleaved rounds,
each run with ``testbed run`` (the command a user types), :data:`BATCH_WORKERS` at once,
into one batch folder; then
``testbed claims --from`` tests the article's claims on that folder with the statistics
``make claims`` uses (:mod:`testbed.claims`, :mod:`testbed.stats`). ``make test`` has room
for about 13 minutes of these runs, so the initiator here gives up on a silent target as
the labs' does (:data:`INITIATOR`: an 8 s command timeout, NOP-Out pings 2 s + 3 s, a 5 s
login), which makes its recovery horizon 15 s instead of 42 s: a lockup is proven about
20 s into a run (~30 s a run, against ~50 s with Linux's default timeouts, which
``make claims`` and the README use; ``none`` runs with those, see
:data:`DEFAULT_INITIATOR_POLICIES`). A completed contention run takes ~40 s, a baseline
run ~10 s. The counts are set by cost, and each claim is tested at the confidence its
count supports (below).

On the era models (issue 12) every 2005 policy locks up on this load: ``none`` on the
receive side (the target's responses find no buffer), ``reserve-only``, ``phillips-2005``
and its threshold on the transmit side (2.6.13 had no transmit reserve: the initiator's
data segments wait in ``sk_stream_wait_memory`` at the GFP_ATOMIC floor). Phillips'
reserve still does what the article says it does: not one storage frame is dropped on
receive. So the article's "phillips-2005 completes" is refuted here, and its receive
claim holds. ``gorman-3.6`` completes without reaching min (its mmap writer is throttled
at the dirty limits, as since 2.6.19).

- ``none``, ``reserve-only`` (3 runs each) lock up, the baseline (3 runs) completes, and
  ``gorman-3.6`` (3 runs) completes: 3 of 3 give p = 1/8, the least that count can give
  against H0 (rate <= 1/2), so the test asks for that (every run agrees: 87.5 %
  confidence that the rate exceeds 1/2).
- ``phillips-2005``, ``phillips-2005-threshold`` (5 runs each) lock up, each run without a
  storage frame dropped on receive: 5 of 5 give p = 1/32 (96.9 %) for the receive claims,
  and "completes" is refuted (0 of 5). ``make claims`` (N = 10: p = 0.001) is the full
  statement.
- the threshold drops fewer frames of other traffic, received and transmitted, than
  ``phillips-2005``: one-sided Mann-Whitney U on 5 runs against 5, tested at 5 % (it
  needs U <= 4 of the 25 pairs). The threshold's other two claims are not checked here
  (see the README's table).

Around the claims, on every run: the lockup evidence is the seed's signature, the
filter drops other traffic and never storage, every completed run reads back with 0
mismatches (and what the target acknowledged before a lockup verifies too), and
nothing of a run is left on the machine afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testbed import results, stats
from testbed.mm.gfp import AllocFlags, slowpath_mark
from testbed.mm.lockup import OOM_MAY_END
from tests.e2e.machine import snapshot
from tests.e2e.verdicts import assert_held_at_tcp_mem, at_tcp_mem
from tests.platform.conftest import assert_nothing_left, assert_untouched

# The batch fixture makes every run before the first test: 22 runs, ~13 minutes, past
# pytest-timeout's 10-minute default for one test (its setup included).
pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

TESTBED = [sys.executable, "-m", "testbed.cli"]
RUN_TIMEOUT = 300    # a 75 s deadline, bring-up, read-back and teardown, on a loaded machine

POLICIES = {"none": "lockup", "reserve-only": "lockup", "phillips-2005": "lockup",
            "phillips-2005-threshold": "lockup", "gorman-3.6": "completed"}
RUNS = {"none": 3, "reserve-only": 3, "phillips-2005": 5, "phillips-2005-threshold": 5,
        "gorman-3.6": 3, "baseline": 3}      # by cost: see the module docstring
# The labs' initiator timeouts (labs/*/*.yaml): a 15 s recovery horizon (module docstring)
INITIATOR = ("initiator.command_timeout_s=8", "initiator.noop_out_interval_s=2",
             "initiator.noop_out_timeout_s=3", "initiator.login_timeout_s=5")
# ... but not for none: with them its initiator sometimes gives its session up while free
# memory sits above the GFP_ATOMIC floor, so no storage receive or send waits for memory
# and the detector cannot prove the state stuck (1 run of 3 in a batch on 2026-11-29: it
# ended degraded at the deadline, the OOM killer having killed the downloaders at 58 s).
# That is an open gap of the detector (issue 12's note); none runs with Linux's default
# timeouts, as make claims does (5 of 5 lockups there), proven at ~48 s.
DEFAULT_INITIATOR_POLICIES = ("none",)


def initiator(policy: str) -> tuple[str, ...]:
    return () if policy in DEFAULT_INITIATOR_POLICIES else INITIATOR
THRESHOLD_DROPS = "the threshold drops fewer frames of other traffic than phillips-2005"


def run(name: str, out: Path, *sets: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = TESTBED + ["run", name, "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    summary = json.loads((out / "summary.json").read_text())
    run_id = json.loads((out / "client-config.json").read_text())["run_id"]
    assert_nothing_left(run_id)
    return r, summary


def check_integrity(summary: dict) -> None:
    i = summary["integrity"]
    assert i["checked"], i
    assert i["mismatches"] == 0, i
    if summary["verdict"] == "completed":
        # more may be checked than the workloads counted: the 2.6.13 OOM killer kills
        # the mmap writer in most runs (local-disk under none too), and the pages of the
        # chunk it was writing are dirty and written back, never counted as written
        assert i["bytes_checked"] >= summary["writeback"]["bytes_written"] > 0


def rounds() -> list[str]:
    """The jobs in interleaved rounds (a machine that slows down slows every policy)."""
    return [g for k in range(max(RUNS.values())) for g in RUNS if k < RUNS[g]]


# Runs of the batch at once (each its own run id and namespaces: docs/architecture.md, "Run
# tags"). This 2-core machine holds 8 with every run valid (docs/measurements.md,
# "Parallel runs"). Measured here on 2026-11-30 (code 6a1422d): this test file took
# 11 min 1 s with one run at a time, 5 min 58 s with 2, every run of the batch valid,
# the same verdicts and lockup times (none 48.4-48.6 s, the others 21.0-21.4 s).
BATCH_WORKERS = 2


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """The claims batch: every policy on the contention load and the baseline, RUNS
    times each, as ``testbed claims`` lays it out (runs.json, one folder per run),
    BATCH_WORKERS runs at once, indexed in the rounds' order."""
    base = tmp_path_factory.mktemp("claims")
    before = snapshot()
    jobs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for g in rounds():
        seen[g] = seen.get(g, 0) + 1
        jobs.append((g, f"{g}#{seen[g]}"))

    def one(job: tuple[str, str]) -> results.BatchEntry:
        g, label = job
        out = base / label.replace("#", "_")
        if g == "baseline":
            r, summary = run("baseline", out, *INITIATOR)
        else:
            r, summary = run("contention", out, f"client.policy={g}", *initiator(g))
        (out / "test-run.json").write_text(json.dumps({"exit": r.returncode, "stdout": r.stdout}))
        return results.BatchEntry(label, out.name)

    with ThreadPoolExecutor(max_workers=BATCH_WORKERS) as pool:
        entries = list(pool.map(one, jobs))
    results.write_index(base, "contention: the article's claims (e2e)", entries)
    assert_untouched(before, snapshot())
    return base


@pytest.fixture(scope="module")
def contention_runs(batch) -> dict[str, list[dict]]:
    """Each group's summaries, with the exit status and output of its ``testbed run``."""
    out: dict[str, list[dict]] = {g: [] for g in RUNS}
    for entry in json.loads((batch / "runs.json").read_text())["runs"]:
        summary = json.loads((batch / entry["dir"] / "summary.json").read_text())
        summary.update(json.loads((batch / entry["dir"] / "test-run.json").read_text()))
        outcome = json.loads((batch / entry["dir"] / "client-outcome.json").read_text())
        summary["oom_kills"] = outcome.get("oom_kills") or []
        out[entry["label"].split("#")[0]].append(summary)
    return out


def freed_by_the_oom_killer(summary: dict) -> bool:
    """A downloader killed by the 2.6.13 OOM killer, its socket queue freed: that breaks
    the cycle, and the run may go on to complete (the mmap writer's kill frees nothing)."""
    return any(k["pages_freed"] > 0 for k in summary["oom_kills"])


def oom_killer_way_out(summary: dict) -> bool:
    """Stuck, and not proven a lockup because the OOM killer could still end it (the
    detector's ``OomOutlook.could_end``: a downloader waiting for no writeback, so its next
    allocation may call out_of_memory()), and the OOM killer did free a downloader's socket
    queue, after the initiator had given up: ``degraded``. Seen in 1 phillips-2005 run of 5
    beside a saturated machine (CI rehearsal of db0d218: downloader2 asleep on its socket
    from 4.4 s, the connection lost at 6.8 s, downloader1 and downloader3 killed at 55 s,
    memory above min, the session not recovered), and once before beside others' load."""
    return (summary["verdict"] == "degraded" and freed_by_the_oom_killer(summary)
            and any((st.get("not_lockup") or "").startswith(OOM_MAY_END)
                    for st in summary["stalls"]))


def held_back_by_tcp_mem(summary: dict) -> bool:
    """Completed because TCP's own limit held the downloads first: segments dropped
    PROTO_MEM (2.6.13's tcp_mem is 1,536 pages at 32 MiB), and memory never ran out. Seen
    in 1 phillips-2005 run of 5 in a batch on d34a908 (peak 1,497 pages charged, 333
    segments dropped, free memory 100-370 pages); in 0 of 10 Phillips runs in the CI run
    of 17de68c."""
    return (summary["verdict"] == "completed"
            and summary["drops"]["other"].get("PROTO_MEM", 0) > 0)


def lockups(runs: list[dict]) -> list[dict]:
    return [s for s in runs if s["verdict"] == "lockup"]


def memory_lockups(runs: list[dict]) -> list[dict]:
    """The lockups held by memory (not at TCP's limit, :func:`at_tcp_mem`)."""
    return [s for s in lockups(runs) if not at_tcp_mem(s)]


@pytest.fixture(scope="module")
def claims(batch) -> dict[str, dict]:
    """``testbed claims --from`` on the batch: claim -> its result in claims.json."""
    r = subprocess.run(TESTBED + ["claims", "--from", str(batch)], capture_output=True,
                       text=True, timeout=300)
    assert "Traceback" not in r.stderr and "supported" in r.stdout, r.stdout + r.stderr
    got = json.loads((batch / "claims.json").read_text())
    return {c["claim"]: c for c in got["claims"]}


def e2e_level(claim: dict) -> float:
    """The level a claim is tested at here: 5 %, or for a rate claim whose count cannot
    reach 5 %, the least p-value that count can give (every run agrees)."""
    if claim["test"] == "exact one-sided binomial":
        return max(stats.ALPHA, claim["best_possible_pvalue"] * (1 + 1e-9))
    return stats.ALPHA


# claim -> (its runs, whether the era models support it; None: they give it in some runs
# and not others, so 3 runs cannot say)
RATE_CLAIMS = {"none locks up": ("none", True),
               "reserve-only locks up once bulk traffic drains the reserve": ("reserve-only", None),
               "phillips-2005 receives every storage frame": ("phillips-2005", True),
               "phillips-2005 completes": ("phillips-2005", False),
               "phillips-2005-threshold receives every storage frame":
                   ("phillips-2005-threshold", True),
               "phillips-2005-threshold completes": ("phillips-2005-threshold", False),
               "gorman-3.6 completes": ("gorman-3.6", True),
               "the baseline completes": ("baseline", True)}


@pytest.mark.parametrize("claim", list(RATE_CLAIMS))
def test_each_claim_is_supported_or_refuted_as_the_era_models_give(claims, claim):
    """Supported: every run agrees, at the least p-value the count gives. Refuted (the
    2005 fixes complete, on the era models): most of their runs lock up. ``reserve-only``
    locks up every time (:func:`test_each_policy_reaches_its_verdict_every_time`), but on
    the transmit side, with its reserve drained in some runs and not in others."""
    c = claims[claim]
    group, supported = RATE_CLAIMS[claim]
    assert c["n"] == RUNS[group], c
    if supported:
        assert c["pvalue"] <= e2e_level(c), c
    elif supported is False:
        assert not c["supported"], c


def test_the_threshold_drops_fewer_frames_of_other_traffic_than_phillips(claims):
    """Received and transmitted frames of other traffic (a dropped ACK stalls a download
    as a dropped segment does), 5 runs against 5, one-sided Mann-Whitney U at 5 %."""
    c = claims[THRESHOLD_DROPS]
    assert c["a"]["n"] == RUNS["phillips-2005-threshold"] and c["b"]["n"] == RUNS["phillips-2005"]
    assert c["pvalue"] < e2e_level(c), c


@pytest.mark.parametrize("policy", list(POLICIES))
def test_each_policy_reaches_its_verdict_every_time(contention_runs, policy):
    """Every run reaches the policy's verdict, but for the OOM killer's way out, which
    the era models have: under the Phillips policies a downloader may be asleep on its
    socket rather than waiting for writeback, so the OOM killer may kill one before the
    lockup is proven, freeing its socket queue, and the run then completes (1 phillips-2005
    run of 5 in a batch on 2026-11-29: downloader1 killed at 13 s, inside the 15 s
    horizon), or, when the kill comes after the initiator gave up, ends ``degraded``
    (:func:`oom_killer_way_out`); or TCP's own limit holds the downloads before memory runs
    out (:func:`held_back_by_tcp_mem`). A 2005 run stuck beside clean pages that no
    reclaimer can run to, or at TCP's hard limit (:func:`at_tcp_mem`), is a lockup: the
    detector proves both (``ReclaimOutlook``, ``TcpOutlook`` in testbed/mm/lockup.py)."""
    for s in contention_runs[policy]:
        phillips = policy in ("phillips-2005", "phillips-2005-threshold")
        if phillips and s["verdict"] == "completed" and freed_by_the_oom_killer(s):
            expected = "completed"
        elif phillips and oom_killer_way_out(s):
            expected = "degraded"
        elif POLICIES[policy] == "lockup" and held_back_by_tcp_mem(s):
            expected = "completed"
        else:
            expected = POLICIES[policy]
        assert s["verdict"] == expected, (s["verdict"], s["reasons"], s["oom_kills"])
        assert s["exit"] == (0 if expected == POLICIES[policy] else 1), s["stdout"]
        assert f"verdict: {expected}" in s["stdout"]
        check_integrity(s)
    assert lockups(contention_runs[policy]) or POLICIES[policy] == "completed"


def test_the_baseline_completes_and_reads_back(contention_runs):
    for s in contention_runs["baseline"]:
        assert s["exit"] == 0 and s["verdict"] == "completed", s["stdout"]
        check_integrity(s)


def edges(summary: dict) -> list[tuple[str, str]]:
    return [(e["waiter"], e["waits_for"]) for e in summary["lockup"]["cycle"]["edges"]]


def test_lockup_evidence_is_the_seed_signature(contention_runs):
    for policy in ("none", "reserve-only", "phillips-2005", "phillips-2005-threshold"):
        for s in lockups(contention_runs[policy]):
            lk = s["lockup"]
            assert lk["stalled_for_s"] >= 4.0
            # proven against the horizon of the initiator as configured (initiator())
            horizon = 42 if policy in DEFAULT_INITIATOR_POLICIES else 15
            assert lk["horizon"]["seconds"] == horizon, lk["horizon"]
            assert lk["stuck_for_s"] >= horizon and lk["cycle"]["edges"]
            e = edges(s)
            if at_tcp_mem(s):
                # writeback waits on the storage flow's responses, refused at tcp_mem[2]
                # by socket queues whose readers wait for writeback
                assert_held_at_tcp_mem(s)
                continue
            assert lk["dirty"] > 0 and lk["free"] <= lk["wmark_min"], (policy, lk)
            # writeback waits on the storage flow, which waits for an skb, held by memory
            # that only writeback frees
            assert e[0][0] == "writeback" and e[1][1] == "an skb", (policy, e)
            assert ("dirty pages", "writeback") in e, (policy, e)


def test_the_reserves_lock_up_on_the_transmit_side(contention_runs):
    """Phillips' reserve lets every storage frame in; what is stuck is the initiator's
    sending: a data segment that waited the whole stuck time for transmit memory
    (``sk_stream_wait_memory``) with free memory at or under the GFP_ATOMIC floor, for
    2.6.13 gave no socket transmit access to the reserve. ``reserve-only`` gets stuck
    there too (its receive drops are not checked: the reserve is the bulk flows' too)."""
    for policy in ("reserve-only", "phillips-2005", "phillips-2005-threshold"):
        for s in contention_runs[policy]:
            if policy != "reserve-only":
                # the reserve's claim is about memory: a segment refused at TCP's limit
                # (PROTO_MEM; 2.6.13 exempts no skb from tcp_mem[2]) is not its doing
                dropped = s["drops"]["memalloc"]
                assert dropped["total"] - dropped.get("PROTO_MEM", 0) == 0, (policy, s["drops"])
        for s in memory_lockups(contention_runs[policy]):
            # its data segments wait to be sent; or, its connection lost, the SYNs of the
            # session's reinstatement do
            sent = {("writeback", "iSCSI requests sent"), ("writeback", "iSCSI reinstatement")}
            assert sent & set(edges(s)), (policy, edges(s))
            lk = s["lockup"]
            floor = slowpath_mark(lk["wmark_min"], AllocFlags.HIGH | AllocFlags.HARDER)
            assert lk["free"] <= floor + 8, (policy, floor, lk["free"])
    for s in contention_runs["phillips-2005"]:
        assert s["drops"]["other"].get("NOT_MEMALLOC", 0) > 0


def test_none_stops_at_the_atomic_floor(contention_runs):
    """``none``: GFP_ATOMIC may dip to 3/8 of min and no further, so free memory stops
    there and atomic allocations fail. ``reserve-only``'s frames went into the reserve
    (__GFP_MEMALLOC), bulk frames too."""
    for s in memory_lockups(contention_runs["none"]):
        lk = s["lockup"]
        floor = slowpath_mark(lk["wmark_min"], AllocFlags.HIGH | AllocFlags.HARDER)
        # a few pages may come back between the last failed allocation and the snapshot
        # (a frame freed on drop, a page read by the agent): near the floor, not under min
        assert 0 < lk["free"] <= floor + 8 < lk["wmark_min"], (floor, lk)
        assert lk["alloc_fail"]["atomic"] > 0 and lk["alloc_fail"]["memalloc"] == 0
        assert lk["reserve"]["client-eth0"] == 0
    for s in memory_lockups(contention_runs["reserve-only"]):
        assert s["lockup"]["reserve"]["client-eth0"] > 0, s["lockup"]


def test_gorman_completes_with_every_storage_frame(contention_runs):
    """3.6 throttles the mmap writer at the dirty limits (``balance_dirty_pages`` from
    ``page_mkwrite``, since 2.6.19), so this load does not bring it to min (lowest free
    227 pages against a min of 181 in docs/measurements.md's run): no storage frame is
    dropped, and its reserve is not what saved it (a finding: the load does not test
    3.6's reserve)."""
    for s in contention_runs["gorman-3.6"]:
        assert s["drops"]["memalloc"]["total"] == 0, s["drops"]


@pytest.mark.parametrize("name", ["udp-flood", "local-disk"])
def test_reference_scenarios_complete(tmp_path, name):
    r, summary = run(name, tmp_path / name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary["verdict"] == "completed"
    check_integrity(summary)
