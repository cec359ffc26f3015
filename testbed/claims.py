"""The article's claims as hypotheses, each with its test, evaluated on a batch of runs.

A batch written by ``testbed claims`` holds every policy's runs of the contention load
and the baseline's runs (:mod:`testbed.results` reads it). Each :class:`Claim` picks its
runs and says what it tests:

- "X locks up" / "X completes": an exact one-sided binomial test of the rate of that
  verdict against H0: rate <= 1/2 (``testbed.stats.rate_test``), among the runs that
  reached a verdict. All of N runs give p = 2^-N (N = 10: 0.001); the exact lower bound
  of the rate says how often it happens at least, at 95 %.
- "X receives every storage frame" (``phillips-2005`` and its threshold): the same test
  of the rate of runs that dropped no storage frame on receive, the reserve's own claim,
  apart from the verdict (in 2.6.13 the transmit side had no reserve).
- "the threshold drops fewer frames of other traffic / stalls the downloads less than
  phillips-2005": a one-sided Mann-Whitney U test on the runs' figures
  (``testbed.stats.less_test``): what other traffic's users feel is frames dropped
  either way (a lost ACK stalls a download like a lost segment), the longest time a
  download went without a byte (whatever stopped it: losses, or its reader blocked by
  the dirty limits) and the protocol stalls Daniel named, the downloads' retransmission
  timeouts (their servers' TCP_INFO). The received-only count, the figure the earlier
  tests summed, is stated too, so the difference shows. The drop counts are of the
  memory rules the policies differ in: a segment TCP's own limit refused (``PROTO_MEM``,
  ``tcp_mem[2]``, the same 2.6.13 rule under both) is left out. A run that TCP's limit
  held back completes, and a completed run meets that limit for its whole length, so
  counting those would compare run lengths, not the threshold.

A run past a fidelity bound (``invalid``, :mod:`testbed.fidelity`: the machine did not
emulate what was asked, so its verdict is not the policy's) is left out of every test,
and each claim's figures say how many were left out.

Each claim is tested at 5 %; the claims are separate statements of the article, not one
family (for all 10 at once, Bonferroni would ask p < 0.005, which 10 of 10 runs give).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from . import stats
from .errors import ConfigError
from .results import Batch, RunOutcome, by_policy, estimate_text, group

BASELINE = "baseline"     # the built-in reference scenario's name (scenarios/baseline.yaml)
POLICIES = ("none", "reserve-only", "phillips-2005", "phillips-2005-threshold", "gorman-3.6")
P0 = 0.5                  # H0 of the rate claims: the verdict happens at most half the time


@dataclass(frozen=True)
class Runs:
    """A claims batch's runs: the contention load's per policy, and the baseline's."""

    scenario: str
    by_policy: dict[str, list[RunOutcome]]
    baseline: list[RunOutcome]

    def policy(self, name: str) -> list[RunOutcome]:
        return self.by_policy.get(name, [])


def split(batch: Batch) -> Runs:
    """The batch's runs: the baseline's by name, the rest must be one scenario."""
    runs = batch.runs()
    base = [r for r in runs if r.scenario == BASELINE]
    load = [r for r in runs if r.scenario != BASELINE]
    names = sorted({r.scenario for r in load})
    if len(names) > 1:
        raise ConfigError(f"{batch.path}: runs of {', '.join(names)}: a claims batch holds "
                          f"one contention scenario (and {BASELINE})")
    return Runs(names[0] if names else "?", group(load, by_policy), base)


@dataclass(frozen=True)
class Result:
    """A claim, evaluated: the figures behind it, the test's p-value, the decision."""

    claim: str
    hypothesis: str
    figures: str
    pvalue: float
    supported: bool
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"claim": self.claim, "hypothesis": self.hypothesis, "figures": self.figures,
                "pvalue": self.pvalue, "supported": self.supported, **self.detail}


# -- rate claims ------------------------------------------------------------------------------

Predicate = Callable[[RunOutcome], bool]


def verdict_is(verdict: str) -> Predicate:
    return lambda r: r.verdict == verdict


