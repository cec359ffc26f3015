"""The checks a grader makes: a condition, or a stated figure against a measured one.

Every failure names the answer's key, what it was compared with and the tolerance; the
figures themselves go in :attr:`CheckFailed.values`, which only an instructor sees
(``testbed lab check --show-values``). A check over several entries (one per policy or
per threshold) gives partial credit with :class:`Tally`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import CheckFailed
from .readers import Answers, Key, RunFolder

# -- checks ------------------------------------------------------------------------------

def expect(condition: bool, sentence: str, values: str = "") -> None:
    """Fail the check with ``sentence`` (``values`` for instructors) unless ``condition``."""
    if not condition:
        raise CheckFailed(sentence, values)


def expect_finished(run: RunFolder, what: str) -> None:
    """Fail unless ``run`` reached a verdict; ``what`` says which step makes it.

    A run that did not finish (interrupted, a testbed error) has no verdict to grade:
    this is the testbed failing, not the result varying.
    """
    why = str(run.summary.get("status"))
    if run.summary.get("detail"):
        why += f": {run.summary['detail']}"
    expect(run.finished, f"{run.name} did not finish ({why}), so it has no verdict; "
           f"{what} must run to its end (ask your TA if it keeps failing)")


def within(stated: float, measured: float, rel: float = 0.0, abs_: float = 0.0) -> bool:
    """Is ``stated`` within ``rel`` (fraction) or ``abs_`` of ``measured``?"""
    return abs(stated - measured) <= max(abs_, rel * abs(measured))


def tolerance_text(rel: float = 0.0, abs_: float = 0.0, unit: str = "") -> str:
    """``10 % or 5 pages``; ``exactly`` when there is no tolerance."""
    tol = []
    if rel:
        tol.append(f"{rel:.0%}".replace("%", " %"))
    if abs_:
        tol.append(f"{abs_:g}{unit}")
    return "within " + " or ".join(tol) if tol else "exactly"


def agrees(stated: float, measured: float, what: str, where: str,
           rel: float = 0.0, abs_: float = 0.0, unit: str = "") -> None:
    """A figure the student stated against the one in their own run folder."""
    if within(stated, measured, rel, abs_):
        return
    raise CheckFailed(f"{what}: your answer does not agree with {where} "
                      f"({tolerance_text(rel, abs_, unit)}); read it again from there",
                      f"you wrote {_fmt(stated)}{unit}, measured {_fmt(measured)}{unit}")


def same(said: object, right: object, sentence: str) -> None:
    """A word or letter the student chose against the one their runs support."""
    expect(said == right, sentence, f"you wrote {said}, the runs say {right}")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) and x != int(x) else f"{x:g}"


class Tally:
    """The entries of one check (one per policy, threshold, bulk-host count): each
    failure is kept, and :meth:`close` fails the check with the share of entries right
    as partial credit."""

    def __init__(self, key: str):
        self.key = key
        self.total = 0
        self.failures: list[CheckFailed] = []

    def entry(self, check: Callable[[], None]) -> None:
        """Run one entry's check, keeping its failure."""
        self.total += 1
        try:
            check()
        except CheckFailed as exc:
            self.failures.append(exc)

    def close(self) -> None:
        if not self.failures:
            return
        first = self.failures[0]
        right = self.total - len(self.failures)
        more = (f" ({len(self.failures)} of {self.total} entries of {self.key} are wrong)"
                if len(self.failures) > 1 else "")
        raise CheckFailed(str(first) + more, "; ".join(f.values for f in self.failures
                                                        if f.values),
                          credit=right / self.total if self.total else 0.0)


def keyed_choice(answers: Answers, key: Key, name: str, options: Sequence[str],
                 hint: str) -> None:
    """A multiple-choice answer against the instructor's key; ``hint`` says where to look
    (never which option). Without the key (a student copy) the check is not graded here."""
    said = answers.choice(name, options)
    right = key.answer(name)
    expect(said == right, f"{name}: {said} is not the statement your runs support; {hint}",
           f"you wrote {said}, the key says {right}; {key.why(name, said)}")
