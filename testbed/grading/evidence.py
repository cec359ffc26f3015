"""What a student's own repeated runs support, with the testbed's statistics.

A lab asks for its repeats up front (``testbed compare --repeat N``, ``testbed sweep
--repeat N``) and states its conclusions as hypotheses; the student answers
``supported`` or ``not supported`` and the grader accepts the answer that the
student's runs support at :data:`testbed.stats.CONFIDENCE`. No grader asks for another
run when the effect did not show: a correct reading of runs that did not show it is a
correct answer (asking again until it shows would select the result).

The figures are computed by :mod:`testbed.results` (``group_stats``, the function that
writes the batch's ``stats.json``) and tested by :mod:`testbed.stats`: a verdict's rate
with the exact one-sided binomial test (H0: rate <= 1/2), "smaller than" with the
one-sided Mann-Whitney U test. Only runs that reached a verdict count, as in stats.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .. import results, stats
from .checks import same
from .errors import CheckFailed
from .readers import Answers, BatchFolder, RunFolder

SUPPORTED, NOT_SUPPORTED = "supported", "not supported"
CONCLUSIONS = (SUPPORTED, NOT_SUPPORTED)


def word(supported: bool) -> str:
    return SUPPORTED if supported else NOT_SUPPORTED


def verdict_test(runs: Sequence[RunFolder], verdict: str) -> stats.RateTest:
    """Exact one-sided binomial test that ``verdict`` is the usual outcome of ``runs``
    (H0: its rate <= 1/2), over the runs that reached a verdict."""
    done = [r for r in runs if r.finished]
    return stats.rate_test(sum(r.verdict == verdict for r in done), len(done))


def check_verdict_conclusion(answers: Answers, key: str, runs: Sequence[RunFolder],
                             verdict: str, whose: str = "") -> None:
    """The student's conclusion ``key`` ("``verdict`` is these runs' usual outcome") is
    what :func:`verdict_test` gives for their ``runs`` at 95 %; the failure names the
    key and the test, never the counts."""
    test = verdict_test(runs, verdict)
    counts = f"your {whose} counts" if whose else "your counts"
    same(answers.conclusion(key), word(test.supported),
         f"{key}: not what the exact one-sided binomial test gives for {counts} at 95 % "
         f"(supported when p < 0.05)")


def less_test(a: Sequence[float], b: Sequence[float]) -> stats.LessTest:
    """One-sided Mann-Whitney U test that ``a`` tends to be smaller than ``b``."""
    return stats.less_test(list(a), list(b))


def group_figures(batch: BatchFolder) -> dict[str, results.GroupStats]:
    """Per group (policy, or grid point ``key=value``), the statistics stats.json holds."""
    runs = batch.batch.runs()
    return {g.label: g for g in results.batch_groups(batch.batch, runs)}


def figure(batch: BatchFolder, group: str, key: str) -> stats.Estimate:
    """One figure's median and interval for one group, as in the batch's stats.json."""
    got = group_figures(batch)
    if group not in got:
        raise CheckFailed(f"{batch.name} has no runs of {group}: run the step as the handout "
                          f"gives it")
    return got[group].estimates[key]


def median(values: Sequence[float]) -> Optional[float]:
    """The median of ``values`` (None when there are none), as stats.json computes it."""
    return stats.median_ci(values).median
