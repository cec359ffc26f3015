"""The statistics of repeated runs: one module, used by results, the report, the CLI, the
claims and the graders.

A run of the testbed is one sample of a noisy process (thread scheduling, tc queues,
when memory runs out relative to the bulk data in flight), so a figure is given as the
median of N runs with a 95 % interval, and a claim as a test with its p-value:

- :func:`median_ci`: a distribution-free confidence interval for the median from order
  statistics, its coverage computed from ``scipy.stats.binom``. Chosen over the
  bootstrap because the figures are skewed, discrete (drop counts, many zeros) and N is
  small (10): the order-statistic interval's coverage holds for any continuous
  distribution and is computed exactly (conservative with ties), while a bootstrap
  interval with N = 10 under-covers and collapses on tied values. Below N = 6 no pair of
  order statistics reaches 95 %; the interval is then the range, with the coverage it
  does have (:attr:`Estimate.confidence`), and renderers mark it.
- :func:`rate_test`: an exact one-sided binomial test (``scipy.stats.binomtest``) of
  "this happens more often than ``p0``", with the exact (Clopper-Pearson) one-sided lower
  bound of the rate: with 10 of 10 runs, p = 0.001 and the rate is >= 74 % at 95 %.
  :func:`runs_to_support` says how many runs such a test needs at the least.
- :func:`less_test`: a one-sided Mann-Whitney U test that one sample tends to be
  smaller than another, its p-value from the exact permutation distribution of U:
  counted, for every way of splitting the pooled (mid)ranks into the two sizes, by
  subset sums (:func:`u_less_pvalue`), so it is exact at any size and with tied values,
  where scipy's ``exact`` method assumes none and the normal approximation is rough at
  this size. It equals ``scipy.stats.permutation_test`` over all 184,756 arrangements
  of 10 against 10, in milliseconds instead of seconds, and takes a side of one.

Nothing here knows about runs: :mod:`testbed.results` turns runs into numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np


def sps():
    """``scipy.stats``, imported when a statistic is computed: the import takes about
    0.5 s, which every ``testbed`` command that computes none would pay."""
    from scipy import stats
    return stats

CONFIDENCE = 0.95       # of every interval
ALPHA = 0.05            # a claim is supported when its p-value is below this


@dataclass(frozen=True)
class Estimate:
    """The median of ``n`` values with a distribution-free interval ``[low, high]`` that
    covers the true median with probability ``confidence`` (None for ``n`` = 0)."""

    n: int
    median: Optional[float]
    low: Optional[float]
    high: Optional[float]
    confidence: float

    @property
    def short(self) -> bool:
        """Too few values for the interval to reach :data:`CONFIDENCE`."""
        return self.n > 0 and self.confidence < CONFIDENCE - 1e-12

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "median": self.median, "low": self.low, "high": self.high,
                "confidence": round(self.confidence, 4)}


def order_statistic_coverage(n: int, k: int) -> float:
    """P(X(k) <= median <= X(n+1-k)) for n values of a continuous distribution: the
    number of values below the median is Binomial(n, 1/2)."""
    if n == 0 or not 1 <= k <= (n + 1) // 2:
        return 0.0
    return float(1.0 - 2.0 * sps().binom.cdf(k - 1, n, 0.5))


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """The median and the narrowest symmetric order-statistic interval that reaches
    ``confidence``; the range (k = 1) when none does (see the module docstring)."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        return Estimate(0, None, None, None, 0.0)
    median = float(np.median(xs))
    # the largest k whose interval still covers: binom.ppf gives the lower tail's quantile
    k = int(sps().binom.ppf((1.0 - confidence) / 2.0, n, 0.5))
    while k >= 1 and order_statistic_coverage(n, k) < confidence:
        k -= 1
    k = max(k, 1)
    return Estimate(n, median, xs[k - 1], xs[n - k], order_statistic_coverage(n, k))


