"""The statistics of repeated runs (testbed.stats), their use on batch folders
(testbed.results), and ``testbed claims --from DIR`` on small hand-made claims folders.

Known data first: scipy's own quantile test confirms the median intervals, and two
separated samples of ten have the exact one-sided U p-value 1 / C(20, 10). Then real
folders written in tmp_path, as ``testbed compare | claims`` leave them.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest
from scipy import stats as sps

from testbed import claims, results, stats
from testbed.cli import main
from testbed.commands import run as run_cmd
from testbed.errors import TestbedError
from testbed.orchestrator import RunResult
from testbed.report import build_compare_report
from tests.core.test_results import batch_folder, summary


# -- median intervals -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [6, 7, 10, 13, 20, 31])
def test_the_median_interval_is_scipys_quantile_test_interval(n):
    xs = [random.Random(n).lognormvariate(0, 1) for _ in range(n)]
    got = stats.median_ci(xs)
    want = sps.quantile_test(xs, q=float(sorted(xs)[n // 2]), p=0.5).confidence_interval(0.95)
    assert (got.low, got.high) == (pytest.approx(want.low), pytest.approx(want.high))
    assert got.median == pytest.approx(sorted(xs)[(n - 1) // 2] / 2 + sorted(xs)[n // 2] / 2)
    assert got.confidence >= 0.95 and not got.short


def test_ten_runs_give_the_second_and_ninth_values_at_97_9_percent():
    got = stats.median_ci([9, 1, 8, 2, 7, 3, 6, 4, 5, 10])
    assert (got.n, got.median, got.low, got.high) == (10, 5.5, 2, 9)
    assert got.confidence == pytest.approx(1 - 2 * 11 / 1024)      # 1 - 2 P(Bin(10,1/2) <= 1)


def test_too_few_values_give_the_range_with_the_coverage_it_has():
    five = stats.median_ci([3, 1, 2, 5, 4])
    assert (five.low, five.high, five.short) == (1, 5, True)
    assert five.confidence == pytest.approx(1 - 2 / 32)
    assert stats.median_ci([]).median is None and stats.median_ci([]).n == 0
    one = stats.median_ci([4.0])
    assert (one.median, one.low, one.high, one.confidence) == (4.0, 4.0, 4.0, 0.0)


# -- tests ------------------------------------------------------------------------------------

def test_ten_of_ten_against_one_half_is_p_one_in_1024():
    t = stats.rate_test(10, 10)
    assert t.pvalue == pytest.approx(2 ** -10) and t.supported
    assert t.lower_bound == pytest.approx(0.05 ** (1 / 10))     # exact one-sided bound
    assert t.best_pvalue == pytest.approx(2 ** -10)
    assert not stats.rate_test(2, 2).supported                    # two runs can never say
    assert stats.rate_test(7, 10).pvalue == pytest.approx(sum(math.comb(10, k) for k in (7, 8, 9, 10)) / 1024)
    assert not stats.rate_test(0, 0).supported


def test_the_fewest_runs_that_can_support_a_rate():
    assert stats.runs_to_support(0.5) == 5                        # 2^-5 = 0.031; 2^-4 = 0.0625
    assert stats.rate_test(5, 5).supported and not stats.rate_test(4, 4).supported
    for p0 in (0.1, 0.3, 0.5, 0.7, 0.9):
        n = stats.runs_to_support(p0)
        assert stats.p0_floor(n, p0) < stats.ALPHA <= stats.p0_floor(n - 1, p0)
    with pytest.raises(ValueError):
        stats.runs_to_support(1.0)


def test_separated_samples_have_the_exact_one_sided_u_pvalue():
    low, high = list(range(1, 11)), list(range(11, 21))
    t = stats.less_test(low, high)
    assert t.u == 0 and t.pvalue == pytest.approx(1 / math.comb(20, 10))
    assert t.supported
    assert stats.less_test(high, low).pvalue == pytest.approx(1.0)
    assert not stats.less_test(high, low).supported


def test_ties_and_empty_samples_are_no_evidence():
    assert stats.less_test([0] * 10, [0] * 10).pvalue == 1.0
    assert stats.less_test([], [1, 2]).pvalue == 1.0
    # zeros tied across samples: the permutation p-value is exact, and agrees with scipy's
    # own permutation test of the U statistic
    a, b = [0, 0, 0, 1, 2, 2, 3, 5, 6, 8], [0, 2, 4, 5, 7, 9, 9, 11, 12, 15]
    got = stats.less_test(a, b).pvalue
    want = sps.permutation_test(
        (a, b), lambda x, y, axis: sps.mannwhitneyu(x, y, axis=axis).statistic,
        vectorized=True, permutation_type="independent", alternative="less",
        n_resamples=200_000).pvalue
    assert got == pytest.approx(want, rel=1e-9) and got < 0.05


def test_a_side_of_one_run_has_its_exact_pvalue():
    """scipy's permutation test refuses a sample of one; the split count does not: one
    value below two others is the lowest of three ranks in 1 of 3 splits."""
    assert stats.less_test([1.0], [2.0, 3.0]).pvalue == pytest.approx(1 / 3)
    assert stats.less_test([3.0], [1.0, 2.0]).pvalue == pytest.approx(1.0)
    # 30 against 30, past what enumerating the 1.2e17 splits could do: separated samples
    assert stats.less_test(list(range(30)), list(range(30, 60))).pvalue == pytest.approx(
        1 / math.comb(60, 30))


# -- batch folders ------------------------------------------------------------------------------

def run_summary(policy: str, verdict: str, t: float, other: int = 0, tx_other: int = 0,
                stall: float = 3.0, scenario: str = "contention", drained: bool = False
                ) -> dict[str, Any]:
    """A summary.json as summarize writes it now: transmit drops by class, bulk flows."""
    s = summary(verdict, policy, lockup_t=t if verdict == "lockup" else None, wb_time=t,
                other=other)
    s["scenario"] = scenario
    s["drops"]["tx"] = {"total": tx_other, "memalloc": {"total": 0},
                        "other": {"total": tx_other, "NOMEM": tx_other}}
    # each flow's timeouts follow its stall (one per whole second of it)
    s["goodput"] = {f"bulk{i}": {"bytes": 10**6, "mbit_s": 1.5 + i, "longest_stall_s": stall - i,
                                 "retrans": 4, "rto": int(stall - i), "rto_time_s": 0.2}
                    for i in (1, 2)}
    if s["lockup"] is not None:
        s["lockup"]["alloc_fail"] = {"atomic": 9, "memalloc": 3 if drained else 0}
    return s


def test_group_statistics_of_a_compare_folder(tmp_path):
    runs = []
    for k in range(10):
        runs.append((f"none#{k + 1}", {}, run_summary("lockup", "lockup", 5.0 + k / 10, other=100 + k)))
        runs.append((f"gorman-3.6#{k + 1}", {},
                     run_summary("gorman-3.6", "completed" if k else "degraded", 30.0 + k,
                                 other=1000 + 10 * k, tx_other=k)))
    for i, (label, params, s) in enumerate(runs):
        s["policy"] = label.split("#")[0]
    base = batch_folder(tmp_path / "cmp", runs)
    build_compare_report(base)
    doc = json.loads((base / "stats.json").read_text())
    none, gorman = doc["groups"]
    assert (none["group"], none["runs"], none["verdicts"]) == ("none", 10, {"lockup": 10})
    assert gorman["verdicts"] == {"completed": 9, "degraded": 1}
    t = none["figures"]["time_s"]
    assert (t["median"], t["low"], t["high"]) == (pytest.approx(5.45), 5.1, 5.8)
    assert gorman["figures"]["other_drops"]["median"] == pytest.approx(1045 + 4.5)
    assert gorman["figures"]["tx_other_drops"]["values"] == list(range(10))
    assert gorman["figures"]["bulk_longest_stall_s"]["median"] == 2.0       # the longer flow
    assert gorman["figures"]["bulk_timeouts"]["median"] == 3             # 2 + 1
    assert gorman["figures"]["bulk_rto_time_s"]["median"] == pytest.approx(0.4)
    assert gorman["figures"]["goodput_bulk2"]["median"] == 3.5
    assert none["figures"]["lowest_free_pages"]["n"] == 0                    # no samples
    page = (base / "report.html").read_text()
    assert "Statistics" in page and "5.5 [5.1, 5.8]" in page and "stats.json" in page


def test_the_cli_prints_the_statistics_per_group(tmp_path, capsys):
    base = batch_folder(tmp_path / "cmp", [
        ("none#1", {}, run_summary("none", "lockup", 5.0)),
        ("none#2", {}, run_summary("none", "lockup", 7.0)),
        ("none#3", {}, run_summary("none", "completed", 6.0)),
    ])
    run_cmd.print_stats(base)
    out = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0]: line for line in out if line}
    assert rows["verdicts"].split(None, 1)[1].strip() == "lockup 2, completed 1"
    # three runs: the interval is the range, marked as short of 95 %
    assert "6.0 [5.0, 7.0]*" in rows["time to lockup / completion (s)"]


def test_a_run_without_a_verdict_is_counted_but_gives_no_figures(tmp_path):
    failed = run_summary("none", "lockup", 1.0, other=99999)
    failed.update(verdict=None, status="error")
    base = batch_folder(tmp_path / "cmp", [("none#1", {}, run_summary("none", "lockup", 5.0)),
                                           ("none#2", {}, failed)])
    batch = results.read_batch(base)
    assert batch is not None
    (g,) = results.batch_groups(batch, batch.runs())
    assert g.runs == 2 and g.verdicts == Counter({"lockup": 1, None: 1})
    assert g.values["rx_other_drops"] == [0.0] and g.estimates["time_s"].n == 1
    assert results.verdict_text(g.verdicts) == "lockup 1, no verdict 1"


def test_repeats_are_interleaved_and_labelled():
    a = run_cmd.Job("a", None, {})      # type: ignore[arg-type]
    b = run_cmd.Job("b", None, {"k": "1"})  # type: ignore[arg-type]
    got = run_cmd.repeated([a, b], 3)
    assert [j.label for j in got] == ["a#1", "b#1", "a#2", "b#2", "a#3", "b#3"]
    assert got[1].params == {"k": "1"}
    assert run_cmd.repeated([a, b], 1) == [a, b]
    jobs = run_cmd.compare_jobs("baseline", ["none", "gorman-3.6"], [], 2)
    assert [(j.label, j.scenario.client.policy) for j in jobs] == [
        ("none#1", "none"), ("gorman-3.6#1", "gorman-3.6"),
        ("none#2", "none"), ("gorman-3.6#2", "gorman-3.6")]


class FlakyOrchestrator:
    """Stands in for the orchestrator: the runs listed in ``fail`` end as a node that
    did not start does (summary.json with status error, then TestbedError)."""

    calls: list[str] = []
    fail: set[int] = set()

    def __init__(self, scenario: Any, out_dir: Path) -> None:
        self.out = out_dir

    def run(self) -> RunResult:
        FlakyOrchestrator.calls.append(self.out.name)
        self.out.mkdir(parents=True)
        s = run_summary("gorman-3.6", "completed", 30.0)
        failing = len(FlakyOrchestrator.calls) in FlakyOrchestrator.fail
        if failing:
            s.update(verdict=None, status="error", detail="node client: Bad address")
        (self.out / "summary.json").write_text(json.dumps(s))
        if failing:
            raise TestbedError("node client: Bad address")
        return RunResult(self.out, s)


def test_a_batch_goes_on_after_a_run_fails_for_the_testbeds_own_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(run_cmd, "Orchestrator", FlakyOrchestrator)
    monkeypatch.setattr(run_cmd, "build_compare_report", lambda base: base / "report.html")
    monkeypatch.setattr(FlakyOrchestrator, "calls", [])
    monkeypatch.setattr(FlakyOrchestrator, "fail", {2})
    jobs = [run_cmd.Job(f"gorman-3.6#{k}", None, {}) for k in (1, 2, 3)]  # type: ignore[arg-type]
    status, _ = run_cmd._run_batch(tmp_path / "a", jobs, "t")
    assert status == 1 and FlakyOrchestrator.calls == ["gorman-3.6_1", "gorman-3.6_2", "gorman-3.6_3"]
    batch = results.read_batch(tmp_path / "a")
    assert batch is not None
    assert [r.verdict for r in batch.runs()] == ["completed", None, "completed"]
    # failures in a row: the machine is broken, the batch stops
    monkeypatch.setattr(FlakyOrchestrator, "calls", [])
    monkeypatch.setattr(FlakyOrchestrator, "fail", {1, 2, 3})
    with pytest.raises(TestbedError, match="Bad address"):
        run_cmd._run_batch(tmp_path / "b", jobs * 2, "t")
    assert len(FlakyOrchestrator.calls) == run_cmd.MAX_FAILED_IN_A_ROW


# -- testbed claims --from --------------------------------------------------------------------------

def claims_folder(path: Path, n: int = 10, threshold_other: int = 300,
                  threshold_stall: float = 2.0) -> Path:
    """A claims batch: each policy n times on 'contention', the baseline n times.
    phillips-2005 drops 1000 + k frames of other traffic and stalls 6 s."""
    runs: list[tuple[str, dict[str, str], Optional[dict[str, Any]]]] = []
    for k in range(n):
        cases = [("none", "lockup", 5.0, 0, 0.0, False),
                 ("reserve-only", "lockup", 6.0, 0, 0.0, True),
                 ("phillips-2005", "completed", 30.0, 1000 + k, 6.0 + k / 10, False),
                 ("phillips-2005-threshold", "completed", 31.0, threshold_other + k,
                  threshold_stall + k / 10, False),
                 ("gorman-3.6", "completed", 31.0, 1500, 5.0, False)]
        for policy, verdict, t, other, stall, drained in cases:
            runs.append((f"{policy}#{k + 1}", {},
                         run_summary(policy, verdict, t, other=other // 2, tx_other=other - other // 2,
                                     stall=stall + 2, drained=drained)))
        runs.append((f"baseline#{k + 1}", {},
                     run_summary("gorman-3.6", "completed", 20.0, scenario="baseline")))
    return batch_folder(path, runs, title="contention: the article's claims")


def test_claims_from_a_folder_are_all_supported(tmp_path, capsys):
    base = claims_folder(tmp_path / "claims")
    assert main(["claims", "--from", str(base)]) == 0
    out = capsys.readouterr().out
    doc = json.loads((base / "claims.json").read_text())
    assert doc["runs"] == {"none": 10, "reserve-only": 10, "phillips-2005": 10,
                           "phillips-2005-threshold": 10, "gorman-3.6": 10, "baseline": 10}
    got = {c["claim"]: c for c in doc["claims"]}
    assert all(c["supported"] for c in got.values()), got
    assert got["none locks up"]["pvalue"] == pytest.approx(2 ** -10)
    assert got["none locks up"]["figures"] == "10 of 10 runs locked up; rate >= 74% at 95%"
    other = got["the threshold drops fewer frames of other traffic than phillips-2005"]
    assert other["pvalue"] == pytest.approx(1 / math.comb(20, 10))
    assert "not supported" not in out and out.count("supported") == len(got)
    # the baseline is its own group in the batch's statistics, not pooled with gorman-3.6
    groups = [g["group"] for g in json.loads((base / "stats.json").read_text())["groups"]]
    assert "baseline (gorman-3.6)" in groups and "contention (gorman-3.6)" in groups


def test_claims_that_do_not_hold_say_so(tmp_path, capsys):
    base = claims_folder(tmp_path / "claims", n=10, threshold_other=1005, threshold_stall=4.0)
    # reserve-only's lockups without an empty reserve are not the claim
    for i, entry in enumerate(json.loads((base / "runs.json").read_text())["runs"]):
        if entry["label"].startswith("reserve-only#") and int(entry["label"].split("#")[1]) <= 5:
            s = json.loads((base / entry["dir"] / "summary.json").read_text())
            s["lockup"]["alloc_fail"]["memalloc"] = 0
            (base / entry["dir"] / "summary.json").write_text(json.dumps(s))
    assert main(["claims", "--from", str(base)]) == 1
    got = {c["claim"]: c for c in json.loads((base / "claims.json").read_text())["claims"]}
    assert not got["reserve-only locks up once bulk traffic drains the reserve"]["supported"]
    assert not got["the threshold drops fewer frames of other traffic than phillips-2005"]["supported"]
    assert got["the threshold stalls the downloads less than phillips-2005"]["supported"]
    assert got["the threshold costs the downloads fewer retransmission timeouts than "
               "phillips-2005"]["supported"]
    assert got["none locks up"]["supported"]
    assert "not supported" in capsys.readouterr().out


def test_a_reserve_that_lets_storage_frames_drop_does_not_hold_whatever_the_verdict(tmp_path):
    """The receive claim counts storage frames dropped on receive, not the verdict: half of
    phillips-2005's runs drop some (and still complete); every threshold run locks up
    without dropping one, which holds the receive claim and refutes the completion one."""
    base = claims_folder(tmp_path / "claims")
    for entry in json.loads((base / "runs.json").read_text())["runs"]:
        policy, k = entry["label"].split("#")
        path = base / entry["dir"] / "summary.json"
        s = json.loads(path.read_text())
        if policy == "phillips-2005" and int(k) <= 5:
            s["drops"]["memalloc"] = {"total": 3, "NOMEM": 3}
        elif policy == "phillips-2005-threshold":
            s = run_summary(policy, "lockup", 20.0)
        path.write_text(json.dumps(s))
    assert main(["claims", "--from", str(base)]) == 1
    got = {c["claim"]: c for c in json.loads((base / "claims.json").read_text())["claims"]}
    assert not got["phillips-2005 receives every storage frame"]["supported"]
    assert got["phillips-2005 receives every storage frame"]["successes"] == 5
    assert got["phillips-2005 completes"]["supported"]
    assert got["phillips-2005-threshold receives every storage frame"]["supported"]
    assert not got["phillips-2005-threshold completes"]["supported"]


def test_segments_tcps_limit_refused_are_not_the_thresholds_drops(tmp_path):
    """A threshold run held back by TCP's limit completes and meets that limit all along
    (seen: 403 segments dropped PROTO_MEM, none by the reserve's rules). Those are
    TCP's rule, the same under both policies, so the drop claims leave them out."""
    base = claims_folder(tmp_path / "claims", n=5)
    for entry in json.loads((base / "runs.json").read_text())["runs"]:
        if entry["label"] == "phillips-2005-threshold#5":
            path = base / entry["dir"] / "summary.json"
            s = json.loads(path.read_text())
            s["drops"]["other"] = {"total": 4303, "NOT_MEMALLOC": 300, "PROTO_MEM": 4003}
            path.write_text(json.dumps(s))
    main(["claims", "--from", str(base)])
    got = {c["claim"]: c for c in json.loads((base / "claims.json").read_text())["claims"]}
    both = got["the threshold drops fewer frames of other traffic than phillips-2005"]
    assert both["supported"] and both["pvalue"] == pytest.approx(1 / math.comb(10, 5))
    assert "(not at tcp_mem)" in both["figures"]
    rx = got["the threshold drops fewer received frames of other traffic "
             "(the earlier, receive-only count)"]
    assert rx["supported"], rx


def test_a_small_claims_folder_supports_no_rate_claim(tmp_path):
    base = claims_folder(tmp_path / "claims", n=2)
    assert main(["claims", "--from", str(base)]) == 1
    got = json.loads((base / "claims.json").read_text())["claims"]
    rates = [c for c in got if c["test"] == "exact one-sided binomial"]
    assert rates and all(c["pvalue"] == pytest.approx(0.25) and not c["supported"] for c in rates)


def test_claims_from_a_folder_that_is_not_a_batch_is_one_line(tmp_path, capsys):
    assert main(["claims", "--from", str(tmp_path)]) == 1
    assert "not a compare or sweep folder" in capsys.readouterr().err


def test_verdict_counts_are_the_claims_counts(tmp_path):
    base = claims_folder(tmp_path / "claims", n=3)
    batch = results.read_batch(base)
    assert batch is not None
    split = claims.split(batch)
    counts = results.verdict_counts(split.policy("none") + split.policy("gorman-3.6"))
    assert counts == {"none": Counter({"lockup": 3}), "gorman-3.6": Counter({"completed": 3})}
    assert len(split.baseline) == 3 and split.scenario == "contention"