def reserve_drained(r: RunOutcome) -> bool:
    """Locked up after the reserve ran dry: the lockup's evidence counts failed
    __GFP_MEMALLOC allocations (only an empty reserve refuses those)."""
    lk = r.summary.get("lockup") or {}
    return r.verdict == "lockup" and (lk.get("alloc_fail") or {}).get("memalloc", 0) > 0


def valid(runs: Sequence[RunOutcome]) -> tuple[list[RunOutcome], int]:
    """The runs that count, and how many were left out as ``invalid`` (past a fidelity
    bound, :mod:`testbed.fidelity`: a starved run's verdict is not the policy's)."""
    kept = [r for r in runs if not r.invalid]
    return kept, len(runs) - len(kept)


def left_out(invalid: int) -> str:
    """`` (2 invalid runs left out)``, or nothing."""
    return f" ({invalid} invalid run{'s' if invalid != 1 else ''} left out)" if invalid else ""


def rate_claim(claim: str, event: str, runs: Sequence[RunOutcome], happens: Predicate) -> Result:
    """``claim`` holds if ``event`` happens in more than P0 of the valid runs with a verdict."""
    counted, invalid = valid(runs)
    judged = [r for r in counted if r.verdict is not None]
    k = sum(1 for r in judged if happens(r))
    t = stats.rate_test(k, len(judged), P0)
    unjudged = len(counted) - len(judged)
    figures = (f"{k} of {len(judged)} runs {event}; rate >= {t.lower_bound:.0%} at "
               f"{stats.CONFIDENCE:.0%}" + (f" ({unjudged} without a verdict)" if unjudged else "")
               + left_out(invalid))
    return Result(claim, f"H1: rate of '{event}' > {P0:g} (H0: <= {P0:g}); exact one-sided "
                         f"binomial test", figures, t.pvalue, t.supported,
                  {**t.to_json(), "invalid": invalid})


# -- what each policy is claimed to do on a contention load -----------------------------------

@dataclass(frozen=True)
class PolicyClaim:
    """The article's claim about one policy on a contention load: the claim's sentence,
    the event it counts (``holds``), and the verdict that refutes it (``refutes``).
    They are not complements: a run without a verdict, a ``degraded`` one (finished
    outside the scenario's bounds, or stuck but not proven so by the deadline) or a
    ``reserve-only`` lockup with the reserve not drained neither holds nor refutes."""

    claim: str
    event: str
    holds: Predicate
    refutes: Predicate
    expect: str         # the verdict the claim expects (a counterexample scenario's expect)


def _fix_claim(policy: str) -> PolicyClaim:
    return PolicyClaim(f"{policy} completes", "completed", verdict_is("completed"),
                       verdict_is("lockup"), "completed")


POLICY_CLAIMS: dict[str, PolicyClaim] = {
    "none": PolicyClaim("none locks up", "locked up", verdict_is("lockup"),
                        verdict_is("completed"), "lockup"),
    "reserve-only": PolicyClaim("reserve-only locks up once bulk traffic drains the reserve",
                                "locked up with the reserve drained", reserve_drained,
                                verdict_is("completed"), "lockup"),
    **{p: _fix_claim(p) for p in ("phillips-2005", "phillips-2005-threshold", "gorman-3.6")},
}


def policy_rate_claim(policy: str, runs: Sequence[RunOutcome]) -> Result:
    """The rate claim of ``policy`` (:data:`POLICY_CLAIMS`) tested on ``runs``."""
    c = POLICY_CLAIMS[policy]
    return rate_claim(c.claim, c.event, runs, c.holds)


# -- comparison claims --------------------------------------------------------------------------

Value = Callable[[RunOutcome], Optional[Union[int, float]]]