@dataclass(frozen=True)
class RateTest:
    """``successes`` of ``n`` runs against H0: rate <= ``p0`` (one-sided, exact)."""

    successes: int
    n: int
    p0: float
    pvalue: float
    lower_bound: float      # the rate is at least this, at CONFIDENCE (one-sided exact)

    @property
    def supported(self) -> bool:
        return self.n > 0 and self.pvalue < ALPHA

    @property
    def best_pvalue(self) -> float:
        """The smallest p-value ``n`` runs can give (all succeed): what N can support."""
        return p0_floor(self.n, self.p0)

    def to_json(self) -> dict[str, object]:
        return {"test": "exact one-sided binomial", "successes": self.successes, "n": self.n,
                "h0": f"rate <= {self.p0:g}", "pvalue": self.pvalue,
                "rate_lower_bound": round(self.lower_bound, 4), "confidence": CONFIDENCE,
                "best_possible_pvalue": self.best_pvalue}


def p0_floor(n: int, p0: float) -> float:
    """The p-value of n successes in n runs against H0: rate <= p0."""
    return float(sps().binom.sf(n - 1, n, p0)) if n > 0 else 1.0


def runs_to_support(p0: float, alpha: float = ALPHA) -> int:
    """The fewest runs that can support "rate > ``p0``" at ``alpha``: the smallest n whose
    best p-value (all n succeed, :func:`p0_floor`) is below it. p0 = 1/2: 5 (2^-5 = 0.031;
    4 of 4 give 0.0625)."""
    if not 0 < p0 < 1:
        raise ValueError(f"runs_to_support: p0 = {p0} (need 0 < p0 < 1)")
    n = 1
    while p0_floor(n, p0) >= alpha:
        n += 1
    return n


def rate_test(successes: int, n: int, p0: float = 0.5) -> RateTest:
    """Exact one-sided binomial test that the rate of success exceeds ``p0``."""
    if n == 0:
        return RateTest(0, 0, p0, 1.0, 0.0)
    r = sps().binomtest(successes, n, p0, alternative="greater")
    low = r.proportion_ci(confidence_level=CONFIDENCE, method="exact").low
    return RateTest(successes, n, p0, float(r.pvalue), float(low))


@dataclass(frozen=True)
class LessTest:
    """H1: values of ``a`` tend to be smaller than values of ``b`` (one-sided U test)."""

    a: Estimate
    b: Estimate
    u: Optional[float]
    pvalue: float

    @property
    def supported(self) -> bool:
        return self.pvalue < ALPHA

    def to_json(self) -> dict[str, object]:
        return {"test": "one-sided Mann-Whitney U (permutation p-value)", "u": self.u,
                "pvalue": self.pvalue, "a": self.a.to_json(), "b": self.b.to_json()}


def less_test(a: Sequence[float], b: Sequence[float]) -> LessTest:
    """One-sided Mann-Whitney U test of ``a`` < ``b``; p = 1 when a side is empty."""
    ea, eb = median_ci(a), median_ci(b)
    if not a or not b:
        return LessTest(ea, eb, None, 1.0)
    if len(set(a) | set(b)) == 1:        # every value equal: no evidence either way
        return LessTest(ea, eb, len(a) * len(b) / 2.0, 1.0)
    u, p = u_less_pvalue(a, b)
    return LessTest(ea, eb, u, p)


def u_less_pvalue(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``a``'s Mann-Whitney U and P(U <= it) over every split of the pooled values' ranks
    into ``len(a)`` and ``len(b)`` (the permutation null), ties at their midranks.

    U = R - n(n+1)/2 with R ``a``'s rank sum, so the count is of the subsets of ``n``
    ranks whose sum is at most R: a subset-sum table over the doubled midranks (whole
    numbers), one vectorised step per value."""
    n = len(a)
    ranks2 = np.rint(2 * sps().rankdata([*a, *b])).astype(np.int64)
    r2 = int(ranks2[:n].sum())
    top = int(ranks2.sum())
    ways = np.zeros((n + 1, top + 1))       # ways[k, s]: subsets of k ranks summing to s
    ways[0, 0] = 1.0
    for r in ranks2:
        ways[1:, r:] += ways[:-1, :top + 1 - r].copy()
    u = r2 / 2 - n * (n + 1) / 2
    return u, float(ways[n, :r2 + 1].sum() / math.comb(len(ranks2), n))


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values`` (not empty): a value
    that occurred, so a p99 of wake-up delays is a delay some wake-up had."""
    if not values or not 0 < q <= 1:
        raise ValueError(f"quantile: {len(values)} values, q={q} (need values and 0 < q <= 1)")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def format_pvalue(p: float) -> str:
    """A p-value as people write it: two significant digits, ``< 0.0001`` below that."""
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"