def less_claim(claim: str, what: str, digits: int, a_name: str, a: Sequence[RunOutcome],
               b_name: str, b: Sequence[RunOutcome], value: Value) -> Result:
    """``claim`` holds if ``value`` tends to be smaller over ``a`` than over ``b`` (their
    valid runs: invalid ones are left out and counted)."""
    (a, bad_a), (b, bad_b) = valid(a), valid(b)
    xa = [float(v) for v in map(value, a) if v is not None]
    xb = [float(v) for v in map(value, b) if v is not None]
    t = stats.less_test(xa, xb)
    figures = (f"{what}: {a_name} {estimate_text(t.a, digits, len(a))} vs "
               f"{b_name} {estimate_text(t.b, digits, len(b))}" + left_out(bad_a + bad_b))
    return Result(claim, f"H1: {what} of {a_name} tend to be smaller than of {b_name}; "
                         f"one-sided Mann-Whitney U test", figures, t.pvalue, t.supported,
                  {**t.to_json(), "invalid": bad_a + bad_b})


# -- the article's claims -------------------------------------------------------------------------

TCP_LIMIT = "PROTO_MEM"      # a segment tcp_mem refused: TCP's rule, not the policy's


def policy_drops(r: RunOutcome, rx_only: bool = False) -> Optional[int]:
    """Frames of other traffic the memory rules dropped (received, and transmitted unless
    ``rx_only``), without the segments TCP's own limit refused (module docstring)."""
    rx = r.drops("other")
    if rx is None:
        return None
    rx -= r.drops("other", TCP_LIMIT) or 0
    if rx_only:
        return rx
    tx = r.tx_drops("other")
    return None if tx is None else rx + tx - (r.tx_drops("other", TCP_LIMIT) or 0)


def receives_every_storage_frame(r: RunOutcome) -> bool:
    """Not one storage frame dropped on receive, whatever the verdict: what the reserve
    and its filter are for (the article: receive the packets it needs while ignoring
    unrelated ones). The transmit side is a separate matter (2.6.13 had no reserve for
    it), so a run can hold this and still lock up."""
    return r.verdict is not None and r.drops("memalloc") == 0


def receive_claim(policy: str, runs: Sequence[RunOutcome]) -> Result:
    return rate_claim(f"{policy} receives every storage frame", "dropped no storage frame "
                      "on receive", runs, receives_every_storage_frame)


def evaluate(runs: Runs) -> list[Result]:
    """Every claim on ``runs``, in the article's order."""
    ph, th = runs.policy("phillips-2005"), runs.policy("phillips-2005-threshold")
    compare = ("phillips-2005-threshold", th, "phillips-2005", ph)
    return [
        policy_rate_claim("none", runs.policy("none")),
        policy_rate_claim("reserve-only", runs.policy("reserve-only")),
        receive_claim("phillips-2005", ph),
        policy_rate_claim("phillips-2005", ph),
        receive_claim("phillips-2005-threshold", th),
        policy_rate_claim("phillips-2005-threshold", th),
        less_claim("the threshold drops fewer frames of other traffic than phillips-2005",
                   "other frames dropped, rx + tx (not at tcp_mem)", 0, *compare, policy_drops),
        less_claim("the threshold stalls the downloads less than phillips-2005",
                   "longest bulk-flow stall (s)", 1, *compare, lambda r: r.longest_bulk_stall_s),
        less_claim("the threshold costs the downloads fewer retransmission timeouts than "
                   "phillips-2005", "bulk retransmission timeouts", 0, *compare,
                   lambda r: r.bulk_timeouts),
        less_claim("the threshold drops fewer received frames of other traffic "
                   "(the earlier, receive-only count)",
                   "other frames dropped, received (not at tcp_mem)", 0, *compare,
                   lambda r: policy_drops(r, rx_only=True)),
        policy_rate_claim("gorman-3.6", runs.policy("gorman-3.6")),
        rate_claim("the baseline completes", "completed", runs.baseline, verdict_is("completed")),
    ]


def document(batch: Batch, runs: Runs, results: Sequence[Result]) -> dict[str, Any]:
    """``claims.json``: what was tested on which runs, and the outcome of each claim."""
    return {"title": batch.title, "scenario": runs.scenario, "baseline": BASELINE,
            "runs": {**{p: len(rs) for p, rs in runs.by_policy.items()},
                     BASELINE: len(runs.baseline)},
            "invalid": {**{p: valid(rs)[1] for p, rs in runs.by_policy.items()},
                        BASELINE: valid(runs.baseline)[1]},
            "alpha": stats.ALPHA, "rate_h0": P0,
            "claims": [r.to_json() for r in results]}
